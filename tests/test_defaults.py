"""The defaults: the headline command trains the project's learner on DrQ's observation at the task's
action repeat (PlaNet's benchmark repeat, but where the learner measured better), and the DDPG paper's
setup is one override away (setup=paper)."""

from __future__ import annotations

from types import SimpleNamespace

import re

import pytest
from omegaconf import OmegaConf

from pixel_ddpg.config import compose
from pixel_ddpg.errors import UserError
from pixel_ddpg.learner import LearnerSettings, NoiseSettings
from pixel_ddpg.trainer import (check_counts, choose_frames_per_update, describe_actor_loss, describe_critic_loss, describe_critic_net, describe_guard, describe_noise,
                                describe_setup, planned_updates, updates_per_step)

# PlaNet's (and DrQ's) action repeats for its six tasks.
PLANET_REPEATS = {"cartpole": 8, "reacher": 4, "cheetah": 4, "ball_in_cup": 4, "finger": 2, "walker": 2}
# The default's: PlaNet's, but cartpole_swingup and walker_walk at 4 and reacher_easy at 2, where the default
# learner measured better (docs/results.md).
DEFAULT_REPEATS = {**PLANET_REPEATS, "cartpole": 4, "walker": 4, "reacher": 2}


@pytest.mark.parametrize("env,repeat", sorted(DEFAULT_REPEATS.items()))
def test_obs_pixels_uses_the_tasks_repeat_and_drqs_stack(env, repeat):
    cfg = compose([f"env={env}", "obs=pixels"])
    assert cfg.obs.action_repeat == repeat
    assert compose([f"env={env}", "obs=pixels", f"env.action_repeat={PLANET_REPEATS[env]}"]).obs.action_repeat == \
        PLANET_REPEATS[env]  # PlaNet's benchmark repeat: one override away
    assert (cfg.obs.image_size, cfg.obs.frame_stack, cfg.obs.render_substeps) == (64, 3, False)
    assert cfg.agent.name == "ddpg_drq"


def test_the_default_sizes_its_compute_per_frame_to_the_machine_and_plans_on_the_cheapest_choice():
    for env, repeat in DEFAULT_REPEATS.items():
        cfg = compose([f"env={env}"])
        assert cfg.agent.frames_per_update == "auto" and list(cfg.agent.frames_per_update_choices) == [4, 8]
        assert updates_per_step(cfg) == repeat / 8  # until the start-up timing resolves it
        assert updates_per_step(compose([f"env={env}", "agent.frames_per_update=4"])) == repeat / 4
    cfg = compose(["env=cheetah", "total_frames=100000", "warmup_frames=4000"])
    assert planned_updates(cfg) == 12000  # 96k frames / 8


@pytest.mark.parametrize("updates_per_s,chosen,minutes,over", [
    (17.0, 4, 25, False),   # AMX bf16 (docs/results.md): 25k updates in 25 min
    (11.4, 4, 37, False),   # AVX-512 fp32, compiled
    (9.0, 8, 23, False),    # 4 would take 46 min: over the 45
    (4.5, 8, 46, True),     # AVX2 fp32: over at both; the cheapest, and the line says so
])
def test_auto_picks_the_most_updates_whose_100k_frames_fit_the_budget(updates_per_s, chosen, minutes, over):
    per, why = choose_frames_per_update([4.0, 8.0], 1 / updates_per_s, 45)
    assert per == chosen
    assert f"{updates_per_s:.1f} updates/s" in why and f"{minutes} min at one per {chosen} frames" in why
    assert ("over the budget" in why) == over


@pytest.mark.parametrize("override,needle", [("agent.frames_per_update_choices=[]", "frames_per_update_choices"),
                                             ("agent.frames_per_update_choices=[4,-8]", "frames_per_update_choices"),
                                             ("agent.update_budget_minutes=0", "update_budget_minutes=0")])
def test_bad_auto_settings_are_refused(override, needle):
    with pytest.raises(UserError, match=needle):
        check_counts(compose(["env=cheetah", override]))


