"""Shared test helpers: tiny, fast env settings (small images, fast render profile)."""

from __future__ import annotations

import dataclasses

import pytest

import envs  # noqa: F401  (loads libEGL before anything imports envpool)
from envs import EnvSettings

PAPER = dict(
    name="cartpole_balance", task_id="CartpoleBalance-v1", camera_id=0, obs_type="pixels",
    image_size=16, action_repeat=3, render_substeps=True, frame_stack=1, render="fast",
    num_envs=2, seed=0, num_threads="auto", episode_sim_steps=15,
)
DRQV2 = dict(PAPER, image_size=16, action_repeat=2, render_substeps=False, frame_stack=3, episode_sim_steps=10)
STATE = dict(PAPER, obs_type="state", image_size=0, action_repeat=1, render_substeps=False, frame_stack=1)


def tiny(base: dict = PAPER, **over: object) -> EnvSettings:
    return EnvSettings(**{**base, **over})


@pytest.fixture(autouse=True)
def private_replay_registry(tmp_path_factory, monkeypatch):
    """Each test plans CPU replays against its own registry: training runs elsewhere on the
    machine (their replays are recorded for side-by-side planning) must not change a test's plan."""
    registry = tmp_path_factory.mktemp("replay-registry")
    monkeypatch.setattr("pixel_ddpg.replay_memory._registry", lambda: registry)


@pytest.fixture
def settings_factory():
    return tiny


def replace(s: EnvSettings, **over: object) -> EnvSettings:
    return dataclasses.replace(s, **over)
