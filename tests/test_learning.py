"""DDPG learns: from state on cartpole_balance, and from pixels on cheetah_run.

State: with an action repeat of 4 a uniform random policy scores about 300 on cartpole_balance
and zero actions about 750 (the test measures both again); the untrained deterministic actor
scores 520-660. On 2 CPU cores every seed we ran (docs/results.md) reached 950+ between 40k
and 70k frames. The thresholds leave room for other CPUs and torch builds (bitwise-different
updates): each seed must reach 900 and finish with its last three evaluations averaging at least 800.
Each seed takes 1.5-2.5 minutes on 2 cores.

Pixels: the default learner learns cheetah_run from 32x32 renders in 45k frames, about 7 minutes
on 2 cores; the comment above PIXEL_LEARN says what the thresholds rest on.

Neither is in the fast set: `.ci/run` runs them as a second command (README, "Tests").
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from envs import EnvSettings, make_env
from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg.agent import make_agent
from pixel_ddpg.device import resolve_precision
from pixel_ddpg.reference import reference_returns
from pixel_ddpg.rollout import agent_policy, run_episodes
from tests.conftest import ROOT, STATE, tiny


# The paper's low-dimensional DDPG (400-300 nets, batch 64, OU noise, γ 0.99, critic lr 1e-3)
# with TD3's DDPG re-tuning (τ 0.005, actor lr 1e-3) and an action repeat of 4, which make it
# learn within a CI budget; recorded in docs/results.md with the same command.
LEARN = [
    "env=cartpole_balance", "obs=state", "agent=ddpg", "utd_ratio=1", "obs.action_repeat=4", "agent.tau=0.005", "agent.actor_lr=1e-3",
    "total_frames=100000", "warmup_frames=8000", "eval.every_frames=10000", "eval.episodes=4",
    "eval.num_envs=4", "checkpoint.every_frames=1000000", "log.tensorboard=false", "log.progress=false",
    "device=cpu", "compile=false", "amp=false",
]
REACH = 900.0       # best evaluation return (of 1000)
FINAL = 800.0       # mean of the last three evaluations: it stays learned


@pytest.fixture(scope="module")
def baselines() -> dict[str, float]:
    """Returns of a uniform random and a do-nothing policy on the same task and episode length."""
    settings = tiny(STATE, action_repeat=4, num_envs=4, episode_sim_steps=1000)
    rng = np.random.default_rng(0)
    with make_env(settings) as env:
        zeros = np.zeros((env.spec.num_envs, env.spec.action_dim), np.float32)
        return {"random": run_episodes(env, lambda obs, first: env.spec.random_actions(rng), 8).mean,
                "zero action": run_episodes(env, lambda obs, first: zeros, 4).mean}


def eval_returns(run_dir: Path) -> list[float]:
    with open(run_dir / "eval.csv", newline="") as f:
        return [float(r["return_mean"]) for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_state_ddpg_learns_cartpole_balance(tmp_path, seed, baselines):
    run = tmp_path / f"seed{seed}"
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.train", *LEARN, f"seed={seed}",
                           f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    # 900 s: a seed takes 1.5-2.5 minutes on 2 idle cores, but this small-batch learner slows most when
    # the cores are shared: 380 s beside two pixel runs, and two seeds at once beside a pixel training run
    # reached 60k frames in 342 s (about 600 s for 100k). The thresholds below are what the test is
    # about, not the minutes.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    returns = eval_returns(run)
    assert len(returns) == 11, returns  # frame 0, then every 10k frames to 100k
    assert max(returns) >= REACH, f"seed {seed} never reached {REACH}: {returns}"
    final = sum(returns[-3:]) / 3
    assert final >= FINAL, f"seed {seed} did not stay learned (last three mean {final:.0f}): {returns}"
    for name, baseline in baselines.items():
        assert final > baseline + 50, f"seed {seed}: {final:.0f} is not clearly above the {name} policy's {baseline:.0f}"


# Pixels: the default learner (agent=ddpg_drq on obs=pixels: the last render of each of the last 3
# agent steps at cheetah's action repeat, 4) on cheetah_run at 32x32 (shift pad 2 for the smaller
# image), fp32 eager so that the arithmetic does not depend on a compiler. Random actions score about
# 15 and zero actions 0 on cheetah_run at repeat 4; a learner whose encoder died or whose actor
# saturated stayed at 2-4 in every such run (docs/results.md), and the trained actor scores far less
# when its view is frozen. Thresholds: docs/results.md, "The pixel learning test", from the curves of
# the calibration seeds (files under docs/results/pixel_test_default/), at one update per 8 frames,
# pinned: the default's frames_per_update=auto would pick 4 or 8 by the machine's speed.
PIXEL_FRAMES = 45000
PIXEL_LEARN = [
    "env=cheetah", "obs=pixels", "obs.image_size=32", "agent.augment_pad=2", "agent.frames_per_update=8",
    "render=fast", f"total_frames={PIXEL_FRAMES}", "eval.every_frames=5000", "eval.episodes=5",
    "eval.num_envs=5", "log.every_frames=2500", "checkpoint.every_frames=1000000", "log.tensorboard=false",
    "log.progress=false", "device=cpu", "compile=false", "amp=false",
]
PIXEL_REPEAT = 4     # conf/env/cheetah.yaml's action repeat, which the baselines must share
PIXEL_SEEDS = [1]    # one seed: ~7 minutes on 2 cores; on another CPU's arithmetic it is a fresh draw
PIXEL_REACH = 80.0   # best evaluation return; the calibration seeds: 121-152
PIXEL_FINAL = 40.0   # mean of the last three evaluations (35k-45k frames): 75-90; the policy swings


@pytest.fixture(scope="module")
def cheetah_baselines() -> dict[str, float]:
    """Random and zero-action returns on cheetah_run at the pixel run's action repeat and episode length."""
    settings = tiny(STATE, name="cheetah", task_id="CheetahRun-v1", action_repeat=PIXEL_REPEAT, num_envs=4,
                    episode_sim_steps=1000)
    return {name: r.mean for name, r in reference_returns(settings, ["random", "zero"], 8).items()}


