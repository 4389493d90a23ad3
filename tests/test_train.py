"""`python -m pixel_ddpg.train`: a Hydra smoke run trains, logs, checkpoints, stops and resumes."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg.trainer import episode_stats
from tests.conftest import frames, ROOT, rows, TINY, train


def test_train_csv_counts_the_training_episodes_that_collected_any_reward():
    # A sparse task's interval: 3 episodes without a catch, one with: the mean alone cannot say which.
    assert episode_stats([0.0, 0.0, 240.0, 0.0]) == {"episode_return": 60.0, "episode_return_max": 240.0,
                                                    "rewarded": 0.25}
    none = episode_stats([])  # no episode ended in the interval: nothing to say, not zero
    assert set(none) == {"episode_return", "episode_return_max", "rewarded"}
    assert all(math.isnan(v) for v in none.values())


@pytest.mark.parametrize("obs,total", [("state", 240), ("pixels_paper", 360)])
def test_smoke_run_writes_logs_events_and_checkpoint(tmp_path, obs, total):
    run = tmp_path / obs
    train(run, f"obs={obs}", f"total_frames={total}")
    evals = rows(run / "eval.csv")
    assert [int(r["frame"]) for r in evals] == list(range(0, total + 1, 120))
    for r in evals:
        assert int(r["episodes"]) == 2 and r["return_mean"] != "" and float(r["wall_s"]) >= 0
    train_rows = rows(run / "train.csv")
    assert train_rows and all(r["fps"] for r in train_rows)
    assert any(r["critic_loss"] for r in train_rows), "updates should have started after the warm-up"
    ended = [r for r in train_rows if r["episode_return"] not in ("", "nan")]
    assert ended, "some training episodes ended"
    for r in ended:  # cartpole_balance pays reward on every step: every episode is rewarded
        assert float(r["episode_return_max"]) >= float(r["episode_return"]) > 0 and float(r["rewarded"]) == 1.0
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").exists()
    ckpt = ckpt_io.load(run)
    assert ckpt["counters"]["frame"] == total
    assert (run / "checkpoints" / "best.pt").exists()


def test_resume_continues_counters_without_duplicate_rows(tmp_path):
    run = tmp_path / "run"
    train(run, "obs=state", "total_frames=180")
    first = ckpt_io.load(run)["counters"]
    proc = train(tmp_path / "ignored", "resume=" + str(run), "total_frames=360")
    assert str(run) in proc.stdout
    ckpt = ckpt_io.load(run)
    assert ckpt["counters"]["frame"] == 360 and ckpt["counters"]["updates"] > first["updates"]
    for name in ("train.csv", "eval.csv"):
        f = frames(run / name)
        assert f == sorted(set(f)), f"{name} has duplicated or unordered rows: {f}"
    assert frames(run / "eval.csv") == [0, 120, 180, 240, 360]  # 180: the first run's final evaluation
    assert not (tmp_path / "ignored").exists()
    before = {name: (run / name).read_bytes() for name in ("train.csv", "eval.csv", "config.yaml")}
    proc = train(run, "obs=state", "total_frames=180", check=False)  # a new run, not resume=
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{run} already holds a run" in proc.stderr and f"resume={run}" in proc.stderr, proc.stderr
    assert {name: (run / name).read_bytes() for name in before} == before, "the refused run wrote"


def test_resume_from_a_final_evaluation_on_the_schedule_repeats_no_row(tmp_path):
    run = tmp_path / "run"
    train(run, "obs=state", "total_frames=240")  # its last evaluation, at 240, is also a scheduled one
    train(tmp_path / "ignored", "resume=" + str(run), "total_frames=360")
    assert frames(run / "eval.csv") == [0, 120, 240, 360]


def test_a_run_killed_after_a_periodic_checkpoint_resumes_without_repeating_rows(tmp_path):
    """The state a crash leaves: the last periodic checkpoint and the logs as they were then."""
    from pixel_ddpg.config import compose
    from pixel_ddpg.trainer import Trainer

    run, crashed = tmp_path / "run", tmp_path / "crashed"
    run.mkdir()
    trainer = Trainer(compose([*TINY, "obs=state", "total_frames=240"]), run)
    save = trainer.save
    held: list[dict[str, int]] = []

    def save_and_copy(best: bool = False) -> Path:
        path = save(best)
        if not best and trainer.counters.frame == 120:  # an evaluation and a checkpoint are both due at 120
            held.append(dict(next_eval=trainer.counters.next_eval, next_checkpoint=trainer.counters.next_checkpoint))
            shutil.copytree(run, crashed)
        return path

    trainer.save = save_and_copy
    trainer.train()
    assert held == [{"next_eval": 240, "next_checkpoint": 180}], "the checkpoint should hold no work already done"
    assert frames(crashed / "eval.csv") == [0, 120]
    train(tmp_path / "ignored", "resume=" + str(crashed), "total_frames=240")
    assert frames(crashed / "eval.csv") == frames(run / "eval.csv") == [0, 120, 240]
    f = frames(crashed / "train.csv")
    assert f == sorted(set(f)), f"train.csv has duplicated or unordered rows: {f}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR2], ids=["SIGINT", "SIGUSR2 (SLURM's time-limit warning)"])
def test_a_stop_signal_leaves_a_loadable_checkpoint(tmp_path, sig):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pixel_ddpg.train", *TINY, "obs=state", "total_frames=10000000",
           "checkpoint.every_frames=10000000", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not (run / "train.csv").exists() or len(rows(run / "train.csv")) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, out + err
    assert "resume=" in out + err
    ckpt = ckpt_io.load(run)
    assert 0 < ckpt["counters"]["frame"] < 10000000


def test_sigint_during_an_evaluation_is_honoured_within_5_s(tmp_path):
    """The frame-0 evaluation here would take minutes; Ctrl-C landing in it stops the run at once."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pixel_ddpg.train", *TINY, "obs=state", "total_frames=10000000",
           "eval.episodes=100000", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # printed just before the evaluation starts
        seen.append(line)
        if line.startswith("eval @ 0 frames: 100000 episodes"):
            break
    else:
        pytest.fail("".join(seen))
    time.sleep(1.0)
    assert proc.poll() is None, "".join(seen)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + signal.SIGINT, "".join(seen) + out
    assert took < 5.0, f"took {took:.1f} s to stop"
    assert "resume=" in out
    assert ckpt_io.load(run)["counters"]["frame"] == 0
    assert rows(run / "eval.csv") == []  # an interrupted evaluation writes no row (a resume redoes it)


