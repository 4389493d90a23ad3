"""The one way the project builds envs (training, evaluation, benchmark, preview): the backend
the settings name. Above both backends, so neither imports the other."""

from __future__ import annotations

from envs.gym_env import GymVecEnv
from envs.pool import VecEnv
from envs.settings import EnvSettings


def make_env(settings: EnvSettings) -> VecEnv:
    """A batch of ``settings.num_envs`` envs: EnvPool's (env=dmc and its presets) or Gymnasium's (env=gym)."""
    if settings.backend == "gym":
        return GymVecEnv(settings)
    return VecEnv(settings)
