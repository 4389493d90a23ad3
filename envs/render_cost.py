"""What a rendered frame costs with each render profile on this machine, measured in a few steps.

The trainer prints it at start-up when a pixel run renders ``standard`` on a software
rasterizer, where the profile decides most of the run's time (:mod:`envs.render_profiles`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from envs.make import make_env
from envs.render_profiles import PROFILES
from envs.settings import EnvSettings


def render_cost(settings: EnvSettings, steps: int = 2) -> dict[str, float]:
    """Milliseconds per rendered frame with each profile (``standard_ms``, ``fast_ms``): one env,
    ``steps`` agent steps timed after as many untimed ones (the first renders build the GL state)."""
    out = {}
    for profile in PROFILES:
        rng = np.random.default_rng(0)
        with make_env(dataclasses.replace(settings, render=profile, num_envs=1)) as env:
            env.reset()
            for _ in range(steps):
                env.step(env.spec.random_actions(rng))
            start = time.perf_counter()
            for _ in range(steps):
                env.step(env.spec.random_actions(rng))
            elapsed = time.perf_counter() - start
        out[f"{profile}_ms"] = 1000.0 * elapsed / (steps * env.spec.action_repeat)
    return out