def test_progress_lines_when_stdout_is_not_a_terminal(tmp_path):
    proc = train(tmp_path / "run", "obs=state", "total_frames=240", "log.progress_every_s=0")
    assert "learner on cpu: fp32, eager" in proc.stdout and "usable cores" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("frames ")]
    assert lines and "/240 (" in lines[-1] and "frames/s | ETA" in lines[-1] and "last eval" in lines[-1]
    assert "eval @ 0 frames: 2 episodes of" in proc.stdout
    assert "ends inside the warm-up" not in proc.stdout


def test_a_run_inside_its_warm_up_says_it_makes_no_updates(tmp_path):
    proc = train(tmp_path / "run", "obs=state", "total_frames=60", "warmup_frames=90")
    assert "warning: total_frames=60 ends inside the warm-up (warmup_frames=90): " in proc.stdout
    logged = rows(tmp_path / "run" / "train.csv")
    assert logged and not any(r["critic_loss"] for r in logged)


def test_progress_rate_and_eta_leave_out_evaluations():
    """100 frames in 10 s of training with a 60 s evaluation between: 10 frames/s, ETA 90 s for the
    900 left, not the 1.4 frames/s and ETA of ten minutes that counting the evaluation gave."""
    from pixel_ddpg.runlog import Progress

    now = [0.0]
    progress = Progress(total=1000, initial=0, enabled=False, clock=lambda: now[0])
    with progress.paused():
        now[0] += 60.0
    now[0] += 10.0
    assert progress.line(100, now[0]) == "frames 100/1,000 (10.0%) | 10 frames/s | ETA 0:01:30"
    with progress.paused():  # a second evaluation
        now[0] += 60.0
    now[0] += 10.0
    assert progress.line(200, now[0]) == "frames 200/1,000 (20.0%) | 10 frames/s | ETA 0:01:20"


