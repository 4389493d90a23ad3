"""Any Gymnasium env with rendered frames, behind the same interface as the EnvPool batch.

``env=gym env.id=<registered id>`` (``module:Id`` imports ``module`` first, which registers it)
builds N copies through Gymnasium's vector API (``gymnasium.make_vec``) with
``render_mode="rgb_array"``. A wrapper on each copy repeats the action (summing rewards, stopping
at the episode's end), renders once per agent step and resizes the frame to ``obs.image_size``,
so the vector env's observations are already uint8 ``(3, S, S)`` frames; stacking, the step
contract and the threads come from :class:`envs.pool.VecEnv`. Gymnasium auto-resets an ended
env on its next step (``AutoresetMode.NEXT_STEP``): that step is flagged ``first``, with reward
0, as EnvPool's, so it never reaches the replay. ``terminated`` stops the bootstrap,
``truncated`` (the env's ``TimeLimit``) does not.

Rendering goes through Python (MuJoCo's renderer or the env's own drawing, then a resize), one
env at a time: slower than EnvPool's native batch rendering, and the trainer says so at start.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs.errors import ConfigError
from envs.gym_registry import find_spec, import_gymnasium
from envs.pool import EnvSpec, EnvStep, VecEnv
from envs.settings import EnvSettings

VECTORIZATION = ("sync", "async")


def _resize(frame: Any, size: int, env_id: str) -> np.ndarray:
    """An ``rgb_array`` render as uint8 ``(size, size, 3)``; a missing or malformed one is one line."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        got = type(frame).__name__ if not isinstance(frame, np.ndarray) else f"an array of shape {frame.shape}"
        raise ConfigError(f"env.id={env_id!r}: render() with render_mode='rgb_array' returned {got}, "
                          "not an (H, W, 3) RGB frame")
    frame = frame if frame.dtype == np.uint8 else np.clip(frame, 0, 255).astype(np.uint8)
    if frame.shape[:2] == (size, size):
        return np.ascontiguousarray(frame)
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR))


def _wrapper(settings: EnvSettings):  # noqa: ANN202 - a Gymnasium wrapper class, built lazily
    gym = import_gymnasium()

    class AgentStep(gym.Wrapper):
        """One agent step: the action repeated ``action_repeat`` times (rewards summed, stopping
        where the episode ends), then one render resized to the observation's size (pixels) or
        the env's observation flattened to float32 (state)."""

        def __init__(self, env: Any) -> None:
            super().__init__(env)
            self._inner_space = env.observation_space
            if settings.pixels:
                s = settings.image_size
                self.observation_space = gym.spaces.Box(0, 255, (3, s, s), np.uint8)
            else:
                dim = int(gym.spaces.flatdim(env.observation_space))
                self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

        def _obs(self, obs: Any) -> np.ndarray:
            if settings.pixels:
                return _resize(self.env.render(), settings.image_size, settings.task_id).transpose(2, 0, 1)
            return np.asarray(gym.spaces.flatten(self._inner_space, obs), dtype=np.float32)

        def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
            obs, info = self.env.reset(**kwargs)
            return self._obs(obs), info

        def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
            total = 0.0
            for _ in range(settings.action_repeat):
                obs, reward, terminated, truncated, info = self.env.step(action)
                total += float(reward)
                if terminated or truncated:
                    break
            return self._obs(obs), total, bool(terminated), bool(truncated), info

    return AgentStep


