"""`python -m pixel_ddpg.plot report`: mean and IQM with bootstrap intervals per task and across tasks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pixel_ddpg.errors import UserError
from pixel_ddpg.report import (ALL_TASKS, find_run_dirs, interval_estimates, report, task_scores,
                               task_weighted_estimates, weighted_iqm)
from tests.conftest import make_run, ROOT

pytest.importorskip("rliable")

CHEETAH = [100.0, 200.0, 300.0, 1000.0]  # final returns of 4 seeds; the IQM drops 100 and 1000
WALKER = [400.0, 500.0, 600.0, 700.0]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for env, finals in (("cheetah", CHEETAH), ("walker", WALKER)):
        for seed, final in enumerate(finals):
            make_run(root / f"{env}-pixels-seed{seed}", [0, 10000, 20000], [0.0, final - 50, final], env=env, seed=seed)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / ".submitit" / "1").mkdir(parents=True)  # launcher logs are not runs
    return root


def test_per_task_and_across_task_mean_and_iqm(sweep: Path) -> None:
    tasks = task_scores(find_run_dirs([sweep]))
    assert [t.label for t in tasks] == ["cheetah pixels", "walker pixels"]
    np.testing.assert_array_equal(tasks[0].scores, CHEETAH)  # the final evaluation of each seed
    rows = {r.task: r for r in interval_estimates(tasks, reps=300, confidence=0.95, seed=0)}
    assert rows["cheetah pixels"].point["mean"] == pytest.approx(np.mean(CHEETAH))
    assert rows["cheetah pixels"].point["iqm"] == pytest.approx(250.0)  # mean of the middle half
    everything = CHEETAH + WALKER
    assert rows[ALL_TASKS].point["mean"] == pytest.approx(np.mean(everything))
    assert rows[ALL_TASKS].point["iqm"] == pytest.approx(stats.trim_mean(everything, 0.25))
    assert rows[ALL_TASKS].runs == 8 and rows["walker pixels"].seeds == "0,1,2,3"
    for r in rows.values():
        for s in ("mean", "iqm"):
            assert r.low[s] <= r.point[s] <= r.high[s] and r.low[s] < r.high[s]
    # the interval of 4 seeds lies within their range
    assert min(CHEETAH) <= rows["cheetah pixels"].low["mean"] and rows["cheetah pixels"].high["mean"] <= max(CHEETAH)


def test_last_n_evaluations_and_unequal_seed_counts(sweep: Path, tmp_path: Path, capsys) -> None:
    tasks = task_scores(find_run_dirs([sweep]), last=2)
    np.testing.assert_allclose(tasks[1].scores, np.array(WALKER) - 25)
    make_run(tmp_path / "extra" / "walker-pixels-seed9", [0, 20000], [0.0, 550.0], env="walker", seed=9)
    rows, figure, table = report([sweep, tmp_path / "extra"], tmp_path / "r.png", reps=200)
    assert [r.task for r in rows] == ["cheetah pixels", "walker pixels", ALL_TASKS]
    assert "different numbers of runs" in capsys.readouterr().out
    assert figure.stat().st_size > 0 and table.read_text().startswith("task,runs,seeds,frames,score,mean")
    across = rows[-1]  # 4 and 5 seeds: each task counts once, not each run
    assert across.runs == 9 and across.seeds == "2 tasks, task-weighted"
    assert across.point["mean"] == pytest.approx((np.mean(CHEETAH) + np.mean(WALKER + [550.0])) / 2)
    for s in ("mean", "iqm"):
        assert across.low[s] <= across.point[s] <= across.high[s] and across.low[s] < across.high[s]


def test_task_weighted_estimates_count_each_task_once() -> None:
    five, three = np.full(5, 100.0), np.zeros(3)  # pooled, the five-seed task would weigh 5/8
    point, interval = task_weighted_estimates([five, three], reps=100, confidence=0.95, rng=np.random.default_rng(0))
    np.testing.assert_allclose(point, [50.0, 50.0])  # mean of the task means; the middle half: a quarter at each
    np.testing.assert_allclose(interval, [[50.0, 50.0], [50.0, 50.0]])  # nothing varies within a task
    # with equal weights and a count divisible by 4 the weighted IQM is the usual trimmed mean
    x = np.array(CHEETAH + WALKER)
    assert weighted_iqm(x, np.ones(8)) == pytest.approx(stats.trim_mean(x, 0.25))
    # a score straddling a quartile counts in part: 3 equal runs, the middle half is 1.5 of them
    assert weighted_iqm(np.array([0.0, 10.0, 20.0]), np.ones(3)) == pytest.approx((0.25 * 0 + 1 * 10 + 0.25 * 20) / 1.5)


def test_cli_table_and_one_line_errors(sweep: Path, tmp_path: Path) -> None:
    def run(*args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pixel_ddpg.plot", "report", *map(str, args)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    proc = run(sweep, "--out", tmp_path / "out" / "report.png", "--reps", "200")
    assert proc.returncode == 0, proc.stderr
    assert "| all tasks | 8 | 2 tasks x 4 |" in proc.stdout and "final evaluation" in proc.stdout
    assert (tmp_path / "out" / "report.csv").is_file() and (tmp_path / "out" / "report.png").is_file()
    (tmp_path / "empty").mkdir()
    for args, needle in (([tmp_path / "empty"], "no run dir"), ([tmp_path / "nowhere"], "does not exist"),
                         ([sweep, "--last", "0"], "--last 0"), ([sweep, "--out", tmp_path / "r.nope"], "image type")):
        proc = run(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr


def test_a_missing_run_dir_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        find_run_dirs([tmp_path / "missing"])


def test_group_by_name_joins_seeds_whose_configs_differ_in_a_key_added_since(tmp_path: Path) -> None:
    # seed 1 ran before agent.nstep existed in this form; by config it is a task of its own
    make_run(tmp_path / "walker-fpu4-seed1", [0, 10000], [0.0, 100.0], env="walker", seed=1, nstep=1)
    make_run(tmp_path / "walker-fpu4-seed2", [0, 10000], [0.0, 200.0], env="walker", seed=2, nstep=3)
    make_run(tmp_path / "walker-fpu4-seed3", [0, 10000], [0.0, 300.0], env="walker", seed=3, nstep=3)
    assert sorted(len(t.scores) for t in task_scores(find_run_dirs([tmp_path]))) == [1, 2]
    (task,) = task_scores(find_run_dirs([tmp_path]), by_name=True)
    assert task.label == "walker-fpu4" and list(task.scores) == [100.0, 200.0, 300.0]
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.plot", "report", str(tmp_path), "--group-by", "name",
                           "--reps", "200", "--out", str(tmp_path / "r.png")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "| walker-fpu4 | 3 | 1,2,3 |" in proc.stdout, proc.stderr
