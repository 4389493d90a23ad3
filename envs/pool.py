"""A batch of N dm_control envs from EnvPool, with our own action repeat and frame stacking.

Why not EnvPool's ``frame_skip``: it returns only the last sub-step's reward (measured), and it
renders once per step. We step EnvPool ``action_repeat`` times per agent step and sum rewards.
In the paper setup EnvPool's ``frame_stack`` equals the repeat, so after the last sub-step its
observation holds the renders after sub-steps 1..R. For the DrQ-v2 setup we stack the last
``frame_stack`` agent-step frames here.

Auto-reset: after an episode ends, the next agent step of that env is a reset, and only that:
the env takes one EnvPool step (EnvPool resets it and ignores the action), its observation is
the new episode's first, ``first`` is set and reward is 0. The transition into a ``first``
observation is not real and must never be stored as one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from envs.egl import import_envpool, require_egl, software_rendering
from envs.errors import ConfigError
from envs.render_profiles import base_path
from envs.settings import EnvSettings


@dataclass(frozen=True)
class EnvSpec:
    """Shapes and bounds a consumer (replay, agent) needs, fixed when the pool is built."""

    obs_shape: tuple[int, ...]  # (C, H, W) uint8 for pixels, (D,) float32 for state
    obs_dtype: np.dtype
    frame_shape: tuple[int, ...]  # the part of obs that is new at each agent step
    frame_stack: int  # obs = the last frame_stack frames, oldest first, along axis 0
    action_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    num_envs: int
    action_repeat: int
    episode_agent_steps: int

    @property
    def pixels(self) -> bool:
        return len(self.obs_shape) == 3

    def random_actions(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform actions within the bounds for every env: warm-up, previews, benchmarks."""
        return rng.uniform(self.action_low, self.action_high, size=(self.num_envs, self.action_dim)).astype(np.float32)


@dataclass
class EnvStep:
    """One agent step of every env. ``first`` marks a new episode's first observation."""

    obs: np.ndarray
    reward: np.ndarray  # float32, summed over the repeat; 0 where first
    terminated: np.ndarray  # bool: true termination (stop bootstrapping)
    truncated: np.ndarray  # bool: time limit (bootstrap through it)
    first: np.ndarray  # bool: obs starts an episode; the step into it is not a transition

    @property
    def last(self) -> np.ndarray:
        return self.terminated | self.truncated


