"""`env=dmc env.task=<domain_task>`: every dm_control task of EnvPool by name, without a file in conf/env/."""

from __future__ import annotations

import subprocess
import sys

import pytest

from envs.dmc import dmc_tasks, find_task
from envs.errors import ConfigError
from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg.config import check_group_overrides, compose, conf_dir, group_choices
from tests.conftest import ROOT, rows, TINY


def test_every_preset_equals_its_dmc_task():
    """The ten files in conf/env/ are presets of env=dmc: same EnvPool id, camera, repeat, length."""
    from omegaconf import OmegaConf

    by_id = {t.task_id: t for t in dmc_tasks().values()}
    presets = [p for p in group_choices("env") if p not in ("dmc", "gym")]
    assert len(presets) == 10
    dmc_yaml = OmegaConf.load(conf_dir() / "env" / "dmc.yaml")
    for preset in presets:
        env = OmegaConf.load(conf_dir() / "env" / f"{preset}.yaml")
        dmc = OmegaConf.create({"env": OmegaConf.merge(dmc_yaml, {"task": by_id[env.task_id].name})}).env
        for key in ("task_id", "camera_id", "action_repeat", "episode_sim_steps"):
            assert env[key] == dmc[key], (preset, key)


def test_names_cameras_and_repeats():
    env = compose(["env=dmc", "env.task=quadruped_run"]).env
    assert (env.task_id, env.camera_id, env.action_repeat) == ("QuadrupedRun-v1", 2, 2)
    env = compose(["env=dmc", "env.task=humanoid_cmu_walk"]).env  # any case; dm_control's spelling kept
    assert (env.name, env.task_id, env.camera_id) == ("humanoid_CMU_walk", "HumanoidCMUWalk-v1", 0)
    # A task's own repeat (measured on that task) leaves its domain's others at the benchmark's.
    assert compose(["env=dmc", "env.task=reacher_easy"]).obs.action_repeat == 2
    assert compose(["env=dmc", "env.task=reacher_hard"]).obs.action_repeat == 4
    assert compose(["env=dmc", "env.task=walker_walk"]).env.action_repeat == 4
    assert compose(["env=dmc", "env.task=walker_run"]).env.action_repeat == 2
    assert compose(["env=dmc", "env.task=cartpole_balance"]).env.action_repeat == 8
    assert len(dmc_tasks()) >= 50 and find_task("fish_swim").task_id == "FishSwim-v1"


def test_an_unknown_task_is_refused_in_one_line_with_close_names():
    with pytest.raises(ConfigError, match="did you mean fish_swim"):
        compose(["env=dmc", "env.task=fsh_swim"])
    with pytest.raises(ConfigError, match="env=dmc needs env.task="):
        check_group_overrides(["env=dmc"])
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.train", "env=dmc", "env.task=walker_wlk"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "walker_walk" in lines[0] and "env.task='walker_wlk'" in lines[0], proc.stderr


def test_a_task_without_an_env_file_trains_from_pixels(tmp_path):
    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("env=")]
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.train", *overrides, "env=dmc", "env.task=point_mass_easy",
                           "total_frames=120", f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = ckpt_io.load(run)
    assert ckpt["env_signature"]["task_id"] == "PointMassEasy-v1" and ckpt["env_signature"]["obs_shape"][1] == 16
    assert ckpt["config"]["env"]["name"] == "point_mass_easy"
    assert any(r["critic_loss"] for r in rows(run / "train.csv"))
