"""Device-resident replay: every rendered frame stored once, stacks rebuilt by index.

Layout (DESIGN §4): time-major per env stream, ``(slots_per_env, num_envs, ...)``. Each call
to :meth:`ReplayBuffer.add` writes one slot per env: only the channels that are new at that
step (``spec.frame_shape``: all 9 in the paper setup, the newest 3 in the DrQ-v2 setup, the
float32 vector for state obs), the action that produced the step, its reward and a flag byte
(first / terminated / truncated). A stacked observation at slot ``t`` is the frames of slots
``t-K+1..t`` (oldest first), never crossing an episode start: slots before the episode's
first one repeat its frame, exactly as the env builds a stack at reset. The next observation
is the stack at ``t+k`` (n-step), rebuilt the same way, so no observation is stored twice.

Timesteps are counted globally (``num_added`` calls to ``add``; every env gets one slot per
call), so logical time ``tau`` lives in slot ``tau % slots`` and the slots still held are
``[max(0, num_added - slots), num_added)``. A transition from ``tau`` is sampleable when its
needed history, its next ``k`` steps and its stop reason are all inside that window.

Sampling is exact-uniform rejection sampling: draw (time, env) uniformly over the held window,
test validity with vectorised index math over a fixed ``frame_stack + nstep`` window of flags,
keep the first ``batch_size`` valid draws (iid draws conditioned on validity are uniform over
the valid set). Cost is O(batch * (frame_stack + nstep)), independent of capacity; one
host sync per round (usually one round) to count the accepted draws.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from envs.errors import ConfigError
from envs.pool import EnvSpec, EnvStep
from pixel_ddpg.batch import Batch
from pixel_ddpg.config import UserError

FIRST, TERMINATED, TRUNCATED = 1, 2, 4
_GIB = 1024**3


# ---------------------------------------------------------------------------- memory planning
def bytes_per_transition(spec: EnvSpec) -> int:
    """Bytes one stored step takes: new frame + float32 action + float32 reward + flag byte."""
    frame_dtype = np.uint8 if spec.pixels else np.float32
    frame = int(np.prod(spec.frame_shape)) * np.dtype(frame_dtype).itemsize
    return frame + 4 * spec.action_dim + 4 + 1


def estimate_bytes(spec: EnvSpec, capacity: int) -> int:
    """Exact bytes the buffer's tensors will take for ``capacity`` (rounded down to whole slots)."""
    slots = int(capacity) // spec.num_envs
    return slots * spec.num_envs * bytes_per_transition(spec)


