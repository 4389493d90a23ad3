"""The DDPG learner (Lillicrap et al. 2016) with TD3 / DrQ-v2 options, built to run fast on a GPU.

One critic step per :meth:`DDPGAgent.update`, then, every ``actor_delay`` updates, one actor step
and a polyak update of the targets. The losses are computed by two functions that
``torch.compile`` wraps when :class:`~pixel_ddpg.device.Precision` asks for it; backward,
fused/foreach Adam and the fused ``torch._foreach_lerp_`` target update run around them. No
device value is ever read back (no ``.item()``): the update returns detached tensors, and the
only Python decisions are on config values and the integer update counter. All randomness
(augmentation shifts, target smoothing, exploration) comes from one ``torch.Generator`` on the
device seeded by ``seed``, drawn outside the compiled code, so a restored checkpoint repeats
the same next update exactly.

Targets: a full target copy of encoder, actor and critic. The paper keeps target copies of every
layer, convolutions included; with the shared encoder, computing targets with the online
encoder under ``no_grad`` (DrQ-v2's choice) would let the target features move at full speed
each critic step, which defeats τ=0.001. The target encoder costs the same forward pass on
next_obs and only one more copy of the (small) conv weights.

Batch norm (option): online networks run in train mode (batch statistics) inside updates and in
eval mode (running statistics) whenever acting; targets always use running statistics, copied
from the online networks at each target update. The actor loss's critic forward also runs in
train mode, like the paper's, so it moves the critic's running statistics (not its parameters).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pixel_ddpg.batch import Batch
from pixel_ddpg.device import Precision, quiet_cuda_home_warning
from pixel_ddpg.learner import LearnerSettings
from pixel_ddpg.networks import build_networks
from pixel_ddpg.noise import make_noise


# torch.Generator.get_state() sizes: the device kind of checkpoints that do not record it.
GENERATOR_KIND_BY_BYTES = {5056: "cpu", 16: "cuda"}
GENERATOR_RESEED_STRIDE = 1_000_003  # reseed = seed * stride + updates: distinct per (seed, update)
SATURATED = 0.99  # |a| above this share of the bound counts as a saturated action (train.csv: sat_frac)


def random_shift(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ random shift: each sample moved by its own (dy, dx) = shifts - pad, edges replicated.

    Replicate padding + crop is the same as clamping the source index, so it is one ``gather``
    over each image's flattened pixels, with no padded copy; uint8 stays uint8. (Two gathers, rows
    then columns, took 3-5x as long on a CPU.) ``shifts``: int64 (B, 2) in [0, 2*pad].
    """
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device) + shifts[:, :1] - pad).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=x.device) + shifts[:, 1:] - pad).clamp_(0, w - 1)  # (B, W)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w)
    return x.reshape(b, c, h * w).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def _running_stats(module: torch.nn.Module) -> list[torch.Tensor]:
    """Batch norm's running mean and var: the persistent float buffers. Not its counters, and not
    what comes from the config and the env (the actor's bounds, a categorical critic's support),
    which are non-persistent and never change."""
    persistent = {id(t) for t in module.state_dict(keep_vars=True).values()}
    return [b for b in module.buffers() if b.is_floating_point() and id(b) in persistent]


