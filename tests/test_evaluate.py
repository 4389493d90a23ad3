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
from tests.conftest import evaluate, PAPER, ROOT, tiny, train


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("evalrun") / "run"
    train(run, "obs=pixels_paper", "total_frames=120")
    return run


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


def test_strip_holds_the_first_episodes_renders_at_evenly_spread_frames(pixel_run, tmp_path):
    import av
    from PIL import Image

    from pixel_ddpg.evaluate import strip_frames
    from pixel_ddpg.video import MARGIN

    assert strip_frames(3, 10) == {0, 5, 10} and strip_frames(1, 10) == {0} and strip_frames(0, 10) == set()
    out = tmp_path / "ev"
    proc = evaluate(f"checkpoint={pixel_run}", "episodes=2", f"out_dir={out}", "video_episodes=1", "video_size=64",
                    "strip_frames=3", "strip_height=64", "q_record=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "eval.json").read_text())
    strip = np.asarray(Image.open(out / summary["strip"]).convert("RGB"))
    assert strip.shape == (64, 3 * 64, 3)
    with av.open(str(out / summary["videos"][0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for tile, at in enumerate((0, 5, 10)):  # the render in the (lossy) video's frame at the same index
        render = frames[at][MARGIN:MARGIN + 64, MARGIN:MARGIN + 64].astype(int)
        assert np.abs(strip[:, tile * 64:(tile + 1) * 64].astype(int) - render).mean() < 8, tile
    assert not np.array_equal(strip[:, :64], strip[:, 128:])  # the episode moved on
    without_video = tmp_path / "still"
    proc = evaluate(f"checkpoint={pixel_run}", "episodes=1", f"out_dir={without_video}", "video=false",
                    "strip_frames=2", "strip_height=32", "q_record=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(without_video.glob("*.mp4"))
    assert Image.open(without_video / "episode_000_strip.png").size[1] == 32
    proc = evaluate(f"checkpoint={pixel_run}", "episodes=1", f"out_dir={tmp_path}/bad", "strip_frames=-1")
    assert proc.returncode == 2 and "strip_frames=-1" in proc.stderr, proc.stderr
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_networks_target_scores_what_the_polyak_copies_score_as_the_online_networks(pixel_run):
    """``networks=target`` (the default out dir gains ``_target``) acts as the checkpoint would if its
    target encoder and actor were its online ones, and the target critic judges its actions."""
    from envs import EnvSettings
    from pixel_ddpg.agent import make_agent
    from pixel_ddpg.device import resolve_precision
    from pixel_ddpg.rollout import agent_policy

    proc = evaluate(f"checkpoint={pixel_run}", "episodes=2", "num_envs=2", "seed=5", "video=false", "networks=target")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((pixel_run / "eval" / "frame_120_target" / "eval.json").read_text())
    assert summary["networks"] == "target" and summary["q"]["all_steps"]["steps"] == 20
    ckpt = ckpt_io.load(pixel_run)
    cfg = ckpt_io.checkpoint_config(ckpt)
    assert cfg.eval.networks == "online"  # the run's own evaluations: the default
    settings = EnvSettings.from_config(cfg, num_envs=2, seed=5)
    precision = resolve_precision("cpu", "false", "bfloat16", "false")
    with make_env(settings) as env:
        a = make_agent(cfg.agent, env.spec, precision, 0)
        ckpt_io.restore_agent(a, ckpt, ckpt_io.env_signature(settings, env.spec), generator=False)
        a.encoder.load_state_dict(a.target_encoder.state_dict())
        a.actor.load_state_dict(a.target_actor.state_dict())
        swapped = run_episodes(env, agent_policy(a, precision.device), 2).returns
    np.testing.assert_allclose(summary["returns"], swapped, rtol=1e-6)


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
        ([], "checkpoint= is required"),
        ([f"checkpoint={tmp_path}/missing.pt"], "does not exist"),
        ([f"checkpoint={tmp_path}"], "no checkpoints/last.pt"),
        ([f"checkpoint={pixel_run}", "episodes=0"], "episodes=0"),
        ([f"checkpoint={pixel_run}", "out_dir=/proc/forbidden"], "not writable"),
        ([f"checkpoint={pixel_run}", "q_tail_tolerance=2"], "q_tail_tolerance=2"),
        ([f"checkpoint={pixel_run}", "networks=best"], "networks='best': must be one of online, target"),
    ]
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    cases.append(([f"checkpoint={junk}"], "not a readable pixel_ddpg checkpoint"))
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    cases.append(([f"checkpoint={other}"], "is not a pixel_ddpg checkpoint"))
    newer = tmp_path / "newer.pt"
    state = torch.load(ckpt_io.find_checkpoint(pixel_run), weights_only=True)
    state["version"] = ckpt_io.VERSION + 1
    torch.save(state, newer)
    cases.append(([f"checkpoint={newer}"], "format version"))
    for args, needle in cases:
        proc = evaluate(*args, f"out_dir={tmp_path}/o" if not any(a.startswith("out_dir") for a in args) else "video=false")
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_q_record_matches_the_steps_and_rewards_and_draws_the_figure(pixel_run, tmp_path):
    """Figure 3 of the DDPG paper: the critic's Q(s, a) against the discounted return that followed."""
    from PIL import Image

    from pixel_ddpg.qestimate import load_record

    evals = []
    for name in ("last.pt", "best.pt"):  # two checkpoints of one run on one figure
        out = tmp_path / name
        proc = evaluate(f"checkpoint={pixel_run}/checkpoints/{name}", "episodes=3", "num_envs=2", f"out_dir={out}",
                        "video=false")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        evals.append(out)
    summary = json.loads((evals[0] / "eval.json").read_text())
    record = load_record(evals[0])
    gamma = summary["q"]["gamma"]
    assert gamma == 0.99  # the checkpoint's agent.gamma
    assert len(record.q) == sum(summary["lengths"]) == 30  # one entry per step taken
    for n, (length, episode_return) in enumerate(zip(summary["lengths"], summary["returns"])):
        rewards = record.reward[record.episode == n]
        assert len(rewards) == length and np.isclose(rewards.sum(), episode_return)
        direct = [sum(gamma**k * rewards[t + k] for k in range(length - t)) for t in range(length)]
        np.testing.assert_allclose(record.ret[record.episode == n], direct, rtol=1e-12)
        np.testing.assert_allclose(record.tail_weight[record.episode == n], gamma ** (length - np.arange(length)))
    assert np.isfinite(record.q).all() and np.isfinite(record.tail_q).all()
    q = summary["q"]
    assert q["all_steps"]["steps"] == 30 and np.isclose(q["all_steps"]["bias"], np.mean(record.q - record.ret))
    assert np.isclose(q["all_steps"]["correlation"], np.corrcoef(record.q, record.ret)[0, 1])
    assert np.isclose(q["bootstrapped"]["bias"], np.mean(record.q - record.ret - record.tail_weight * record.tail_q))
    assert q["horizon_steps"] == 459 and q["tail_negligible"]["steps"] == 0  # 10-step episodes: every tail counts
    assert "time limit" in q["truncation"]

    figure = tmp_path / "figs" / "q.png"
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.plot", "q", *map(str, evals), "--out", str(figure)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.size == (800, 500)
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.plot", "q", str(evals[0]), "--steps", "tail-negligible",
                           "--out", str(tmp_path / "none.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no steps to draw" in proc.stderr and not (tmp_path / "none.png").exists()


def test_discounted_returns_and_horizon():
    from pixel_ddpg.qestimate import compare, discounted_returns, horizon

    np.testing.assert_allclose(discounted_returns(np.array([1.0, 2.0, 4.0]), 0.5), [1 + 1 + 1, 2 + 2, 4])
    assert horizon(0.99, 0.01) == 459 and 0.99**459 < 0.01 <= 0.99**458
    assert horizon(1.0, 0.01) is None
    c = compare(np.array([2.0, 3.0]), np.array([1.0, 1.0]))
    assert c["bias"] == 1.5 and c["correlation"] is None and c["steps"] == 2  # a constant return has no correlation
