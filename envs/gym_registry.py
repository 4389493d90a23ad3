"""Gymnasium's registry as env=gym reads it before any env is built: the spec of an id, its
episode length and a run-dir-safe name. Apart from the vector env (:mod:`envs.gym_env`), so
that the settings and the config resolvers can ask without importing the env classes."""

from __future__ import annotations

import re
from typing import Any

from envs.errors import ConfigError


def import_gymnasium():  # noqa: ANN201 - the gymnasium module
    import gymnasium

    return gymnasium


def find_spec(env_id: str) -> Any:
    """Gymnasium's spec for ``env_id`` (importing ``module`` of ``module:Id`` first), or one line
    naming the close registered ids."""
    import importlib

    gym = import_gymnasium()
    module, _, name = env_id.rpartition(":")
    try:
        if module:  # as gymnasium.make does for module:Id
            importlib.import_module(module)
        return gym.spec(name)
    except gym.error.Error as exc:
        import difflib

        close = difflib.get_close_matches(name, list(gym.registry), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (register it, or use module:Id to import its module)"
        raise ConfigError(f"env.id={env_id!r} is not a registered Gymnasium env: {str(exc).splitlines()[0]}{hint}") from None
    except ModuleNotFoundError as exc:
        raise ConfigError(f"env.id={env_id!r}: {exc}") from None


def episode_steps(env_id: str, override: int | None) -> int:
    """Env steps per episode: ``env.episode_sim_steps`` when set, else the id's registered
    ``max_episode_steps``; an env with neither could run an evaluation forever, so it is refused."""
    if override is not None:
        return int(override)
    steps = find_spec(env_id).max_episode_steps
    if steps is None:
        raise ConfigError(f"env.id={env_id!r} registers no max_episode_steps; set env.episode_sim_steps=N "
                          "(a time limit of N env steps, whose end truncates)")
    return int(steps)


def slug(env_id: str) -> str:
    """A name for run dirs: ``ALE/Pong-v5`` → ``ALE_Pong-v5``, ``pkg.mod:Point-v0`` → ``Point-v0``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(env_id).split(":")[-1]) or "gym"