def test_same_seed_gives_identical_first_losses(tmp_path):
    losses = []
    for name in ("a", "b"):
        train(tmp_path / name, "obs=state", "total_frames=120", "seed=3")
        r = next(r for r in rows(tmp_path / name / "train.csv") if r["critic_loss"])
        losses.append((r["critic_loss"], r["actor_loss"]))
    assert losses[0] == losses[1]


@pytest.mark.parametrize("overrides,needle", [
    (["total_frames=0"], "total_frames=0 must be a positive"),
    (["total_frames=-5"], "total_frames=-5 must be a positive"),
    (["eval.episodes=0"], "eval.episodes=0 must be a positive"),
    (["device=cuda"], "no CUDA GPU"),
    (["resume=/nonexistent/run"], "does not exist"),
    (["env=nope"], "env='nope' is not known"),
    (["eval.networks=polyak"], "eval.networks='polyak': must be one of online, target"),
])
def test_bad_input_is_one_clear_line(tmp_path, overrides, needle):
    if "device=cuda" in overrides and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = train(tmp_path / "run", "obs=state", *overrides, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "train.csv").exists()


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    proc = train(tmp_path / "r1", "obs=state", f"resume={bad}", check=False)
    assert proc.returncode == 2 and "not a readable pixel_ddpg checkpoint" in proc.stderr
    run = tmp_path / "run"
    train(run, "obs=state", "total_frames=60")
    before = (run / "train.csv").read_text()
    proc = train(tmp_path / "r2", "obs=state", "env=walker", f"resume={run}", check=False)
    assert proc.returncode == 2 and "cannot resume" in proc.stderr and "env" in proc.stderr
    assert (run / "train.csv").read_text() == before


def test_unwritable_run_dir_is_refused(tmp_path):
    if os.geteuid() == 0:
        target = Path("/proc/pixel_ddpg_cannot_write_here")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.train", *TINY, "obs=state", f"hydra.run.dir={target}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not writable" in proc.stderr, proc.stderr


def test_updates_wait_for_real_transitions_even_without_warmup(tmp_path):
    """16 envs fill a batch of 16 with reset steps alone; no update may sample before a step."""
    run = tmp_path / "run"
    train(run, "obs=state", "num_envs=16", "warmup_frames=0", "total_frames=160", "log.every_frames=16")
    assert any(r["critic_loss"] for r in rows(run / "train.csv"))


def test_eval_networks_target_is_what_the_training_evaluations_act_with(tmp_path, monkeypatch):
    """``eval.networks=target``: every training evaluation acts with the Polyak-averaged encoder and
    actor, and the checkpoint's config says so (evaluate and export follow it)."""
    from pixel_ddpg import trainer as trainer_mod
    from pixel_ddpg.config import compose

    seen = []
    real = trainer_mod.agent_policy

    def spy(agent, device, target=False):
        seen.append(target)
        return real(agent, device, target=target)

    monkeypatch.setattr(trainer_mod, "agent_policy", spy)
    run = tmp_path / "run"
    run.mkdir()
    trainer_mod.Trainer(compose([*TINY, "obs=state", "total_frames=120", "eval.networks=target"]), run).train()
    assert seen == [True, True]  # frame 0 and frame 120
    assert ckpt_io.checkpoint_config(ckpt_io.load(run)).eval.networks == "target"
