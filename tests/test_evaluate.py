"""`python -m pixel_ddpg.evaluate`: returns, eval.json and a video from a saved policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envs import make_env
from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg.rollout import run_episodes
from tests.conftest import PAPER, tiny
from tests.test_train import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("evalrun") / "run"
    train(run, "obs=pixels", "total_frames=120")
    return run


def evaluate(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixel_ddpg.evaluate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_evaluate_writes_returns_json_video_and_plot(pixel_run, tmp_path):
    import av

    out = tmp_path / "ev"
    proc = evaluate(f"checkpoint={pixel_run}", "episodes=3", f"out_dir={out}", "video_episodes=1", "video_size=64",
                    "plot=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "eval.json").read_text())
    assert len(summary["returns"]) == 3 and summary["lengths"] == [10, 10, 10]
    assert summary["env"] == "cartpole_balance" and summary["obs"] == "pixels" and summary["checkpoint_frame"] == 120
    assert np.isclose(summary["mean"], np.mean(summary["returns"]))
    assert "return" in proc.stdout and "±" in proc.stdout
    with av.open(str(out / summary["videos"][0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 11  # the first observation and one per agent step
    from pixel_ddpg.video import compose_frame

    expected = compose_frame(np.zeros((9, 16, 16), np.uint8), np.zeros((64, 64, 3), np.uint8), 0, 0.0)
    assert frames[0].shape == expected.shape
    assert (out / "curve.png").stat().st_size > 0


def test_random_policy_return_equals_the_env_for_the_same_seed_and_actions():
    s = tiny(PAPER, num_envs=2, seed=11)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(40, 2, 1))
    it = iter(actions)
    with make_env(s) as env:
        res = run_episodes(env, lambda obs, first: next(it), episodes=2)
    with make_env(s) as env:
        env.reset()
        total = np.zeros(2)
        for a in actions[:5]:
            total += env.step(a).reward
    assert res.lengths == [5, 5]
    np.testing.assert_allclose(res.returns, total, rtol=1e-6)
    assert np.isclose(res.mean, total.mean())


def test_bad_input_is_one_clear_line(pixel_run, tmp_path):
    cases = [
        ([f"checkpoint={tmp_path}/missing.pt"], "does not exist"),
        ([f"checkpoint={tmp_path}"], "no checkpoints/last.pt"),
        ([f"checkpoint={pixel_run}", "episodes=0"], "episodes=0"),
        ([f"checkpoint={pixel_run}", "out_dir=/proc/forbidden"], "not writable"),
    ]
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    cases.append(([f"checkpoint={junk}"], "not a readable pixel_ddpg checkpoint"))
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    cases.append(([f"checkpoint={other}"], "is not a pixel_ddpg checkpoint"))
    newer = tmp_path / "newer.pt"
    state = torch.load(ckpt_io.find_checkpoint(pixel_run), weights_only=False)
    state["version"] = ckpt_io.VERSION + 1
    torch.save(state, newer)
    cases.append(([f"checkpoint={newer}"], "format version"))
    for args, needle in cases:
        proc = evaluate(*args, f"out_dir={tmp_path}/o" if not any(a.startswith("out_dir") for a in args) else "video=false")
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
