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
the valid set). Cost is O(batch * (frame_stack + nstep)), independent of capacity. The index
math runs in NumPy on a host copy of the flag bytes (1 B per transition; on a CPU device the
same memory): at batch 16 a few dozen tiny torch ops cost more than the data they move, and
on a GPU it avoids a device-to-host sync per sample. Only the gathers of frames, actions and
rewards run on the device, a handful of ops per batch.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from envs.pool import EnvSpec, EnvStep
from pixel_ddpg.batch import Batch
from pixel_ddpg.errors import ConfigError, UserError
from pixel_ddpg.replay_memory import (GIB, bytes_per_transition, check_fits, estimate_bytes, free_bytes, min_slots,
                                     plan_capacity, release, reserve, run_transitions)
from pixel_ddpg.staging import HostStaging

FIRST, TERMINATED, TRUNCATED = 1, 2, 4


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
        staging: bool | None = None,
    ) -> None:
        """``staging``: copy host data in through reusable buffers with non-blocking copies (None:
        on CUDA, where they are pinned; True on a CPU runs the same path for the tests)."""
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
        check_fits(self.capacity, spec, self.device, free, int(free * 0.5) // bytes_per_transition(spec) // n * n)
        total = estimate_bytes(spec, self.capacity)
        if verbose:
            print(
                f"replay: allocating {total / GIB:.3f} GiB on {self.device} ({free / GIB:.1f} GiB free): "
                f"{self.capacity:,} transitions ({self.slots:,} slots x {n} envs) x {bytes_per_transition(spec):,} B",
                flush=True,
            )
        frame_dtype = torch.uint8 if spec.pixels else torch.float32
        # empty, not zeros: sampling reads only slots already written (the flags window), so a
        # 600-frame run does not pay for zeroing, and pages are claimed as the buffer fills.
        self.frames = torch.empty((self.slots, n, *spec.frame_shape), dtype=frame_dtype, device=self.device)
        self.actions = torch.empty((self.slots, n, spec.action_dim), dtype=torch.float32, device=self.device)
        self.rewards = torch.empty((self.slots, n), dtype=torch.float32, device=self.device)
        # The flags live on the host only: the index math reads them there, nothing on the device does.
        self._flags = np.zeros((self.slots, n), dtype=np.uint8)
        self.flags = torch.from_numpy(self._flags)
        use_staging = self.device.type == "cuda" if staging is None else bool(staging)
        self._staging = HostStaging(self.device) if use_staging else None
        if self.device.type == "cpu":
            reserve(total)
            weakref.finalize(self, release, total)
        self.num_added = 0  # add() calls so far: the next step goes to slot num_added % slots
        self.rng = np.random.default_rng(int(seed))
        self._accept = 0.5  # running acceptance rate of rejection sampling, sizes each round
        self._powers = (self.gamma ** np.arange(nstep, dtype=np.float64)).astype(np.float32)
        self._new_channels = spec.frame_shape[0] if spec.pixels else None

    # ------------------------------------------------------------------ sizes
    def tensors(self) -> dict[str, torch.Tensor]:
        """The storage, by name: frames, actions and rewards on the device, the flags on the host."""
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
            act: np.ndarray | torch.Tensor = np.zeros((n, spec.action_dim), dtype=np.float32)
        elif isinstance(action, torch.Tensor):
            act = action.to(torch.float32)  # on the device already (the agent's): not uploaded again
        else:
            act = np.asarray(action, dtype=np.float32)
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
        st = self._staging
        if st is None:
            self.frames[s].copy_(torch.from_numpy(np.ascontiguousarray(frame)))
            self.actions[s].copy_(torch.as_tensor(act))
            self.rewards[s].copy_(torch.from_numpy(reward))
        else:
            st.copy_into("frames", self.frames[s], frame)
            if isinstance(act, torch.Tensor) and act.device == self.device:
                self.actions[s].copy_(act)
            else:
                st.copy_into("actions", self.actions[s], act)
            st.copy_into("rewards", self.rewards[s], reward)
        self._flags[s] = flags
        self.num_added += 1

    # ------------------------------------------------------------------ sampling
    def _window(self, tau: np.ndarray, env: np.ndarray) -> dict[str, np.ndarray]:
        """Validity, n-step length k and stack sources for candidate transitions from ``tau``.

        Reads the flags at offsets ``-(K-1)..n`` around ``tau``; offsets outside the held window
        count as unwritten (their slot holds older or newer data).
        """
        K, n, S = self.frame_stack, self.nstep, self.slots
        lo, hi = max(0, self.num_added - S), self.num_added - 1
        offsets = np.arange(-(K - 1), n + 1)  # window column c = offset + K - 1
        t = tau[:, None] + offsets[None, :]
        written = (t >= lo) & (t <= hi)
        fl = np.where(written, self._flags[t % S, env[:, None]], 0)
        first = (fl & FIRST) != 0
        last = (fl & (TERMINATED | TRUNCATED)) != 0
        term = (fl & TERMINATED) != 0
        c0 = K - 1  # column of tau
        # n-step chain: step tau+j is summed if written, not a new episode, and tau+j-1 was not last
        cont = written[:, c0 + 1 :] & ~first[:, c0 + 1 :] & ~last[:, c0 : c0 + n]
        inc = np.logical_and.accumulate(cont, axis=1)
        k = inc.sum(axis=1)
        rows = np.arange(len(tau))
        ck = c0 + k
        stop_ok = last[rows, ck] | first[rows, np.minimum(ck + 1, c0 + n)] & (k < n)
        valid = (k >= 1) & ((k == n) | stop_ok)
        # history of tau: nearest episode start among tau, tau-1, ..., tau-K+1 (that is still held)
        m = np.arange(K)
        hist_first = first[:, c0 - m]  # (B, K), column m = offset -m
        first_off = np.where(hist_first, m, K).min(axis=1)
        need = np.minimum(first_off, K - 1)
        valid &= tau - need >= lo
        return {"valid": valid, "k": k, "inc": inc, "first": first, "term": term, "first_off": first_off}

    def _stack_index(self, tau: np.ndarray, env: np.ndarray, first_off: np.ndarray) -> np.ndarray:
        """Flat (slot * N + env) indices (B, K) of the frames of the stack at ``tau``, oldest first."""
        K = self.frame_stack
        m = np.arange(K - 1, -1, -1)  # oldest first
        src = tau[:, None] - np.minimum(m[None, :], first_off[:, None])
        return (src % self.slots) * self.num_envs + env[:, None]

    def _draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Rejection-sample ``batch_size`` valid (tau, env) pairs, uniform over valid transitions."""
        N = self.num_envs
        lo = max(0, self.num_added - self.slots)
        span = self.num_added - 1 - lo  # candidate tau in [lo, num_added - 2]: tau + 1 must be held
        if span <= 0:
            raise ValueError(f"replay holds no transition yet ({self.num_added} steps added); add more before sampling")
        taus, envs, got, empty_rounds = [], [], 0, 0
        while got < batch_size:
            draws = int(math.ceil((batch_size - got) / self._accept * 1.25)) + 16
            u = self.rng.integers(0, span * N, draws)
            tau, env = lo + u // N, u % N
            ok = np.flatnonzero(self._window(tau, env)["valid"])
            count = len(ok)
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
        tau, env = np.concatenate(taus), np.concatenate(envs)
        return tau, env, self._window(tau, env)

    def num_valid(self) -> int:
        """Exact count of sampleable transitions (O(capacity): for tests and diagnostics)."""
        lo = max(0, self.num_added - self.slots)
        span = self.num_added - 1 - lo
        if span <= 0:
            return 0
        u = np.arange(span * self.num_envs)
        return int(self._window(lo + u // self.num_envs, u % self.num_envs)["valid"].sum())

    def _indices(self, batch_size: int) -> tuple[np.ndarray, ...]:
        """One batch's draw and index math on the host: flat frame indexes (2B*K: the stacks of
        obs, then of next_obs), reward slots (B, n) and their weights, action slots, discounts."""
        tau, env, w = self._draw(batch_size)
        S, N, K, n = self.slots, self.num_envs, self.frame_stack, self.nstep
        k, rows = w["k"], np.arange(batch_size)
        # slots tau+1..tau+n; past the chain's end (weight 0) read tau+1 again, which is always
        # written: a slot there may be one the buffer has never written (torch.empty garbage,
        # possibly NaN) and NaN * 0 is NaN.
        ahead = np.where(w["inc"], np.arange(1, n + 1)[None, :], 1)
        step_idx = ((tau[:, None] + ahead) % S) * N + env[:, None]
        weights = (w["inc"] * self._powers).astype(np.float32)  # gamma^j for the steps summed, 0 past the end
        terminated = w["term"][rows, K - 1 + k]
        discount = np.where(terminated, 0.0, self._powers[k - 1] * self.gamma).astype(np.float32)
        # next stack at tau+k: nearest episode start among tau+k-m (m < K), from the same window
        m = np.arange(K)
        next_first = np.take_along_axis(w["first"], K - 1 + k[:, None] - m[None, :], axis=1)
        next_off = np.where(next_first, m, K).min(axis=1)
        frames_idx = np.concatenate([self._stack_index(tau, env, w["first_off"]),
                                     self._stack_index(tau + k, env, next_off)])
        return frames_idx.reshape(-1), step_idx, weights, ((tau + 1) % S) * N + env, discount

    def sample(self, batch_size: int) -> Batch:
        """``batch_size`` transitions drawn uniformly (with replacement) from the valid ones."""
        return self.sample_many(batch_size, 1)[0]

    def sample_many(self, batch_size: int, count: int) -> list[Batch]:
        """``count`` batches, each as :meth:`sample` would draw it in turn (the same random stream,
        so the same batches), with their indexes sent to the device in one upload and gathered
        by one ``index_select`` per storage tensor: the batches an iteration's updates learn from."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if count < 1:
            return []
        S, N, n, B = self.slots, self.num_envs, self.nstep, batch_size
        parts = [self._indices(B) for _ in range(count)]
        ints = np.concatenate([np.concatenate([p[0], p[1].reshape(-1), p[3]]) for p in parts]).astype(np.int64)
        floats = np.concatenate([np.concatenate([p[2].reshape(-1), p[4]]) for p in parts]).astype(np.float32)
        n_ints, n_floats = len(ints), len(floats)
        if n_floats % 2:
            floats = np.append(floats, np.float32(0))
        packed = np.concatenate([ints, floats.view(np.int64)])  # one array: one host-to-device copy
        dev_packed = (torch.from_numpy(packed).to(self.device) if self._staging is None
                      else self._staging.upload("indices", packed))
        per_ints = len(parts[0][0]) + B * n + B
        ints_dev = dev_packed[:n_ints].view(count, per_ints)
        floats_dev = dev_packed[n_ints:].view(torch.float32)[:n_floats].view(count, B * n + B)
        frames_idx, step_idx, action_idx = ints_dev.split([len(parts[0][0]), B * n, B], dim=1)
        weights, discount = floats_dev.split([B * n, B], dim=1)
        # index_select copies whole rows; advanced indexing went element by element (8x slower on CPU)
        flat = self.frames.view(S * N, *self.spec.frame_shape)
        frames = torch.index_select(flat, 0, frames_idx.reshape(-1))  # (count * 2B * K, *frame)
        if self.spec.pixels:
            frames = frames.view(count * 2 * B, -1, *self.spec.frame_shape[1:])
        reward = (self.rewards.view(-1)[step_idx.reshape(count * B, n)] * weights.reshape(count * B, n)).sum(dim=1)
        action = torch.index_select(self.actions.view(S * N, -1), 0, action_idx.reshape(-1))
        discount = discount.reshape(-1)
        return [Batch(obs=frames[2 * B * i: 2 * B * i + B], action=action[B * i: B * (i + 1)],
                      reward=reward[B * i: B * (i + 1)], discount=discount[B * i: B * (i + 1)],
                      next_obs=frames[2 * B * i + B: 2 * B * (i + 1)]) for i in range(count)]

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
            "generator": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore into the already-allocated storage (no new device allocation)."""
        if not isinstance(state["generator"], Mapping):
            raise UserError("replay checkpoint was saved by an older pixel_ddpg (a torch sampling generator); "
                            "resume it with the version that wrote it")
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
        self._powers = (self.gamma ** np.arange(self.nstep, dtype=np.float64)).astype(np.float32)
        self._accept = float(state["accept"])
        self._flags[...] = self.flags.cpu().numpy()
        self.rng.bit_generator.state = dict(state["generator"])


@dataclass(frozen=True)
class Sampling:
    """How the learner samples the replay: the minibatch and its n-step returns.

    Read from the agent group, where the presets set them beside the learner they belong to:
    ``agent.batch_size`` on pixels, ``agent.state_batch_size`` on state vectors, ``agent.nstep``
    and its discount ``agent.gamma``. Checked where the buffer uses them (:class:`ReplayBuffer`)."""

    batch_size: int
    nstep: int
    gamma: float

    @classmethod
    def from_config(cls, cfg_agent: Any, pixels: bool) -> Sampling:
        return cls(batch_size=int(cfg_agent.batch_size if pixels else cfg_agent.state_batch_size),
                   nstep=int(cfg_agent.nstep), gamma=float(cfg_agent.gamma))


def make_replay(cfg: Any, spec: EnvSpec, device: torch.device | str, sampling: Sampling | None = None, *,
                seed: int | None = None, capacity: int | None = None) -> ReplayBuffer:
    """The trainer's way in: plan from ``cfg.replay`` (and the n-step window of ``sampling``,
    default: the agent group's, and for ``auto`` the transitions ``total_frames`` will collect),
    then allocate. ``capacity`` (a resumed replay's) overrides the plan."""
    r = cfg.replay
    sampling = Sampling.from_config(cfg.agent, spec.pixels) if sampling is None else sampling
    planned, _ = plan_capacity(
        r.capacity if capacity is None else capacity,
        spec,
        device,
        max_transitions=int(r.max_transitions),
        memory_fraction=float(r.memory_fraction),
        nstep=sampling.nstep,
        run_transitions=run_transitions(int(cfg.total_frames), spec) if "total_frames" in cfg else None,
    )
    return ReplayBuffer(spec, planned, device, nstep=sampling.nstep, gamma=sampling.gamma,
                        seed=int(cfg.seed if seed is None else seed))
