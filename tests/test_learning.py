"""DDPG learns: state-based cartpole balance goes well past a random and a do-nothing policy.

With an action repeat of 4 a uniform random policy scores about 300 on cartpole_balance and
zero actions about 750 (the test measures both again); the untrained deterministic actor
scores 520-660. On 2 CPU cores every seed we ran (docs/results.md) reached 950+ between 40k
and 70k frames. The thresholds leave room for other CPUs and torch builds (bitwise-different
updates): each seed must reach 900 and finish with its last three evaluations averaging at least 800.

Each seed takes 1.5-2.5 minutes on 2 cores, so this is not in the fast set: `.ci/run` runs it
as a second command (README, "Tests").
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs import make_env
from pixel_ddpg.rollout import run_episodes
from tests.conftest import STATE, tiny

ROOT = Path(__file__).resolve().parent.parent

# The paper's low-dimensional DDPG (400-300 nets, batch 64, OU noise, γ 0.99, critic lr 1e-3)
# with TD3's DDPG re-tuning (τ 0.005, actor lr 1e-3) and an action repeat of 4, which make it
# learn within a CI budget; recorded in docs/results.md with the same command.
LEARN = [
    "env=cartpole_balance", "obs=state", "obs.action_repeat=4", "agent.tau=0.005", "agent.actor_lr=1e-3",
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
                           f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    returns = eval_returns(run)
    assert len(returns) == 11, returns  # frame 0, then every 10k frames to 100k
    assert max(returns) >= REACH, f"seed {seed} never reached {REACH}: {returns}"
    final = sum(returns[-3:]) / 3
    assert final >= FINAL, f"seed {seed} did not stay learned (last three mean {final:.0f}): {returns}"
    for name, baseline in baselines.items():
        assert final > baseline + 50, f"seed {seed}: {final:.0f} is not clearly above the {name} policy's {baseline:.0f}"