@pytest.mark.parametrize("seconds,chosen", [(0.001, 4), (10.0, 8)])
def test_the_trainer_resolves_auto_from_its_timing_and_says_so(tmp_path, monkeypatch, capsys, seconds, chosen):
    from pixel_ddpg.agent import DDPGAgent
    from pixel_ddpg.trainer import Trainer

    monkeypatch.setattr(DDPGAgent, "time_update", lambda self: seconds)
    cfg = compose(["env=cartpole_balance", "env.episode_sim_steps=16", "obs.image_size=16", "num_envs=1",
                   "total_frames=16", "device=cpu", "compile=false", "amp=false", "replay.capacity=100",
                   "log.tensorboard=false", "log.progress=true"])
    trainer = Trainer(cfg, tmp_path)
    try:
        assert cfg.agent.frames_per_update == chosen  # what config.yaml and checkpoints record
        assert trainer.updates_per_step == cfg.obs.action_repeat / chosen
    finally:
        trainer.close()
    assert f"one per {chosen} frames" in capsys.readouterr().out


def test_setup_paper_is_the_papers_learner_and_observation():
    cfg = compose(["env=cheetah", "setup=paper"])
    assert cfg.agent.name == "ddpg_paper" and cfg.agent.batch_norm and cfg.agent.batch_size == 16 and cfg.agent.noise.type == "ou"
    assert (cfg.obs.image_size, cfg.obs.action_repeat, cfg.obs.render_substeps, cfg.obs.frame_stack) == (64, 3, True, 1)
    assert updates_per_step(cfg) == 1.0 and cfg.warmup_frames == 10000
    # command-line overrides still win over the setup's choices
    cfg = compose(["env=cheetah", "setup=paper", "obs=state", "utd_ratio=2"])
    assert cfg.obs.type == "state" and updates_per_step(cfg) == 2.0


def test_utd_ratio_wins_and_a_learner_without_frames_per_update_updates_every_step():
    assert updates_per_step(compose(["env=cheetah", "utd_ratio=0.25"])) == 0.25
    assert updates_per_step(compose(["env=cheetah", "agent=ddpg_ln_shift_nstep"])) == 1.0
    old = compose(["env=cheetah", "agent=ddpg"])
    OmegaConf.set_struct(old, False)
    del old.agent["frames_per_update"]  # a checkpoint's config from before the key: one per step
    assert updates_per_step(old) == 1.0


@pytest.mark.parametrize("override,needle", [("utd_ratio=0", "utd_ratio=0"), ("utd_ratio=fast", "utd_ratio=fast"),
                                             ("agent.frames_per_update=-8", "agent.frames_per_update=-8")])
def test_bad_update_rates_are_refused(override, needle):
    with pytest.raises(UserError, match=needle):
        updates_per_step(compose(["env=cheetah", override]))


@pytest.mark.parametrize("software,pixels,chosen", [(True, True, "fast"), (False, True, "standard"),
                                                     (True, False, "standard")])
def test_render_auto_picks_the_fast_profile_on_a_software_rasterizer(monkeypatch, software, pixels, chosen):
    from envs import settings as env_settings

    monkeypatch.setattr(env_settings, "software_rendering", lambda: software)
    cfg = compose(["env=cheetah", "obs=pixels" if pixels else "obs=state"])
    assert cfg.render == "auto"
    assert env_settings.EnvSettings.from_config(cfg).render == chosen


def test_a_run_records_the_profile_render_auto_chose(tmp_path):
    from envs.egl import software_rendering
    from pixel_ddpg.trainer import Trainer

    cfg = compose(["env=cartpole_balance", "env.episode_sim_steps=16", "obs.image_size=16", "num_envs=1",
                   "total_frames=16", "device=cpu", "compile=false", "amp=false", "replay.capacity=100",
                   "log.tensorboard=false"])
    trainer = Trainer(cfg, tmp_path)
    try:
        expected = "fast" if software_rendering() else "standard"
        assert trainer.cfg.render == expected == trainer.checkpoint_state()["config"]["render"]
    finally:
        trainer.close()


