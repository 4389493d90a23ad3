"""Nothing is lost when a run goes wrong: a diverged learner, a kill -9 at any moment, a full
disk, two runs in one dir, a resume of a finished run.

The runs are whole ``python -m pixel_ddpg.train`` command lines, forked from one process that
imported torch and envpool once (tests/faultrunner.py), each with one fault planted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg import rundir
from pixel_ddpg.rundir import LOCK_FILE
from pixel_ddpg.runlog import EVAL_FIELDS, CsvLog, RunDirInUse, RunLock
from tests.faultrunner import Child, FaultRunner
from tests.conftest import frames, rows, TINY

STATE = [*TINY, "obs=state"]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = FaultRunner(tmp_path_factory.mktemp("children"))
    yield r
    r.close()


def new_run(run_dir: Path, *overrides: str) -> list[str]:
    return [*STATE, f"hydra.run.dir={run_dir}", *overrides]


def resume(run_dir: Path, *overrides: str) -> list[str]:
    return [*STATE, f"resume={run_dir}", *overrides]


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def one_error_line(child: Child, *needles: str) -> str:
    """The child failed with exit code 2 and said why in one line on stderr."""
    assert child.rc == 2, child
    lines = [ln for ln in child.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), child
    missing = [n for n in needles if n not in lines[0]]
    assert not missing, f"{missing} not in: {lines[0]}"
    return lines[0]


def temporaries(run_dir: Path) -> list[Path]:
    return [*run_dir.glob(f".*{rundir.TMP_MARK}*"), *(run_dir / rundir.CKPT_DIR).glob(f".*{rundir.TMP_MARK}*")]


def assert_rows_increase(run_dir: Path) -> None:
    for name in ("train.csv", "eval.csv"):
        f = frames(run_dir / name)
        assert all(a < b for a, b in zip(f, f[1:])), f"{name}: frames not strictly increasing: {f}"
        assert (run_dir / name).read_bytes().endswith(b"\n"), f"{name} ends in a torn line"


# ------------------------------------------------------------------ non-finite guard
@pytest.mark.parametrize("when,net,value,log_every,what,last_row", [
    ("update", "critic", "nan", 30,
     r"non-finite critic_loss \(nan at the last update\) at frame 1[5-8]\d \(all finite at frame 150\)", 150),
    ("check", "actor", "inf", 30, r"non-finite weight actor\.\S+ at frame 150 \(all finite at frame 120\)", 120),
    ("iteration", "critic", "nan", 10000, r"non-finite weight critic\.\S+ at frame 180 \(all finite at frame 120\)", None),
], ids=["NaN in the critic before an update", "inf in the actor before a log", "NaN in the critic before a checkpoint"])
def test_a_non_finite_learner_stops_the_run_and_overwrites_no_checkpoint(runner, tmp_path, when, net, value, log_every,
                                                                         what, last_row):
    """The weight is poisoned once, at the first chance from frame 150 on. Before an update, the
    update's loss shows it at the next check (a log, an action). Just before the log at 150, no
    update ran since: only the weights show it. After the iteration that reaches 180, with no log
    there, the checkpoint due at 180 is the first to see it, and must not be written."""
    run, record = tmp_path / "run", tmp_path / "record.json"
    child = runner.run(new_run(run, "total_frames=360", "log.tensorboard=false", f"log.every_frames={log_every}"),
                       {"kind": "poison", "when": when, "net": net, "value": value, "frame": 150 + 30 * (when == "iteration"),
                        "record": str(record)})
    line = one_error_line(child, "saved nothing",
                          f"last good checkpoint {run}/checkpoints/last.pt (frame 120): resume={run} continues from it")
    assert re.search(what, line), line
    before = json.loads(record.read_text())  # the run dir when the weight was poisoned
    for name in ("checkpoints/last.pt", "checkpoints/best.pt"):
        assert before[name] is not None and digest(run / name) == before[name], f"{name} changed after the fault"
    ckpt = ckpt_io.load(run)
    assert ckpt["counters"]["frame"] == 120
    for net in ("encoder", "actor", "critic", "target_critic"):
        assert all(torch.isfinite(t).all() for t in ckpt["agent"][net].values() if t.is_floating_point())
    if last_row is not None:
        assert frames(run / "train.csv") == list(range(30, last_row + 1, 30)), "train.csv keeps its rows up to the fault"
    assert frames(run / "eval.csv") == [0, 120]
    assert not (run / LOCK_FILE).exists()


# ------------------------------------------------------------------ full disk
@pytest.mark.parametrize("file,at,keeps", [
    ("last.pt", 120, "last.pt keeps its previous content"),
    ("train.csv", 90, "it keeps every row written before this one"),
], ids=["checkpoint write", "CSV append"])
def test_a_failed_write_is_one_line_and_leaves_the_previous_checkpoint(runner, tmp_path, file, at, keeps):
    """RLIMIT_FSIZE makes the write fail as a full disk would (EFBIG for ENOSPC)."""
    run, record = tmp_path / "run", tmp_path / "record.json"
    child = runner.run(new_run(run, "total_frames=240", "log.tensorboard=false"),
                       {"kind": "fsize", "file": file, "frame": at, "record": str(record)})
    one_error_line(child, f"could not write {run}/", f"{file} (File too large)", keeps,
                   f"last good checkpoint {run}/checkpoints/last.pt (frame 60)")
    before = json.loads(record.read_text())  # the run dir when the limit was set
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "train.csv", "eval.csv"):
        assert digest(run / name) == before[name], f"{name} changed after the failed write"
    assert temporaries(run) == [], "a half-written file was left behind"
    assert ckpt_io.load(run)["counters"]["frame"] == 60
    done = runner.run(resume(run, "total_frames=240"))  # with room to write, the run finishes
    assert done.rc == 0, done
    assert frames(run / "eval.csv") == [0, 120, 240]
    assert frames(run / "train.csv") == list(range(30, 241, 30))


def test_a_csv_log_drops_a_torn_line_and_cuts_back_a_failed_append(tmp_path):
    path = tmp_path / "eval.csv"
    log = CsvLog(path, EVAL_FIELDS)
    log.write({"frame": 0, "return_mean": 1.5})
    log.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b"120,60,2")  # a kill -9 in the middle of the next row
    log = CsvLog(path, EVAL_FIELDS, resume_frame=None)
    assert path.read_bytes() == whole
    log.write({"frame": 120, "return_mean": 2.0})
    log.close()
    assert [r["frame"] for r in rows(path)] == ["0", "120"]
    unchanged = path.stat().st_mtime_ns
    CsvLog(path, EVAL_FIELDS, resume_frame=120).close()  # nothing to drop: the file is not rewritten
    assert path.stat().st_mtime_ns == unchanged
    log = CsvLog(path, EVAL_FIELDS)
    os.close(log._fd)
    log._fd = os.open(path, os.O_RDONLY)  # every write now fails (EBADF), as on a full disk
    with pytest.raises(rundir.WriteError, match=r"could not write .*eval.csv .*keeps every row written before"):
        log.write({"frame": 240})
    log.close()
    assert [r["frame"] for r in rows(path)] == ["0", "120"]


def test_a_checkpoint_write_that_fails_leaves_the_file_and_no_temporary(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt_io.save_atomic({"weights": torch.ones(3)}, path)
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise OSError(28, "No space left on device")  # what a write raises on a full disk

    with pytest.raises(rundir.WriteError, match=r"last.pt \(No space left on device\); last.pt keeps its previous"):
        ckpt_io.save_atomic({"weights": Unpicklable()}, path)
    assert path.read_bytes() == before and temporaries(tmp_path) == []


# ------------------------------------------------------------------ one run per run dir
def test_a_run_dir_holds_one_run_and_a_dead_runs_lock_is_taken_over(runner, tmp_path):
    run = tmp_path / "run"
    first = runner.start(new_run(run, "total_frames=100000000"))
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "last.pt").exists():
        assert time.monotonic() < deadline, "the first run wrote no checkpoint in 180 s"
        time.sleep(0.3)
    hydra_files = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()}
    second = runner.run(new_run(run, "total_frames=240"))
    one_error_line(second, f"{run} is in use by a live run (pid {first.pid} on ", "one run per run dir")
    second = runner.run(resume(run, "total_frames=240"))
    one_error_line(second, f"{run} is in use by a live run (pid {first.pid} on ")
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir()} == hydra_files, "the refused run wrote"
    os.kill(first.pid, signal.SIGKILL)
    assert runner.wait(first).rc == -signal.SIGKILL
    assert (run / LOCK_FILE).exists(), "a killed run leaves its lock file"
    frame = ckpt_io.load(run)["counters"]["frame"]
    third = runner.run(resume(run, f"total_frames={frame + 60}"))
    assert third.rc == 0, third
    warnings = [ln for ln in third.err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and f"left locked by pid {first.pid} on " in warnings[0], third
    assert "taking it over" in warnings[0]
    assert ckpt_io.load(run)["counters"]["frame"] == frame + 60
    assert not (run / LOCK_FILE).exists(), "a run that ends removes its lock file"
    assert_rows_increase(run)


def test_the_lock_in_one_process(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire() is None
    with pytest.raises(RunDirInUse, match=f"in use by a live run \\(pid {os.getpid()} on "):
        second.acquire()
    with pytest.raises(RunDirInUse):
        second.check_free()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    second.check_free()
    assert second.acquire() is None  # released cleanly: no warning
    os.close(second._fd)  # what the kernel does when a process dies: the flock goes, the file stays
    second._fd = None
    warning = RunLock(tmp_path).acquire()
    assert warning and f"left locked by pid {os.getpid()} on " in warning and "taking it over" in warning


# ------------------------------------------------------------------ resume of a finished run
def test_resuming_a_finished_run_writes_no_row(runner, tmp_path):
    run = tmp_path / "run"
    assert runner.run(new_run(run, "total_frames=180")).rc == 0  # 180: a final evaluation off the schedule
    before = {name: (run / name).read_bytes() for name in ("eval.csv", "train.csv")}
    assert frames(run / "eval.csv") == [0, 120, 180]
    again = runner.run(resume(run, "total_frames=180"))
    assert again.rc == 0, again
    assert "eval @" not in again.out, "a finished run evaluated again"
    assert {name: (run / name).read_bytes() for name in before} == before
    counters = ckpt_io.load(run)["counters"]
    assert counters["last_eval_frame"] == 180
    # what the divergence check compares Q with after a resume: the last evaluation, not the best
    assert counters["last_eval_return"] == pytest.approx(float(rows(run / "eval.csv")[-1]["return_mean"]))


# ------------------------------------------------------------------ kill -9 at any moment
# (moment, frame, and for the CSV moments the file): in the order the run meets them. Each child
# resumes what the previous one left and is killed at the next moment; the last one finishes.
MOMENTS = [
    ("lock", 0, None),                # the run dir locked, no config.yaml yet: resume= starts it again
    ("init", 0, None),                # building the envs and the learner
    ("eval", 0, None),                # inside the first evaluation
    ("csv_row", 0, "eval.csv"),       # its row written, before any checkpoint
    ("best", 0, None),                # last.pt written, best.pt half-written
    ("csv_torn", 30, "train.csv"),    # half a train.csv row
    ("ckpt_partial", 60, None),       # a checkpoint half-written
    ("ckpt_unrenamed", 60, None),     # a checkpoint written and synced, not yet renamed
    ("update", 100, None),            # between updates, train.csv holding a row past last.pt
    ("truncate", 0, None),            # the resume cutting that row off, half-way through its rewrite
    ("iteration", 110, None),
    ("csv_row", 120, "eval.csv"),     # an evaluation's row written, its checkpoint not
    ("eval", 120, None),
    ("ckpt_partial", 180, None),
    ("update", 200, None),
    ("csv_torn", 240, "eval.csv"),
    ("eval", 240, None),
    ("ckpt_unrenamed", 300, None),
    ("iteration", 330, None),
    ("csv_torn", 390, "train.csv"),
    ("ckpt_partial", 420, None),
    ("eval", 480, None),              # inside the final evaluation
    ("csv_row", 480, "eval.csv"),     # the final row written, the final checkpoint not
    ("ckpt_partial", 480, None),      # the final checkpoint half-written
]
COUNTERS = ("frame", "step", "updates", "update_credit", "next_eval", "next_log", "next_checkpoint", "last_eval_frame")


@pytest.mark.slow
@pytest.mark.faults
def test_sigkill_at_24_moments_then_resume_ends_as_an_uninterrupted_run(runner, tmp_path):
    """A SIGKILL at each moment of MOMENTS, over one run's life; each resume continues the dir."""
    args = ("total_frames=480", "replay.save_in_checkpoint=true")  # the replay too: the same updates
    ref = tmp_path / "uninterrupted"
    assert runner.run(new_run(ref, *args)).rc == 0
    run = tmp_path / "run"
    for i, (at, frame, file) in enumerate(MOMENTS):
        argv = new_run(run, *args) if i == 0 else resume(run, *args)
        child = runner.run(argv, {"kind": "kill", "at": at, "frame": frame, "file": file})
        assert child.rc == -signal.SIGKILL, f"moment {i} ({at} @ {frame}) was not reached: {child!r}"
        for name in (rundir.LAST, rundir.BEST):  # whole, whatever moment the kill hit
            if (run / rundir.CKPT_DIR / name).exists():
                ckpt_io.load(run / rundir.CKPT_DIR / name)
    last = runner.run(resume(run, *args))
    assert last.rc == 0, last
    assert temporaries(run) == [] and not (run / LOCK_FILE).exists()
    assert_rows_increase(run)
    got, want = ckpt_io.load(run)["counters"], ckpt_io.load(ref)["counters"]
    assert {k: got[k] for k in COUNTERS} == {k: want[k] for k in COUNTERS}
    assert frames(run / "eval.csv") == frames(ref / "eval.csv") == list(range(0, 481, 120))
    assert [(r["frame"], r["updates"]) for r in rows(run / "train.csv")] == \
        [(r["frame"], r["updates"]) for r in rows(ref / "train.csv")]
    assert not any(math.isnan(float(r["return_mean"])) for r in rows(run / "eval.csv"))