class GymVecEnv(VecEnv):
    """N Gymnasium envs as a :class:`~envs.pool.VecEnv`: same spec, steps, flags and renders."""

    def __init__(self, settings: EnvSettings) -> None:  # noqa: D107 - EnvPool's constructor is not called
        gym = import_gymnasium()
        if settings.render_substeps:
            raise ConfigError("obs.render_substeps=true (obs=pixels_paper) renders inside an agent step, which env=gym "
                              "cannot: use obs=pixels (or obs.render_substeps=false)")
        if settings.vectorization not in VECTORIZATION:
            raise ConfigError(f"env.vectorization={settings.vectorization!r} must be one of {list(VECTORIZATION)}")
        find_spec(settings.task_id)
        self.settings = settings
        kwargs = dict(settings.gym_kwargs or {})
        try:
            self._vec = gym.make_vec(
                settings.task_id, num_envs=settings.num_envs, vectorization_mode=settings.vectorization,
                vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP},
                wrappers=[_wrapper(settings)], render_mode="rgb_array",
                max_episode_steps=settings.episode_sim_steps, **kwargs)
        except (gym.error.Error, TypeError, ValueError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"env.id={settings.task_id!r} with env.kwargs={kwargs} could not be built with "
                              f"render_mode='rgb_array': {why}") from None
        act = self._vec.single_action_space
        if not isinstance(act, gym.spaces.Box) or len(act.shape) != 1:
            self._vec.close()
            raise ConfigError(f"env.id={settings.task_id!r} has action space {act}; DDPG needs a 1-D Box "
                              "(continuous actions with bounds)")
        low, high = np.asarray(act.low, np.float32), np.asarray(act.high, np.float32)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            self._vec.close()
            raise ConfigError(f"env.id={settings.task_id!r} has unbounded actions ({act}); DDPG's tanh actor needs "
                              "finite Box bounds: wrap the env in gymnasium.wrappers.ClipAction or RescaleAction")
        self._action_dtype = act.dtype
        frame_shape = tuple(int(d) for d in self._vec.single_observation_space.shape)
        pixels = settings.pixels
        obs_shape = (frame_shape[0] * settings.frame_stack, *frame_shape[1:]) if pixels else frame_shape
        obs_dtype = np.dtype(np.uint8 if pixels else np.float32)
        n = settings.num_envs
        self.spec = EnvSpec(
            obs_shape=obs_shape, obs_dtype=obs_dtype, frame_shape=frame_shape, frame_stack=settings.frame_stack,
            action_dim=int(act.shape[0]), action_low=low, action_high=high, num_envs=n,
            action_repeat=settings.action_repeat,
            episode_agent_steps=math.ceil(settings.episode_sim_steps / settings.action_repeat),
        )
        self._obs_keys = None
        self._ids = np.arange(n, dtype=np.int32)
        self._needs_reset = np.zeros(n, dtype=bool)
        self._obs = np.zeros((n, *obs_shape), dtype=obs_dtype)
        self._seeded = False
        self.notice = (f"env=gym: {settings.task_id} renders in Python (render_mode='rgb_array', one render and a "
                       f"resize to {settings.image_size} px per agent step, {settings.vectorization} vector env), "
                       "slower than EnvPool's native rendering of the dm_control tasks (env=dmc)"
                       if pixels else None)

    def reset(self) -> EnvStep:
        """Start a new episode in every env; the first reset seeds env i with ``seed + i``."""
        raw, _ = self._vec.reset(seed=None if self._seeded else int(self.settings.seed))
        self._seeded = True
        self._write_obs(self._ids, np.asarray(raw), first=True)
        self._needs_reset[:] = False
        n = self.spec.num_envs
        return EnvStep(obs=self._obs.copy(), reward=np.zeros(n, np.float32), terminated=np.zeros(n, bool),
                       truncated=np.zeros(n, bool), first=np.ones(n, bool))

    def _step(self, action: np.ndarray) -> EnvStep:
        first = self._needs_reset.copy()
        raw, reward, terminated, truncated, _ = self._vec.step(action.astype(self._action_dtype))
        raw = np.asarray(raw)
        # NEXT_STEP auto-reset: an env that ended last step was reset now, its action ignored.
        reward = np.where(first, 0.0, np.asarray(reward, np.float64)).astype(np.float32)
        terminated = np.asarray(terminated, bool) & ~first
        truncated = np.asarray(truncated, bool) & ~first & ~terminated
        if first.any():
            self._write_obs(self._ids[first], raw[first], first=True)
        if (~first).any():
            self._write_obs(self._ids[~first], raw[~first], first=False)
        self._needs_reset = terminated | truncated
        return EnvStep(obs=self._obs.copy(), reward=reward, terminated=terminated, truncated=truncated, first=first)

    def render(self, env_ids: np.ndarray, size: int) -> np.ndarray:
        """The envs' own renders (N, size, size, 3), for videos: larger than the agent's view."""
        frames = self._vec.call("render")
        return np.stack([_resize(frames[int(i)], size, self.settings.task_id) for i in np.asarray(env_ids)])

    def _close_backend(self) -> None:
        self._vec.close()