def free_bytes(device: torch.device | str) -> int:
    """Free memory where the buffer will live: CUDA ``mem_get_info``, else ``MemAvailable``."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def min_slots(spec: EnvSpec, nstep: int) -> int:
    """Fewest slots per env that can ever hold a sampleable transition (history + n steps)."""
    return spec.frame_stack + nstep


def _parse_capacity(requested: int | str) -> int | None:
    """``auto`` → None; a whole number (int, or a string/float Hydra may hand over) → int."""
    bad = ConfigError(f"replay.capacity={requested!r} must be a whole number of transitions or auto")
    if isinstance(requested, bool):
        raise bad
    if isinstance(requested, str):
        if requested.strip() == "auto":
            return None
        try:
            requested = float(requested)
        except ValueError:
            raise bad from None
    if isinstance(requested, float):
        if not requested.is_integer():
            raise bad
        requested = int(requested)
    if not isinstance(requested, int):
        raise bad
    return requested


def plan_capacity(
    requested: int | str,
    spec: EnvSpec,
    device: torch.device | str,
    *,
    max_transitions: int = 1_000_000,
    memory_fraction: float = 0.5,
    nstep: int = 1,
) -> tuple[int, int]:
    """Decide the capacity before anything is allocated; returns ``(capacity, bytes)``.

    ``auto``: min(max_transitions, what fits in ``memory_fraction`` of the free memory). An
    explicit number that does not fit in the free memory is a :class:`UserError` naming the
    override that would. Capacity is rounded down to whole slots (a multiple of num_envs).
    """
    if not 0.0 < float(memory_fraction) <= 1.0:
        raise ConfigError(f"replay.memory_fraction={memory_fraction} must be in (0, 1]")
    device = torch.device(device)
    n = spec.num_envs
    per = bytes_per_transition(spec)
    free = free_bytes(device)
    fit = int(free * float(memory_fraction)) // per // n * n
    wanted = _parse_capacity(requested)
    least = min_slots(spec, nstep) * n
    if wanted is None:
        capacity = min(int(max_transitions) // n * n, fit)
        if capacity < least:
            raise UserError(
                f"replay.capacity=auto: only {free / _GIB:.2f} GiB free on {device}, room for {fit} transitions "
                f"of {per} B; at least {least} are needed (free memory or use a smaller num_envs)"
            )
    else:
        capacity = wanted // n * n
        if capacity < least:
            raise ConfigError(
                f"replay.capacity={wanted} is too small: it needs at least {least} transitions "
                f"({min_slots(spec, nstep)} per env x {n} envs)"
            )
        _check_fits(capacity, spec, device, free, fit)
    return capacity, estimate_bytes(spec, capacity)


def _check_fits(capacity: int, spec: EnvSpec, device: torch.device, free: int, fit: int) -> None:
    need = estimate_bytes(spec, capacity)
    if need > free:
        raise UserError(
            f"replay.capacity={capacity} needs {need / _GIB:.2f} GiB on {device} but only {free / _GIB:.2f} GiB is free; "
            f"use replay.capacity={max(fit, 0)} or replay.capacity=auto"
        )


# ---------------------------------------------------------------------------- the buffer
class ReplayBuffer:
    """Ring buffer of env steps on ``device``; samples n-step transitions as a :class:`Batch`.

    Feed it every :class:`EnvStep` in order: ``add(env.reset(), None)``, then
    ``add(env.step(a), a)``. It never stores or samples the step into a ``first`` observation.
    """

    def __init__(
        self,
        spec: EnvSpec,
        capacity: int,
        device: torch.device | str = "cpu",
        *,
        nstep: int = 1,
        gamma: float = 0.99,
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        if isinstance(nstep, bool) or not isinstance(nstep, int) or nstep < 1:
            raise ConfigError(f"agent.nstep={nstep!r} must be an integer >= 1")
        if not 0.0 <= float(gamma) <= 1.0:
            raise ConfigError(f"agent.gamma={gamma!r} must be in [0, 1]")
        self.nstep = nstep
        self.gamma = float(gamma)
        self.num_envs = n = spec.num_envs
        self.frame_stack = spec.frame_stack
        self.slots = int(capacity) // n
        if self.slots < min_slots(spec, nstep):
            raise ConfigError(
                f"replay.capacity={capacity} is too small: it needs at least {min_slots(spec, nstep) * n} transitions"
            )
        self.capacity = self.slots * n
        free = free_bytes(self.device)
        _check_fits(self.capacity, spec, self.device, free, int(free * 0.5) // bytes_per_transition(spec) // n * n)
        total = estimate_bytes(spec, self.capacity)
        if verbose:
            print(
                f"replay: allocating {total / _GIB:.3f} GiB on {self.device} ({free / _GIB:.1f} GiB free): "
                f"{self.capacity:,} transitions ({self.slots:,} slots x {n} envs) x {bytes_per_transition(spec):,} B",
                flush=True,
            )
        frame_dtype = torch.uint8 if spec.pixels else torch.float32
        # zeros, not empty: on CPU this touches every page now, so memory runs out here or never.
        self.frames = torch.zeros((self.slots, n, *spec.frame_shape), dtype=frame_dtype, device=self.device)
        self.actions = torch.zeros((self.slots, n, spec.action_dim), dtype=torch.float32, device=self.device)
        self.rewards = torch.zeros((self.slots, n), dtype=torch.float32, device=self.device)
        self.flags = torch.zeros((self.slots, n), dtype=torch.uint8, device=self.device)
        self.num_added = 0  # add() calls so far: the next step goes to slot num_added % slots
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self._accept = 0.5  # running acceptance rate of rejection sampling, sizes each round
        self._powers = self.gamma ** torch.arange(nstep, dtype=torch.float64, device=self.device)
        self._powers = self._powers.to(torch.float32)
        self._new_channels = spec.frame_shape[0] if spec.pixels else None

    # ------------------------------------------------------------------ sizes
    def tensors(self) -> dict[str, torch.Tensor]:
        """The storage, by name: everything this buffer allocated on its device."""
        return {"frames": self.frames, "actions": self.actions, "rewards": self.rewards, "flags": self.flags}

    def nbytes(self) -> int:
        """Bytes actually held by the storage tensors (equals :func:`estimate_bytes`)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def __len__(self) -> int:
        """Env steps held now (a step is at most one transition)."""
        return min(self.num_added, self.slots) * self.num_envs

    # ------------------------------------------------------------------ writing
    def add(self, step: EnvStep, action: np.ndarray | torch.Tensor | None) -> None:
        """Store one agent step of every env: ``action`` is what produced it (None after reset)."""
        n, spec = self.num_envs, self.spec
        obs = np.asarray(step.obs)
        if obs.shape != (n, *spec.obs_shape):
            raise ValueError(f"step.obs has shape {obs.shape}; expected {(n, *spec.obs_shape)}")
        first = np.asarray(step.first, dtype=bool)
        if action is None:
            if not first.all():
                raise ValueError("add(step, action=None) is only for a reset, where every env's step is first")
            act = torch.zeros((n, spec.action_dim), dtype=torch.float32)
        else:
            act = torch.as_tensor(action, dtype=torch.float32)
            if tuple(act.shape) != (n, spec.action_dim):
                raise ValueError(f"action has shape {tuple(act.shape)}; expected {(n, spec.action_dim)}")
        frame = obs[:, -self._new_channels :] if spec.pixels else obs
        flags = (
            first.astype(np.uint8) * FIRST
            + np.asarray(step.terminated, dtype=np.uint8) * TERMINATED
            + np.asarray(step.truncated, dtype=np.uint8) * TRUNCATED
        )
        reward = np.where(first, 0.0, np.asarray(step.reward, dtype=np.float32)).astype(np.float32)
        s = self.num_added % self.slots
        self.frames[s].copy_(torch.from_numpy(np.ascontiguousarray(frame)))
        self.actions[s].copy_(act)
        self.rewards[s].copy_(torch.from_numpy(reward))
        self.flags[s].copy_(torch.from_numpy(flags))
        self.num_added += 1

    # ------------------------------------------------------------------ sampling
    def _window(self, tau: torch.Tensor, env: torch.Tensor) -> dict[str, torch.Tensor]:
        """Validity, n-step length k and stack sources for candidate transitions from ``tau``.

        Reads the flags at offsets ``-(K-1)..n`` around ``tau``; offsets outside the held window
        count as unwritten (their slot holds older or newer data).
        """
        K, n, S = self.frame_stack, self.nstep, self.slots
        lo, hi = max(0, self.num_added - S), self.num_added - 1
        offsets = torch.arange(-(K - 1), n + 1, device=self.device)  # window column c = offset + K - 1
        t = tau[:, None] + offsets[None, :]
        written = (t >= lo) & (t <= hi)
        fl = self.flags[t % S, env[:, None]].to(torch.int32) * written
        first = (fl & FIRST) != 0
        last = (fl & (TERMINATED | TRUNCATED)) != 0
        term = (fl & TERMINATED) != 0
        c0 = K - 1  # column of tau
        # n-step chain: step tau+j is summed if written, not a new episode, and tau+j-1 was not last
        cont = written[:, c0 + 1 :] & ~first[:, c0 + 1 :] & ~last[:, c0 : c0 + n]
        inc = torch.cumprod(cont.to(torch.int32), dim=1).bool()
        k = inc.sum(dim=1)
        rows = torch.arange(len(tau), device=self.device)
        ck = c0 + k
        stop_ok = last[rows, ck] | first[rows, torch.clamp(ck + 1, max=c0 + n)] & (k < n)
        valid = (k >= 1) & ((k == n) | stop_ok)
        # history of tau: nearest episode start among tau, tau-1, ..., tau-K+1 (that is still held)
        m = torch.arange(K, device=self.device)
        hist_first = first[:, c0 - m]  # (B, K), column m = offset -m
        first_off = torch.where(hist_first, m, K).amin(dim=1)
        need = torch.clamp(first_off, max=K - 1)
        valid &= tau - need >= lo
        return {"valid": valid, "k": k, "inc": inc, "first": first, "term": term, "first_off": first_off}

    def _stack_index(self, tau: torch.Tensor, env: torch.Tensor, first_off: torch.Tensor) -> torch.Tensor:
        """Flat (slot * N + env) indices (B, K) of the frames of the stack at ``tau``, oldest first."""
        K = self.frame_stack
        m = torch.arange(K - 1, -1, -1, device=self.device)  # oldest first
        src = tau[:, None] - torch.minimum(m[None, :], first_off[:, None])
        return (src % self.slots) * self.num_envs + env[:, None]

    def _gather_obs(self, idx: torch.Tensor) -> torch.Tensor:
        flat = self.frames.view(self.slots * self.num_envs, *self.spec.frame_shape)
        out = flat[idx]  # (B, K, *frame_shape)
        if self.spec.pixels:
            return out.reshape(idx.shape[0], -1, *self.spec.frame_shape[1:])
        return out[:, 0]

    def _draw(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Rejection-sample ``batch_size`` valid (tau, env) pairs, uniform over valid transitions."""
        N = self.num_envs
        lo = max(0, self.num_added - self.slots)
        span = self.num_added - 1 - lo  # candidate tau in [lo, num_added - 2]: tau + 1 must be held
        if span <= 0:
            raise ValueError(f"replay holds no transition yet ({self.num_added} steps added); add more before sampling")
        taus, envs, got, empty_rounds = [], [], 0, 0
        while got < batch_size:
            draws = int(math.ceil((batch_size - got) / self._accept * 1.25)) + 16
            u = torch.randint(0, span * N, (draws,), generator=self.generator, device=self.device)
            tau, env = lo + u // N, u % N
            ok = torch.nonzero(self._window(tau, env)["valid"]).squeeze(1)  # one host sync
            count = int(ok.numel())
            self._accept = min(1.0, max(count / draws, 0.01))
            if count == 0:
                empty_rounds += 1
                if empty_rounds >= 3 and self.num_valid() == 0:
                    raise ValueError(
                        "replay holds no sampleable transition yet: each needs its next "
                        f"{self.nstep} step(s) (or its episode's end) and its frame history stored"
                    )
                continue
            ok = ok[: batch_size - got]
            taus.append(tau[ok])
            envs.append(env[ok])
            got += len(ok)
        tau, env = torch.cat(taus), torch.cat(envs)
        return tau, env, self._window(tau, env)

    def num_valid(self) -> int:
        """Exact count of sampleable transitions (O(capacity): for tests and diagnostics)."""
        lo = max(0, self.num_added - self.slots)
        span = self.num_added - 1 - lo
        if span <= 0:
            return 0
        u = torch.arange(span * self.num_envs, device=self.device)
        return int(self._window(lo + u // self.num_envs, u % self.num_envs)["valid"].sum())

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` transitions drawn uniformly (with replacement) from the valid ones."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        tau, env, w = self._draw(batch_size)
        S, N, K = self.slots, self.num_envs, self.frame_stack
        k, inc = w["k"], w["inc"]
        rows = torch.arange(batch_size, device=self.device)
        j = torch.arange(1, self.nstep + 1, device=self.device)
        step_idx = ((tau[:, None] + j[None, :]) % S) * N + env[:, None]  # slots tau+1..tau+n
        rewards = self.rewards.view(-1)[step_idx] * inc
        reward = (rewards * self._powers).sum(dim=1)
        terminated = w["term"][rows, K - 1 + k]
        discount = torch.where(terminated, 0.0, self._powers[k - 1] * self.gamma)
        action = self.actions.view(S * N, -1)[((tau + 1) % S) * N + env]
        obs = self._gather_obs(self._stack_index(tau, env, w["first_off"]))
        # next stack at tau+k: nearest episode start among tau+k-m (m < K), from the same window
        m = torch.arange(K, device=self.device)
        cols = K - 1 + k[:, None] - m[None, :]  # window columns of offsets k-m, all >= 0
        next_first = torch.gather(w["first"], 1, cols)
        next_off = torch.where(next_first, m, K).amin(dim=1)
        next_obs = self._gather_obs(self._stack_index(tau + k, env, next_off))
        return Batch(obs=obs, action=action, reward=reward, discount=discount.to(torch.float32), next_obs=next_obs)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume sampling identically (storage tensors by reference)."""
        return {
            **self.tensors(),
            "num_added": self.num_added,
            "slots": self.slots,
            "num_envs": self.num_envs,
            "nstep": self.nstep,
            "gamma": self.gamma,
            "accept": self._accept,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore into the already-allocated storage (no new device allocation)."""
        for key in ("slots", "num_envs", "nstep"):
            if int(state[key]) != getattr(self, key):
                raise UserError(
                    f"replay checkpoint has {key}={state[key]} but this buffer has {key}={getattr(self, key)}; "
                    "use the same replay.capacity, num_envs and agent.nstep as the saved run"
                )
        for name, tensor in self.tensors().items():
            src = state[name]
            if tuple(src.shape) != tuple(tensor.shape) or src.dtype != tensor.dtype:
                raise UserError(
                    f"replay checkpoint {name} is {tuple(src.shape)} {src.dtype}; this buffer needs "
                    f"{tuple(tensor.shape)} {tensor.dtype} (a different obs setup?)"
                )
            tensor.copy_(src)
        self.num_added = int(state["num_added"])
        self.gamma = float(state["gamma"])
        self._powers = (self.gamma ** torch.arange(self.nstep, dtype=torch.float64, device=self.device)).to(torch.float32)
        self._accept = float(state["accept"])
        self.generator.set_state(torch.as_tensor(state["generator"]).cpu())  # a map_location may have moved it


def make_replay(cfg: Any, spec: EnvSpec, device: torch.device | str, *, seed: int | None = None) -> ReplayBuffer:
    """The trainer's way in: plan from ``cfg.replay`` (and ``agent.nstep``/``gamma``), then allocate."""
    r, nstep = cfg.replay, int(cfg.agent.nstep)
    capacity, _ = plan_capacity(
        r.capacity,
        spec,
        device,
        max_transitions=int(r.max_transitions),
        memory_fraction=float(r.memory_fraction),
        nstep=nstep,
    )
    return ReplayBuffer(
        spec, capacity, device, nstep=nstep, gamma=float(cfg.agent.gamma), seed=int(cfg.seed if seed is None else seed)
    )