def seeing_and_frozen_returns(run_dir: Path, episodes: int = 5) -> tuple[float, float]:
    """The trained actor's mean return when it sees each frame, and when its view stays frozen at
    the first frame of each episode: what the policy owes to looking."""
    ckpt = ckpt_io.load(run_dir / "checkpoints" / "last.pt")
    cfg = ckpt_io.checkpoint_config(ckpt)
    precision = resolve_precision("cpu", "false", "bfloat16", "false")
    settings = EnvSettings.from_config(cfg, num_envs=episodes, seed=12345)
    with make_env(settings) as env:
        agent = make_agent(cfg.agent, env.spec, precision, 0)
        agent.load_state_dict(ckpt["agent"])
        see = agent_policy(agent, precision.device)
        held: list[np.ndarray] = []

        def frozen(obs: np.ndarray, first: np.ndarray) -> np.ndarray:
            if not held:
                held.append(obs.copy())
            held[0] = np.where(first.reshape(-1, *[1] * (obs.ndim - 1)), obs, held[0])
            return see(held[0], first)

        return run_episodes(env, see, episodes).mean, run_episodes(env, frozen, episodes).mean


def train_log(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "train.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("seed", PIXEL_SEEDS)
def test_pixel_ddpg_learns_cheetah_run(tmp_path, seed, cheetah_baselines):
    run = tmp_path / f"pixels-seed{seed}"
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.train", *PIXEL_LEARN, f"seed={seed}",
                           f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)  # the budget: 15 minutes on 2 cores
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert OmegaConf.load(run / "config.yaml").obs.action_repeat == PIXEL_REPEAT, "the baselines ran at another repeat"
    returns = eval_returns(run)
    assert len(returns) == PIXEL_FRAMES // 5000 + 1, returns  # frame 0, then every 5k frames
    final = float(np.mean(returns[-3:]))
    for name, baseline in cheetah_baselines.items():
        assert baseline < PIXEL_FINAL / 2, f"the {name} policy scores {baseline:.0f}: the threshold does not separate it"
    assert max(returns) >= PIXEL_REACH, f"seed {seed} never reached {PIXEL_REACH}: {returns}"
    assert final >= PIXEL_FINAL, f"seed {seed}: the last three evaluations average {final:.0f} < {PIXEL_FINAL}: {returns}"
    # It learned while seeing: the encoder's features stayed alive and the actor out of saturation.
    logged = [r for r in train_log(run) if r["feat_norm"]]
    assert all(float(r["feat_norm"]) > 0 for r in logged), "the encoder died (feat_norm 0)"
    assert float(logged[-1]["sat_frac"]) < 0.95, "the actor ended saturated"
    # And it acts on what it sees: with its view frozen at each episode's first frame it does far worse.
    seeing, frozen = seeing_and_frozen_returns(run)
    assert frozen < seeing / 4, f"the actor scores {frozen:.0f} blind against {seeing:.0f} seeing: it is not using its eyes"
