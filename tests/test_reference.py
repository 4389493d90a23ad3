"""`python -m pixel_ddpg.reference`: returns of the policies that learned nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from envs import make_env
from pixel_ddpg.errors import UserError
from pixel_ddpg.reference import reference_returns
from pixel_ddpg.rollout import run_episodes
from tests.conftest import PAPER, ROOT, tiny


def test_zero_policy_on_swingup_scores_nothing_and_random_matches_a_direct_rollout():
    # Pixel settings: the reference steps the same task blind (no rendering), same repeat and length.
    settings = tiny(PAPER, name="cartpole", task_id="CartpoleSwingup-v1", episode_sim_steps=60)
    out = reference_returns(settings, ["random", "zero"], episodes=4, seed=3)
    assert max(out["zero"].returns) < 0.1  # the pole hangs (almost) straight down: upright reward ~0
    assert all(n == 20 for n in out["random"].lengths)  # 60 physics steps / action repeat 3
    blind = tiny(PAPER, name="cartpole", task_id="CartpoleSwingup-v1", episode_sim_steps=60, obs_type="state",
                 image_size=0, render_substeps=False)
    rng = np.random.default_rng(3)
    with make_env(blind) as env:
        direct = run_episodes(env, lambda obs, first: env.spec.random_actions(rng), 4)
    assert out["random"].returns == direct.returns and max(direct.returns) > 0


def test_unknown_policy_is_a_user_error():
    with pytest.raises(UserError, match="'greedy'"):
        reference_returns(tiny(), ["greedy"], episodes=1)


def test_command_prints_and_writes_json(tmp_path):
    out = tmp_path / "ref.json"
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.reference", "env=cartpole", "obs=pixels",
                           "env.episode_sim_steps=30", "episodes=2", "eval.num_envs=2", f"out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"cartpole   zero: 0\.0 ± 0\.0 over 2 episodes \(action repeat 4, 7 agent steps; \d+% with any reward\)", proc.stdout)
    doc = json.loads(out.read_text())
    assert doc["task_id"] == "CartpoleSwingup-v1" and doc["action_repeat"] == 4  # obs=pixels: the task's repeat (4 for cartpole_swingup)
    assert doc["policies"]["zero"]["episodes"] == 2 and len(doc["policies"]["zero"]["returns"]) == 2
    assert max(doc["policies"]["zero"]["returns"]) < 0.1  # per episode: the pole hangs down
    assert set(doc["policies"]) == {"random", "zero", "noise"}  # noise: the learner's exploration alone
    assert 0.0 <= doc["policies"]["noise"]["rewarded_share"] <= 1.0


def test_the_default_exploration_finds_finger_spins_reward_where_independent_noise_rarely_does():
    """The measurement behind agent=ddpg_drq's OU sigma 1.0 (docs/results.md, "Exploration")."""
    from pixel_ddpg.config import compose

    settings = tiny(PAPER, name="finger", task_id="FingerSpin-v1", obs_type="state", image_size=0,
                    render_substeps=False, action_repeat=2, num_envs=16, episode_sim_steps=1000)
    ou = compose(["env=finger"]).agent.noise
    gaussian = compose(["env=finger", "agent.noise.type=gaussian", "agent.noise.std_start=1.0"]).agent.noise
    assert ou.type == "ou" and ou.sigma == 1.0
    share = {name: np.mean(np.asarray(reference_returns(settings, ["noise"], 32, seed=0, noise_cfg=cfg)["noise"].returns) > 0)
             for name, cfg in (("ou", ou), ("gaussian", gaussian))}
    assert share["ou"] >= 0.4 and share["ou"] >= 3 * share["gaussian"], share


def test_noise_needs_the_learners_noise_config():
    with pytest.raises(UserError, match="agent.noise"):
        reference_returns(tiny(), ["noise"], episodes=1)
