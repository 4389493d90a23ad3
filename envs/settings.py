"""Validated env settings, built from the composed Hydra config before anything is created."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from envs.egl import software_rendering
from envs.errors import ConfigError
from envs.render_profiles import PROFILES

OBS_TYPES = ("pixels", "state")
BACKENDS = ("envpool", "gym")  # env=dmc and its presets | env=gym (envs/gym_env.py)


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an integer")
    return value


def check_env_choice(envs_chosen: list[str], tasks: list[str], gym_id: bool) -> None:
    """Refuse, in one line, an ``env=`` choice that cannot be built from the overrides given:
    env=gym without ``env.id``, env=dmc without ``env.task`` or with a task EnvPool lacks."""
    if "gym" in envs_chosen and not gym_id:
        raise ConfigError("env=gym needs env.id=<a Gymnasium id> (module:Id imports module first, which may register it)")
    if "dmc" in envs_chosen:
        if not tasks:
            raise ConfigError("env=dmc needs env.task=<domain_task>, dm_control's name of the task (e.g. env.task=fish_swim)")
        from envs.dmc import find_task

        for task in tasks:
            find_task(task)


def resolve_render(pixels: bool) -> str:
    """``render=auto``: the fast profile where frames come from a software rasterizer (~14x
    faster there: on a CPU the standard look costs ~40 ms a frame, more than learning from it),
    EnvPool's standard assets where a GPU renders. A run records the profile it chose, since a
    policy must be evaluated with the profile it was trained on."""
    return "fast" if pixels and software_rendering() else "standard"


@dataclass(frozen=True)
class EnvSettings:
    """Everything needed to build a batch of envs; checked on construction."""

    name: str
    task_id: str
    camera_id: int
    obs_type: str
    image_size: int
    action_repeat: int
    render_substeps: bool
    frame_stack: int
    render: str
    num_envs: int
    seed: int
    num_threads: int | str = "auto"  # EnvPool worker threads: "auto", or N (0: EnvPool's one per env)
    episode_sim_steps: int = 1000
    backend: str = "envpool"
    gym_kwargs: dict[str, Any] | None = None  # env=gym: keyword arguments of gymnasium.make
    vectorization: str = "sync"  # env=gym: Gymnasium's vector mode, sync | async

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"env.backend={self.backend!r} is not known; choose one of {list(BACKENDS)}")
        if self.obs_type not in OBS_TYPES:
            raise ConfigError(f"obs.type={self.obs_type!r} is not an observation type; choose one of {list(OBS_TYPES)}")
        if self.render not in PROFILES:
            raise ConfigError(f"render={self.render!r} is not a render profile; choose one of {list(PROFILES)}")
        if _int(self.num_envs, "num_envs") < 1:
            raise ConfigError(f"num_envs={self.num_envs} must be at least 1")
        if _int(self.action_repeat, "obs.action_repeat") < 1:
            raise ConfigError(f"obs.action_repeat={self.action_repeat} must be at least 1")
        if _int(self.frame_stack, "obs.frame_stack") < 1:
            raise ConfigError(f"obs.frame_stack={self.frame_stack} must be at least 1")
        if self.num_threads != "auto" and _int(self.num_threads, "num_threads") < 0:
            raise ConfigError(f"num_threads={self.num_threads} must be auto, 0 (one per env) or more")
        _int(self.seed, "seed")
        _int(self.camera_id, "env.camera_id")
        if self.obs_type == "pixels":
            if _int(self.image_size, "obs.image_size") <= 0:
                raise ConfigError(f"obs.image_size={self.image_size} must be a positive number of pixels")
        elif self.frame_stack != 1:
            raise ConfigError(f"obs.frame_stack={self.frame_stack} is only for pixels; obs=state needs 1")
        if self.episode_agent_steps < 1:
            raise ConfigError(
                f"env.episode_sim_steps={self.episode_sim_steps} is shorter than one agent step "
                f"(obs.action_repeat={self.action_repeat})"
            )

    @classmethod
    def from_config(cls, cfg: Any, *, num_envs: int | None = None, seed: int | None = None) -> EnvSettings:
        """Build from a composed config (``env``, ``obs``, ``render``, ``num_envs``, ``seed``)."""
        env, obs = cfg.env, cfg.obs
        render = str(cfg.render)
        if render == "auto":
            render = resolve_render(str(obs.type) == "pixels")
        elif render not in PROFILES:
            raise ConfigError(f"render={render!r} is not a render profile; choose one of {['auto', *PROFILES]}")
        backend = str(env.get("backend", "envpool"))  # configs saved before env=gym: EnvPool
        episode_sim_steps = env.episode_sim_steps
        gym: dict[str, Any] = {}
        if backend == "gym":
            from omegaconf import OmegaConf

            from envs.gym_registry import episode_steps

            if episode_sim_steps is not None:
                _int(episode_sim_steps, "env.episode_sim_steps")
            episode_sim_steps = episode_steps(str(env.task_id), episode_sim_steps)
            kwargs = env.get("kwargs") or {}
            gym = dict(backend=backend, vectorization=str(env.get("vectorization", "sync")),
                       gym_kwargs=OmegaConf.to_container(kwargs, resolve=True) if not isinstance(kwargs, dict) else kwargs)
        return cls(
            name=str(env.name),
            task_id=str(env.task_id),
            camera_id=env.camera_id,
            obs_type=str(obs.type),
            image_size=obs.image_size,
            action_repeat=obs.action_repeat,
            render_substeps=bool(obs.render_substeps),
            frame_stack=obs.frame_stack,
            render=render,
            num_envs=cfg.num_envs if num_envs is None else num_envs,
            seed=cfg.seed if seed is None else seed,
            num_threads=cfg.get("num_threads", "auto"),
            episode_sim_steps=episode_sim_steps,
            **gym,
        )

    @property
    def pixels(self) -> bool:
        return self.obs_type == "pixels"

    def envpool_threads(self, software_rendering: bool, cores: int | None = None) -> int:
        """EnvPool's ``num_threads``: ``auto`` is 1 when pixels come from a software rasterizer,
        whose GL contexts crash when they render concurrently (see :func:`envs.egl.software_rendering`),
        else one per env up to the ``cores`` this process may use (default: its CPU affinity;
        EnvPool's own 0 counts the whole machine, ignoring ``taskset``)."""
        if self.num_threads == "auto":
            if self.pixels and software_rendering:
                return 1
            if cores is None:
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            return max(1, min(self.num_envs, cores))
        return int(self.num_threads)

    @property
    def max_episode_steps(self) -> int:
        """EnvPool steps per episode, a multiple of the repeat so no episode ends mid-repeat."""
        return self.episode_agent_steps * self.action_repeat

    @property
    def episode_agent_steps(self) -> int:
        return self.episode_sim_steps // self.action_repeat

    @property
    def envpool_frame_stack(self) -> int:
        """Renders EnvPool keeps per observation: all sub-steps' (paper) or only the last."""
        return self.action_repeat if (self.pixels and self.render_substeps) else 1
