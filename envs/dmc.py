"""Every dm_control task EnvPool registers, by dm_control's ``domain_task`` name (``fish_swim``).

The names come from EnvPool's own registry (module ``envpool.mujoco.dmc``: the spec class names
the domain, ``task_name`` the task), so a task EnvPool adds is trainable without a file in
``conf/env/``. ``conf/env/dmc.yaml`` turns a name into the env settings through the ``dmc``
resolver (registered by :mod:`pixel_ddpg.config`); the per-domain camera and action repeat are
data in that file.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from envs.egl import import_envpool
from envs.errors import ConfigError

_DMC_MODULE = "envpool.mujoco.dmc"


@dataclass(frozen=True)
class DmcTask:
    """One dm_control task as EnvPool registers it."""

    name: str  # dm_control's spelling: domain_task (humanoid_CMU_run)
    domain: str
    task_id: str  # EnvPool's id (FishSwim-v1)
    max_episode_steps: int


def _domain(spec_class: str) -> str:
    """``DmcBallInCupEnvSpec`` → ``ball_in_cup``; ``DmcHumanoidCMUEnvSpec`` → ``humanoid_CMU``
    (dm_control keeps the acronym upper case)."""
    core = spec_class.removeprefix("Dmc").removesuffix("EnvSpec")
    words = re.findall(r"[A-Z][a-z0-9]+|[A-Z]+(?![a-z])", core)
    return "_".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words)


@functools.cache
def dmc_tasks() -> dict[str, DmcTask]:
    """All dm_control tasks of the installed EnvPool, keyed by lower-case ``domain_task``."""
    import_envpool()
    from envpool.registration import registry

    tasks = {}
    for task_id, (module, spec_class, kwargs) in registry.specs.items():
        if module != _DMC_MODULE or "task_name" not in kwargs:
            continue
        domain = _domain(spec_class)
        name = f"{domain}_{kwargs['task_name']}"
        tasks[name.lower()] = DmcTask(name, domain, task_id, int(kwargs.get("max_episode_steps", 1000)))
    return tasks


def find_task(name: str) -> DmcTask:
    """The task called ``name`` (any case), or a ConfigError naming the closest names: a typo
    fails in one line before anything is built."""
    tasks = dmc_tasks()
    key = str(name).strip().lower()
    if key in tasks:
        return tasks[key]
    names = sorted(t.name for t in tasks.values())
    close = difflib.get_close_matches(key, [n.lower() for n in names], n=5, cutoff=0.5)
    by_lower = {n.lower(): n for n in names}
    hint = (f"did you mean {', '.join(by_lower[c] for c in close)}?" if close
            else f"the {len(names)} tasks: {', '.join(names)}")
    raise ConfigError(f"env.task={name!r} is not a dm_control task of EnvPool; {hint}")


def resolve(field: str, name: str) -> str | int:
    """The ``${dmc:FIELD,NAME}`` resolver: ``task_id``, ``domain``, ``name`` (canonical spelling)
    or ``max_episode_steps`` of task ``NAME``."""
    task = find_task(name)
    if field not in ("task_id", "domain", "name", "max_episode_steps"):
        raise ConfigError(f"${{dmc:{field},...}}: unknown field; use task_id, domain, name or max_episode_steps")
    return getattr(task, field)