class VecEnv:
    """N envs stepping together. EnvPool releases the GIL while it steps, so a caller may step
    them on a thread of its own while it updates on the device (the trainer's collector)."""

    notice: str | None = None  # a line for the trainer to print at start (env=gym: its render cost)

    def __init__(self, settings: EnvSettings) -> None:
        if settings.pixels:
            require_egl()
        envpool = import_envpool()
        if settings.task_id not in envpool.list_all_envs():
            raise ConfigError(f"env.task_id={settings.task_id!r} is not an EnvPool task")
        self.settings = settings
        standard = envpool.make_spec(settings.task_id).config.base_path
        software = settings.pixels and software_rendering()
        threads = settings.envpool_threads(software)
        if software and threads != 1:
            warnings.warn(
                f"num_threads={settings.num_threads} renders pixels on several threads, but EGL is a software "
                "rasterizer (Mesa llvmpipe), which can crash the process when contexts render concurrently; "
                "num_threads=auto uses 1", RuntimeWarning, stacklevel=3)
        kwargs: dict = dict(
            num_envs=settings.num_envs,
            batch_size=settings.num_envs,
            num_threads=threads,
            seed=settings.seed,
            max_episode_steps=settings.max_episode_steps,
            frame_skip=1,
        )
        if settings.pixels:
            kwargs.update(
                from_pixels=True,
                render_width=settings.image_size,
                render_height=settings.image_size,
                render_camera_id=settings.camera_id,
                frame_stack=settings.envpool_frame_stack,
                base_path=base_path(settings.render, standard),
            )
        self._pool = envpool.make_gymnasium(settings.task_id, **kwargs)
        n = settings.num_envs
        act = self._pool.action_space
        self._obs_keys = None if settings.pixels else list(self._pool.observation_space.spaces)
        if settings.pixels:
            frame_shape = tuple(self._pool.observation_space.shape)
            obs_shape = (frame_shape[0] * settings.frame_stack, *frame_shape[1:])
            obs_dtype = np.dtype(np.uint8)
        else:
            dim = sum(int(np.prod(s.shape)) for s in self._pool.observation_space.spaces.values())
            frame_shape = obs_shape = (dim,)
            obs_dtype = np.dtype(np.float32)
        self.spec = EnvSpec(
            obs_shape=obs_shape,
            obs_dtype=obs_dtype,
            frame_shape=frame_shape,
            frame_stack=settings.frame_stack,
            action_dim=int(act.shape[0]),
            action_low=np.asarray(act.low, dtype=np.float32),
            action_high=np.asarray(act.high, dtype=np.float32),
            num_envs=n,
            action_repeat=settings.action_repeat,
            episode_agent_steps=settings.episode_agent_steps,
        )
        self._ids = np.arange(n, dtype=np.int32)
        self._needs_reset = np.zeros(n, dtype=bool)
        self._obs = np.zeros((n, *obs_shape), dtype=obs_dtype)

    # ------------------------------------------------------------------ observations
    def _frames(self, raw: object) -> np.ndarray:
        """EnvPool observation → our per-step frame (uint8 CHW, or flat float32 state)."""
        if self._obs_keys is None:
            return np.asarray(raw)
        parts = [np.asarray(raw[k], dtype=np.float32).reshape(len(raw[k]), -1) for k in self._obs_keys]
        return np.concatenate(parts, axis=1)

    def _write_obs(self, ids: np.ndarray, frames: np.ndarray, first: bool) -> None:
        """Put new frames into the stacked observation of ``ids`` (restarting it at a first)."""
        k = self.spec.frame_stack
        if k == 1:
            self._obs[ids] = frames
        elif first:
            self._obs[ids] = np.tile(frames, (1, k, 1, 1))
        else:
            c = frames.shape[1]
            self._obs[ids, :-c] = self._obs[ids, c:]
            self._obs[ids, -c:] = frames

    # ------------------------------------------------------------------ stepping
    def reset(self) -> EnvStep:
        """Start a new episode in every env."""
        raw, info = self._pool.reset()
        ids = np.asarray(info["env_id"], dtype=np.int32)
        self._write_obs(ids, self._frames(raw), first=True)
        self._needs_reset[:] = False
        n = self.spec.num_envs
        return EnvStep(
            obs=self._obs.copy(),
            reward=np.zeros(n, np.float32),
            terminated=np.zeros(n, bool),
            truncated=np.zeros(n, bool),
            first=np.ones(n, bool),
        )

    def check_action(self, action: np.ndarray) -> np.ndarray:
        """Validate an action batch; returns it as float64 clipped to the bounds."""
        action = np.asarray(action)
        expected = (self.spec.num_envs, self.spec.action_dim)
        if action.shape != expected:
            raise ValueError(f"action batch has shape {action.shape}; expected {expected} (num_envs, action_dim)")
        if not np.isfinite(action).all():
            bad = np.argwhere(~np.isfinite(action))[0]
            raise ValueError(f"action batch holds a non-finite value at env {bad[0]}, dim {bad[1]}: {action[tuple(bad)]}")
        return np.clip(action, self.spec.action_low, self.spec.action_high).astype(np.float64)

    def step(self, action: np.ndarray) -> EnvStep:
        """Advance every env one agent step (``action_repeat`` EnvPool steps), in the calling
        thread: callers that overlap stepping with other work (the trainer's collector thread)
        already run it off their main thread, and a hop to the worker would only add a handoff."""
        return self._step(self.check_action(action))

    def _step(self, action: np.ndarray) -> EnvStep:
        n = self.spec.num_envs
        reward = np.zeros(n, np.float32)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        first = self._needs_reset.copy()
        if first.any():
            ids = self._ids[first]
            raw, _, _, _, info = self._pool.step(np.zeros((len(ids), self.spec.action_dim)), ids)
            got = np.asarray(info["env_id"], dtype=np.int32)
            if np.any(np.asarray(info["elapsed_step"]) != 0):
                raise RuntimeError("EnvPool did not auto-reset an env whose episode had ended")
            self._write_obs(got, self._frames(raw), first=True)
        live = self._ids[~first]
        last_raw = None
        for _ in range(self.spec.action_repeat):
            if len(live) == 0:
                break
            raw, r, te, tr, info = self._pool.step(action[live], live)
            got = np.asarray(info["env_id"], dtype=np.int32)
            reward[got] += r
            terminated[got] |= te
            truncated[got] |= tr
            frames = self._frames(raw)
            ended = te | tr
            if ended.any():  # an episode ended mid-repeat: keep that observation, stop stepping it
                self._write_obs(got[ended], frames[ended], first=False)
            last_raw = (got[~ended], frames[~ended])
            live = got[~ended]
        if last_raw is not None and len(last_raw[0]):
            self._write_obs(last_raw[0], last_raw[1], first=False)
        truncated &= ~terminated
        self._needs_reset = terminated | truncated
        return EnvStep(obs=self._obs.copy(), reward=reward, terminated=terminated, truncated=truncated, first=first)

    # ------------------------------------------------------------------ extras
    def render(self, env_ids: np.ndarray, size: int) -> np.ndarray:
        """Larger RGB frames (N, H, W, 3) from the training camera, for videos and previews."""
        # EnvPool's public render() is fixed to the size given at construction; its binding
        # takes any size, which the video needs.
        ids = np.asarray(env_ids, dtype=np.int32)
        return np.asarray(self._pool._render(ids, size, size, self.settings.camera_id))

    def close(self) -> None:
        self._close_backend()

    def _close_backend(self) -> None:
        """Close what steps the envs (here EnvPool's pool; a subclass's own vector env)."""
        self._pool.close()

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