class DDPGAgent:
    """Encoder, actor, critic, their targets, optimizers and exploration noise on one device."""

    def __init__(self, settings: LearnerSettings, spec: Any, precision: Precision, seed: int) -> None:
        """``settings``: what the learner is made of (:meth:`LearnerSettings.from_config`, or
        :func:`make_agent` from the agent config), for ``spec``'s observation."""
        s = self.settings = settings
        self.spec, self.precision, self.device = spec, precision, precision.device
        self.pixels = bool(spec.pixels)
        if s.pixels != self.pixels:
            raise ValueError(f"learner settings for {'pixels' if s.pixels else 'state'} given an env spec of "
                             f"{'pixels' if self.pixels else 'state'}")
        self.batch_size = s.sampling.batch_size  # the synthetic batches of time_compiled_and_eager
        self.tau, self.actor_delay = s.tau, s.actor_delay
        self.preact_penalty, self.preact_knee = s.actor_preact_penalty, s.actor_preact_knee
        self.twin_q = s.twin_q
        self.target_noise, self.target_noise_clip = s.target_policy_noise, s.target_noise_clip
        self.target_noise_schedule, self.actor_noise = s.target_noise_schedule, s.actor_noise
        self.actor_min_q = s.actor_q == "min"
        self.huber_delta = s.huber_delta if s.critic_loss == "huber" else None
        self.hl_sigma = None if s.hlgauss is None else s.hlgauss.sigma
        self.use_target_encoder, self.use_target_actor = s.target_encoder, s.target_actor
        self.augment, self.pad = s.augment, s.augment_pad

        with torch.random.fork_rng(devices=[]):  # same init for a seed, global RNG untouched
            torch.manual_seed(int(seed))
            self.q_range = (None if s.hlgauss is None
                            else s.hlgauss.resolved_range(spec.action_repeat, s.sampling.gamma))
            self.encoder, self.actor, self.critic = build_networks(s, spec.obs_shape, spec.action_low,
                                                                   spec.action_high, self.q_range)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_actor = copy.deepcopy(self.actor)
        self.target_critic = copy.deepcopy(self.critic)
        self._online = (self.encoder, self.actor, self.critic)
        self._targets = (self.target_encoder, self.target_actor, self.target_critic)
        for m in (*self._online, *self._targets):
            m.to(self.device)
        for m in self._targets:
            m.eval().requires_grad_(False)
        self._online_params = [p for m in self._online for p in m.parameters()]
        self._target_params = [p for m in self._targets for p in m.parameters()]
        self._online_stats = [b for m in self._online for b in _running_stats(m)]
        self._target_stats = [b for m in self._targets for b in _running_stats(m)]

        cuda = self.device.type == "cuda"
        fast = {"fused": True} if cuda else {"foreach": True}
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=s.actor_lr, eps=s.adam_eps, **fast)
        self.critic_opt = torch.optim.Adam(self._critic_groups(s), lr=s.critic_lr, eps=s.adam_eps, **fast)
        self.scaler = torch.amp.GradScaler(self.device.type) if precision.needs_scaler else None

        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self.noise = make_noise(s.noise, spec.action_dim, self.device, self.generator)
        self.updates = 0
        self._last_actor_loss = torch.full((), float("nan"), device=self.device)
        self._last_pre_tanh = self._last_saturated = self._last_actor_loss
        self._low = torch.as_tensor(np.asarray(spec.action_low, np.float32), device=self.device)
        self._high = torch.as_tensor(np.asarray(spec.action_high, np.float32), device=self.device)

        # CUDA graphs (compile's reduce-overhead mode) replay each update's ~100 kernel launches as one;
        # they overwrite a graph's outputs on its next replay, so outputs kept past an update are cloned.
        self._graphs = bool(precision.cuda_graphs)
        if precision.compile:
            if self.device.type == "cpu":
                quiet_cuda_home_warning()
            mode = {"mode": "reduce-overhead"} if self._graphs else {}
            self._critic_loss_fn = torch.compile(self._critic_loss, dynamic=False, **mode)
            self._actor_loss_fn = torch.compile(self._actor_loss, dynamic=False, **mode)
            self._policy_fn = torch.compile(self._policy, dynamic=False)
            self._target_policy_fn = torch.compile(self._target_policy, dynamic=False)
        else:
            self._critic_loss_fn, self._actor_loss_fn, self._policy_fn = (
                self._critic_loss, self._actor_loss, self._policy)
            self._target_policy_fn = self._target_policy

    # ------------------------------------------------------------------ compiled or eager
    def time_compiled_and_eager(self, rounds: int = 4, pair: int = 2,
                                clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
        """Seconds per update, compiled and eager, on a synthetic batch of this learner's shapes;
        the agent is left exactly as it was (weights, optimizers, statistics, generator, counter).

        On a CPU compiling is not always faster: the paper update ran 1.2-1.8x faster compiled on an
        AMX Xeon and an AVX2-only machine, and a batch-128 twin-Q update 0.92x on an AVX2 EPYC
        (docs/benchmarks.md), so ``compile=auto`` times both on the machine it runs on. Rounds
        alternate the two (each times ``pair`` updates, an actor step included when
        ``actor_delay`` is 2) and the fastest round of each counts: another process taking the
        core for a moment slows a round, never speeds one up.
        """
        compiled = (self._critic_loss_fn, self._actor_loss_fn, self._policy_fn)
        eager = (self._critic_loss, self._actor_loss, self._policy)
        compiled_s, eager_s = self._time_paths([compiled, eager], rounds, pair, clock)
        return compiled_s, eager_s

    def time_update(self, rounds: int = 4, pair: int = 2,
                    clock: Callable[[], float] = time.perf_counter) -> float:
        """Seconds per update on the path in use (compiled or eager), timed as
        :meth:`time_compiled_and_eager` times each, and leaving the agent as it was: what
        ``frames_per_update=auto`` sizes the run's compute by when compile=auto did not time it."""
        current = (self._critic_loss_fn, self._actor_loss_fn, self._policy_fn)
        return self._time_paths([current], rounds, pair, clock)[0]

    def _time_paths(self, paths: list[tuple[Callable, Callable, Callable]], rounds: int, pair: int,
                    clock: Callable[[], float]) -> list[float]:
        """The fastest round's seconds per update of each path, then the agent restored, the first
        path in use again."""
        saved = copy.deepcopy(self.state_dict())
        last = (self._last_actor_loss, self._last_pre_tanh, self._last_saturated)
        n, g = self.batch_size, torch.Generator(device=self.device).manual_seed(0)
        if self.pixels:
            obs = torch.randint(0, 256, (2, n, *self.spec.obs_shape), device=self.device, dtype=torch.uint8, generator=g)
        else:
            obs = torch.randn(2, n, *self.spec.obs_shape, device=self.device, generator=g)
        action = torch.rand(n, self.spec.action_dim, device=self.device, generator=g) * 2 - 1
        batch = Batch(obs[0], action, torch.rand(n, device=self.device, generator=g),
                      torch.full((n,), 0.97, device=self.device), obs[1])
        best = [float("inf")] * len(paths)
        try:
            for fns in paths:  # warm-up: compiles, and allocates what each path keeps
                self._critic_loss_fn, self._actor_loss_fn, self._policy_fn = fns
                for _ in range(pair):
                    self.update(batch)
            for _ in range(rounds):
                for i, fns in enumerate(paths):
                    self._critic_loss_fn, self._actor_loss_fn, self._policy_fn = fns
                    self._sync()
                    start = clock()
                    for _ in range(pair):
                        self.update(batch)
                    self._sync()
                    best[i] = min(best[i], (clock() - start) / pair)
        finally:
            self._critic_loss_fn, self._actor_loss_fn, self._policy_fn = paths[0]
            self.load_state_dict(saved)
            self._last_actor_loss, self._last_pre_tanh, self._last_saturated = last
        return best

    def use_eager(self) -> None:
        """Run updates and acting without torch.compile from now on."""
        self.precision = dataclasses.replace(self.precision, compile=False, timed=False)
        self._critic_loss_fn, self._actor_loss_fn, self._policy_fn = (
            self._critic_loss, self._actor_loss, self._policy)
        self._target_policy_fn = self._target_policy

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.precision.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        """A graph output that outlives this update: cloned under CUDA graphs, else as it is."""
        return t.clone() if self._graphs else t

    def _critic_groups(self, s: LearnerSettings) -> list[dict[str, Any]]:
        """The critic optimizer's parameter groups: the encoder trains with the critic's loss, at its
        own rate when ``encoder_lr`` is set. Groups are split only where a setting differs, so the
        optimizer state of checkpoints saved before the split still loads."""
        own_rate = s.encoder_lr is not None and s.encoder_lr != s.critic_lr
        parts: list[tuple[list[torch.nn.Parameter], float]] = (
            [(list(self.encoder.parameters()), float(s.encoder_lr)), (list(self.critic.parameters()), s.critic_lr)]
            if own_rate else [([*self.encoder.parameters(), *self.critic.parameters()], s.critic_lr)])
        decay = s.critic_weight_decay
        groups: list[dict[str, Any]] = []
        for params, lr in parts:
            if decay > 0:
                # The paper: "For Q we included L2 weight decay of 1e-2". Read as Adam's L2 (decay x w
                # added to the gradient: the gradient of 1e-2 * ||w||^2 / 2, TensorFlow's l2_loss) on Q's
                # weight matrices and conv kernels only, as DDPG implementations of the time regularised
                # them: not biases, not batch-norm scales and shifts. Q's convs here are the shared
                # encoder's, which only the critic trains.
                groups.append({"params": [p for p in params if p.ndim > 1], "lr": lr, "weight_decay": decay})
                groups.append({"params": [p for p in params if p.ndim <= 1], "lr": lr, "weight_decay": 0.0})
            else:
                groups.append({"params": params, "lr": lr})
        return groups

    def _set_train(self, mode: bool) -> None:
        for m in self._online:
            if m.training != mode:
                m.train(mode)

    def _backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def _step(self, opt: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)  # fp16 only: GradScaler reads its inf check back to the host

    # ------------------------------------------------------------------ the pieces that compile
    def _features(self, encoder: torch.nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """Conv features under autocast (where the FLOPs are), returned in fp32: the heads, TD
        targets and losses run in fp32, since bf16 has 8 bits of mantissa and a Q of 128-256
        would come out of a bf16 Linear in steps of 1.0, the size of a cheetah's reward per step."""
        with self._autocast():
            return encoder(obs).float()

    def _policy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self._features(self.encoder, obs))

    def _target_policy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.target_actor(self._features(self.target_encoder, obs))

    def policy_networks(self, target: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(encoder, actor) that act: the online ones, or their Polyak averages (the targets), which
        average out what the last few hundred updates did to the policy (evaluation only)."""
        return (self.target_encoder, self.target_actor) if target else (self.encoder, self.actor)

    @torch.no_grad()
    def q1(self, obs: torch.Tensor, action: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Q1(s, a) of the online (or target) encoder and critic, fp32, with running batch-norm
        statistics (as when acting): what evaluation's Q record reads."""
        self._set_train(False)
        obs = obs.to(self.device)
        if not self.pixels and obs.dtype != torch.float32:
            obs = obs.float()
        encoder, critic = (self.target_encoder, self.target_critic) if target else (self.encoder, self.critic)
        return critic(self._features(encoder, obs), action.to(self.device, torch.float32))[0]

    def _critic_loss(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, discount: torch.Tensor,
                     next_obs: torch.Tensor, shifts: torch.Tensor | None, target_eps: torch.Tensor | None
                     ) -> tuple[torch.Tensor, ...]:
        """MSE (Huber, or HL-Gauss cross-entropy) of every Q head to reward + discount * min Q'(s', μ'(s')
        [+ clipped noise]).

        ``target_eps``: the smoothing noise, scaled by its std (fixed, or the exploration schedule's)."""
        if shifts is not None:
            obs = random_shift(obs, shifts[0], self.pad)
            next_obs = random_shift(next_obs, shifts[1], self.pad)
        with torch.no_grad():
            # DrQ-v2 (target_encoder/target_actor false) encodes s' and picks a' with the online nets.
            next_feat = self._features(self.target_encoder if self.use_target_encoder else self.encoder, next_obs)
            next_action = (self.target_actor if self.use_target_actor else self.actor)(next_feat)
            if target_eps is not None:  # already scaled by its std (drawn outside compiled code)
                noise = target_eps.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_action = torch.maximum(torch.minimum(next_action + noise * self.actor.scale, self._high),
                                            self._low)
            next_qs = self.target_critic(next_feat, next_action)
            next_q = next_qs[0]
            for q in next_qs[1:]:
                next_q = torch.minimum(next_q, q)
            target = reward.float() + discount.float() * next_q
        feat = self._features(self.encoder, obs)
        outs = self.critic.outputs(feat, action)
        if self.hl_sigma is not None:
            probs = self._hl_gauss(target)
            loss = sum(-(probs * F.log_softmax(o.float(), dim=1)).sum(1).mean() for o in outs)
            q1 = self.critic.expectation(outs[0])
        else:
            loss = sum(self._td_loss(q, target) for q in outs)
            q1 = outs[0]
        feat_norm = feat.detach().norm(dim=1).mean()
        return loss, q1.detach().mean(), target.mean(), feat.detach(), feat_norm

    def _hl_gauss(self, target: torch.Tensor) -> torch.Tensor:
        """The categorical critic's target, (B, bins): the mass a Gaussian at each TD target (std
        ``sigma`` bin widths) puts in each bin, renormalised to the support (HL-Gauss). A target
        beyond the support is clipped to its end. Its cross-entropy's gradient on each logit is
        bounded, however large the TD error, and a target that jumps across a catch moves mass
        between bins instead of squaring the jump."""
        edges = self.critic.edges
        std = self.hl_sigma * (edges[1] - edges[0]) * (2.0 ** 0.5)
        t = target.clamp(edges[0], edges[-1]).unsqueeze(1)
        cdf = torch.special.erf((edges - t) / std)  # (B, bins + 1), 2*Phi - 1: the factor cancels
        return (cdf[:, 1:] - cdf[:, :-1]) / (cdf[:, -1:] - cdf[:, :1])

    def _td_loss(self, q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Huber bounds each sample's gradient at ``huber_delta``: a sparse task's first large TD
        errors then cannot dominate a batch (DQN's loss); MSE otherwise (DDPG's)."""
        if self.huber_delta is None:
            return F.mse_loss(q, target)
        return F.huber_loss(q, target, delta=self.huber_delta)

    def _actor_loss(self, feat: torch.Tensor, actor_eps: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """−Q1(s, μ(s)) on detached features: the encoder never sees the actor's gradient.

        DrQ-v2's form: with ``actor_eps`` (noise already scaled by the schedule's std) the action
        is a sample μ(s) + clip(ε, ±target_noise_clip), clamped to the bounds with the gradient
        passed straight through (its TruncatedNormal.sample); with ``actor_q: min`` the actor
        climbs min(Q1, Q2). Also returns the mean |pre-tanh| and the share of saturated action
        components (|a| > 0.99 of the bound), the two numbers that show a collapse onto the bounds.
        """
        pre = self.actor.pre_tanh(feat)  # fp32 features (see _features): the heads run in fp32
        action = self.actor.squash(pre)
        if actor_eps is not None:
            noisy = action + actor_eps.clamp(-self.target_noise_clip, self.target_noise_clip) * self.actor.scale
            clamped = torch.maximum(torch.minimum(noisy, self._high), self._low)
            action = noisy + (clamped - noisy).detach()
        qs = self.critic(feat, action)
        q = qs[0]
        if self.actor_min_q:
            for other in qs[1:]:
                q = torch.minimum(q, other)
        loss = -q.mean()
        if self.preact_penalty > 0:
            # Beyond the knee only: small actions feel no pull towards 0, so a tiny dQ/da (a sparse
            # task before its first reward) still moves them; saturation is still pushed back.
            excess = (pre.abs() - self.preact_knee).clamp_min(0.0) if self.preact_knee > 0 else pre
            loss = loss + self.preact_penalty * excess.square().mean()
        saturated = (torch.tanh(pre.detach()).abs() > SATURATED).float().mean()
        return loss, pre.detach().abs().mean(), saturated

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, explore: bool, first: torch.Tensor | None = None,
            frame: int = 0, target: bool = False) -> torch.Tensor:
        """Actions (N, A) float32 on the device, within bounds; running batch-norm statistics.

        ``explore`` adds the noise process (``first`` restarts the OU process of those envs,
        ``frame`` drives the Gaussian std schedule); otherwise μ(s), deterministic. ``target``:
        μ of the target (Polyak-averaged) encoder and actor, for evaluation; it never explores.
        """
        if target and explore:
            raise ValueError("the target networks only evaluate: explore=True acts with the online actor")
        obs = obs.to(self.device, non_blocking=True)
        if not self.pixels and obs.dtype != torch.float32:
            obs = obs.float()
        self._set_train(False)
        action = (self._target_policy_fn if target else self._policy_fn)(obs)
        if explore:
            noise = self.noise.sample(obs.shape[0], first, frame)
            action = torch.maximum(torch.minimum(action + noise * self.actor.scale, self._high), self._low)
        return action

    def update(self, batch: Batch, frame: int = 0) -> dict[str, torch.Tensor]:
        """One critic step; the actor step and target update every ``actor_delay`` calls.

        Returns detached tensors: critic_loss, actor_loss (the last one computed; NaN before the
        first actor step), q (mean Q1 on the batch), target_q (mean TD target), and the collapse
        diagnostics: feat_norm (mean L2 norm of the encoder features), pre_tanh (mean |pre-tanh|
        of the actor) and sat_frac (share of action components beyond 0.99 of the bound), the last
        two from the last actor step.
        """
        self.updates += 1
        update_actor = self.updates % self.actor_delay == 0
        n = batch.action.shape[0]
        g = self.generator
        shifts = (torch.randint(0, 2 * self.pad + 1, (2, n, 2), device=self.device, generator=g)
                  if self.augment else None)
        target_std = self.noise.scale_at(frame) if self.target_noise_schedule else self.target_noise
        target_eps = (torch.randn(n, self.spec.action_dim, device=self.device, generator=g) * target_std
                      if target_std > 0 else None)
        self._set_train(True)
        if self._graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new update: the last one's graph outputs may be reused
        critic_loss, q, target_q, feat, feat_norm = self._critic_loss_fn(
            batch.obs, batch.action, batch.reward, batch.discount, batch.next_obs, shifts, target_eps)
        self.critic_opt.zero_grad(set_to_none=True)
        self._backward(critic_loss)
        self._step(self.critic_opt)
        if update_actor:
            self.critic.requires_grad_(False)  # the actor's loss computes no critic gradient at all
            try:
                actor_eps = (torch.randn(n, self.spec.action_dim, device=self.device, generator=g)
                             * self.noise.scale_at(frame) if self.actor_noise else None)
                actor_loss, pre_tanh, saturated = self._actor_loss_fn(feat, actor_eps)
                self.actor_opt.zero_grad(set_to_none=True)
                self._backward(actor_loss)
            finally:
                self.critic.requires_grad_(True)
            self._step(self.actor_opt)
            self._last_actor_loss = self._keep(actor_loss.detach())
            self._last_pre_tanh, self._last_saturated = self._keep(pre_tanh), self._keep(saturated)
            self.update_targets()
        if self.scaler is not None:
            self.scaler.update()
        return {"critic_loss": self._keep(critic_loss.detach()), "actor_loss": self._last_actor_loss,
                "q": self._keep(q), "target_q": self._keep(target_q), "feat_norm": self._keep(feat_norm),
                "pre_tanh": self._last_pre_tanh,
                "sat_frac": self._last_saturated}

    @torch.no_grad()
    def update_targets(self) -> None:
        """Polyak: target ← target + τ (online − target), one fused op over all parameters."""
        torch._foreach_lerp_(self._target_params, self._online_params, self.tau)
        if self._target_stats:
            torch._foreach_copy_(self._target_stats, self._online_stats)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: networks, targets, optimizers, scaler, noise, RNG."""
        return {
            "encoder": self.encoder.state_dict(), "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "target_encoder": self.target_encoder.state_dict(), "target_actor": self.target_actor.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "noise": self.noise.state_dict(), "updates": self.updates, "generator": self.generator.get_state(),
            "generator_device": self.device.type, "last_actor_loss": self._last_actor_loss.clone(),
        }

    def reseed_generator(self) -> None:
        """Seed the generator from (seed, updates): a saved state that cannot be restored here
        (another device kind) still gives the same draws on every resume of that checkpoint."""
        self.generator.manual_seed((self.seed * GENERATOR_RESEED_STRIDE + self.updates) % 2**63)

    def _restore_generator(self, state: dict[str, Any]) -> str | None:
        """Restore the generator when the checkpoint's came from this device kind, else reseed;
        returns the warning to print in the second case.

        A CPU generator's state is 5,056 bytes and a CUDA one's 16, so ``set_state`` across kinds
        fails. Checkpoints written before ``generator_device`` was recorded are told apart by that
        size."""
        saved = torch.as_tensor(state["generator"]).cpu()  # map_location may have moved it
        kind = state.get("generator_device") or GENERATOR_KIND_BY_BYTES.get(saved.numel(), "unknown")
        if kind == self.device.type and saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved)
            return None
        self.reseed_generator()
        return (f"warning: the checkpoint's random generator was saved on {kind}, this run is on {self.device.type}: "
                f"reseeded from (seed {self.seed}, update {self.updates:,}); augmentation and exploration draws "
                "differ from an uninterrupted run on the original device")

    def load_state_dict(self, state: dict[str, Any], generator: bool = True) -> None:
        """Load everything :meth:`state_dict` saved. ``generator=False`` (evaluation: no draws
        from it are ever made) leaves the generator as seeded; otherwise it is restored, or
        reseeded with one warning line on stderr when it came from another device kind."""
        for name in ("encoder", "actor", "critic", "target_encoder", "target_actor", "target_critic"):
            getattr(self, name).load_state_dict(state[name])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.noise.load_state_dict(state["noise"])
        self.updates = int(state["updates"])
        if generator:
            warning = self._restore_generator(state)
            if warning:
                print(warning, file=sys.stderr, flush=True)
        self._last_actor_loss = torch.as_tensor(state["last_actor_loss"]).to(self.device).clone()

    def config_signature(self) -> dict[str, Any]:
        """What the network shapes depend on, as plain values: a checkpoint must match it (==)."""
        return self.settings.signature(self.spec.obs_shape, self.spec.action_dim, self.q_range)


def make_agent(cfg_agent: Any, spec: Any, precision: Precision, seed: int) -> DDPGAgent:
    """The agent the ``agent`` config describes, for an env spec, on the precision's device."""
    return DDPGAgent(LearnerSettings.from_config(cfg_agent, bool(spec.pixels)), spec, precision, seed)