def test_the_headline_command_trains_checkpoints_and_evaluates_with_the_defaults(tmp_path):
    """`python -m pixel_ddpg.train env=<task> obs=pixels` with nothing else changed but the sizes."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "run"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "pixel_ddpg.train", "env=cartpole_balance", "obs=pixels", "env.episode_sim_steps=48",
         "num_envs=2", "obs.image_size=16", "agent.batch_size=8", "total_frames=384", "warmup_frames=64",
         "eval.every_frames=128", "eval.episodes=2", "eval.num_envs=2", "log.every_frames=64",
         "checkpoint.every_frames=128", "compile=false", "device=cpu", "replay.capacity=2000",
         "log.tensorboard=false", f"hydra.run.dir={run}"],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    chosen = re.search(r"compute per frame: agent.frames_per_update=auto: .* at one per (4|8) frames", proc.stdout)
    assert chosen, proc.stdout
    per = int(chosen.group(1))
    assert (f"learner: agent=ddpg_drq (batch 8, {8 // per:g} updates per agent step = one per {per} frames, twin Q, "
            f"3-step") in proc.stdout
    assert "observation: 9x16x16 uint8, last 3 agent steps' renders, action repeat 8" in proc.stdout
    with open(run / "eval.csv", newline="") as f:
        assert [int(r["frame"]) for r in csv.DictReader(f)] == [0, 128, 256, 384]
    with open(run / "train.csv", newline="") as f:
        logged = list(csv.DictReader(f))
    assert any(r["critic_loss"] for r in logged) and int(logged[-1]["updates"]) > 0
    config = (run / "config.yaml").read_text()
    assert "name: ddpg_drq" in config and "action_repeat: 8" in config
    assert "render: auto" not in config  # the profile auto chose is recorded
    assert f"frames_per_update: {per}\n" in config  # and the compute per frame


# The default learner's OU sigma at the start of its schedule, per task: the env group's ddpg_drq block,
# each value from the runs in docs/results.md ("Exploration per task").
EXPLORATION_SIGMA = {"cartpole": 0.3, "reacher": 1.0, "cheetah": 1.0, "ball_in_cup": 0.3, "finger": 1.0, "walker": 1.0}


@pytest.mark.parametrize("env,sigma", sorted(EXPLORATION_SIGMA.items()))
def test_the_default_learners_exploration_is_sized_per_task(env, sigma):
    cfg = compose([f"env={env}"])
    assert (cfg.agent.noise.type, cfg.agent.noise.sigma, cfg.agent.noise.sigma_end) == ("ou", sigma, 0.1)
    assert compose([f"env={env}", "agent.noise.sigma=0.5"]).agent.noise.sigma == 0.5  # an override still wins
    assert f"ou noise sigma {sigma:g}->0.1" in describe_noise(NoiseSettings.from_config(cfg.agent.noise))


# The default learner's saturation guard per task, (pre-tanh penalty, knee): the env group's ddpg_drq
# block where runs measured a better one (docs/results.md, "Exploration per task"), else the learner's.
SATURATION_GUARD = {"cartpole": (0.01, 2.0), "reacher": (0.01, 2.0), "cheetah": (0.01, 2.0),
                    "ball_in_cup": (0.01, 2.0), "finger": (0.01, 2.0), "walker": (0.01, 2.0)}


@pytest.mark.parametrize("env,guard", sorted(SATURATION_GUARD.items()))
def test_the_default_learners_saturation_guard_is_sized_per_task_and_said(env, guard):
    cfg = compose([f"env={env}"])
    assert (cfg.agent.actor_preact_penalty, cfg.agent.actor_preact_knee) == guard
    learner = LearnerSettings.from_config(cfg.agent, pixels=True)
    assert f"pre-tanh penalty {guard[0]:g} beyond |u| {guard[1]:g}" in describe_guard(learner)
    cfg = compose([f"env={env}", "agent.actor_preact_penalty=0.5", "agent.actor_preact_knee=0"])
    assert describe_guard(LearnerSettings.from_config(cfg.agent, pixels=True)) == ", pre-tanh penalty 0.5"
    cfg = compose([f"env={env}", "agent.actor_preact_penalty=0"])
    assert describe_guard(LearnerSettings.from_config(cfg.agent, pixels=True)) == ""


def test_the_start_up_line_says_when_the_actor_climbs_a_noisy_sample_or_the_min_of_the_twins():
    plain = LearnerSettings.from_config(compose(["env=cheetah"]).agent, pixels=True)
    assert describe_actor_loss(plain) == ""  # DDPG's Q1(s, mu(s)): nothing to say
    drqv2_form = compose(["env=cheetah", "agent.actor_noise=true", "agent.actor_q=min"]).agent
    line = describe_actor_loss(LearnerSettings.from_config(drqv2_form, pixels=True))
    assert line == ", actor at a noisy sample (the exploration scale, clip 0.3) on min(Q1, Q2)"
    only_min = compose(["env=cheetah", "agent.actor_q=min"]).agent
    assert describe_actor_loss(LearnerSettings.from_config(only_min, pixels=True)) == ", actor on min(Q1, Q2)"


def test_the_start_up_line_says_when_the_critic_loss_or_network_is_not_the_default():
    spec = SimpleNamespace(action_repeat=4)
    plain = LearnerSettings.from_config(compose(["env=cheetah"]).agent, pixels=True)
    assert describe_critic_loss(plain, spec) == ""  # DDPG's MSE
    huber = compose(["env=cheetah", "agent.critic_loss=huber", "agent.huber_delta=5"]).agent
    assert describe_critic_loss(LearnerSettings.from_config(huber, pixels=True), spec) == ", Huber critic loss (delta 5)"
    hl = LearnerSettings.from_config(compose(["env=cheetah", "agent.critic_loss=hlgauss"]).agent, pixels=True)
    assert describe_critic_loss(hl, spec) == (
        ", categorical critic (HL-Gauss cross-entropy, 201 bins over [-400, 400], sigma 0.75 bins)")
    assert describe_critic_net(plain) == ""  # the plain MLP critic
    ln = LearnerSettings.from_config(compose(["env=cheetah", "agent.critic_norm=layer"]).agent, pixels=True)
    assert describe_critic_net(ln) == ", LayerNorm critic"
    assert describe_critic_loss(ln, spec) == ""  # the same MSE
    ln_huber = compose(["env=cheetah", "agent.critic_norm=layer", "agent.critic_loss=huber"]).agent
    ln_huber = LearnerSettings.from_config(ln_huber, pixels=True)
    spec_px = SimpleNamespace(action_repeat=4, obs_shape=(9, 64, 64), pixels=True, frame_stack=3)
    line = describe_setup(compose(["env=cheetah", "agent.critic_norm=layer", "agent.critic_loss=huber"]), spec_px,
                          ln_huber, 1.0)
    assert ", LayerNorm critic, Huber critic loss (delta 1)); observation:" in line
    # the pixel heads' trunk on a state run is named; on pixels it is the learner's own and goes unnamed
    st = LearnerSettings.from_config(compose(["env=cheetah", "obs=state", "agent.state_trunk=true",
                                              "agent.critic_norm=layer"]).agent, pixels=False)
    assert describe_critic_net(st) == ", LayerNorm trunk on the state (50 wide), LayerNorm critic"
    assert describe_critic_net(LearnerSettings.from_config(compose(["env=cheetah", "agent.state_trunk=true"]).agent,
                                                           pixels=True)) == ""


def test_a_task_without_a_measured_sigma_keeps_the_learners_own():
    assert compose(["env=hopper"]).agent.noise.sigma == 1.0
    assert compose(["env=walker", "agent=ddpg"]).agent.noise.sigma == 0.2  # other learners ignore the block
