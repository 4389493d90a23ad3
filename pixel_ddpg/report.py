"""Aggregate scores of a sweep: per task and across tasks, mean and interquartile mean (IQM)
with stratified bootstrap confidence intervals, computed by ``rliable`` (Agarwal et al. 2021).

``python -m pixel_ddpg.plot report SWEEP_OR_RUN_DIR... [--out report.png] [--last N]``
(also ``python -m pixel_ddpg.report``).

Runs: every folder holding an ``eval.csv`` under the given dirs (a Hydra sweep dir, a parent of
several, or run dirs themselves). Tasks: runs whose configs differ only in the seed (and the
keys :data:`pixel_ddpg.rundir.IGNORED_KEYS` leaves out) are the seeds of one task, labelled by
env and obs as in the curves. A run's score is the mean evaluation return (``return_mean``) of
its last ``--last`` rows of eval.csv (default 1: the final evaluation), the raw dm_control
return (every task is on the same 0-1000 scale, so nothing is normalised). Across tasks, the
statistics are taken over the runs × tasks score matrix with runs resampled within each task
(rliable's layout). Tasks with different numbers of runs (five seeds here, three there) get the
same stratified bootstrap computed here, with each run weighing one over its task's runs, so that
every task counts once: the mean is the mean of the task means, the IQM the mean of the middle
half of that weighted distribution (the ``seeds`` column then says "task-weighted").

Writes a table to stdout and to a CSV beside the figure, and the figure: one row per task and
one for all tasks, point estimate and confidence interval, every run's score as a dot.
"""

from __future__ import annotations

import csv
import io
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixel_ddpg.config import ArgParser, fail
from pixel_ddpg.errors import UserError
from pixel_ddpg.figures import group_labels, new_figure, save_figure
from pixel_ddpg.rundir import EVAL_CSV, Run, WriteError, load_run, write_atomic

ALL_TASKS = "all tasks"
TASK_WEIGHTED = "task-weighted"  # the across-task row's seeds text when run counts differ
STATISTICS = ("mean", "iqm")
COLUMNS = ("task", "runs", "seeds", "frames", "score", "mean", "mean_low", "mean_high", "iqm", "iqm_low", "iqm_high")


@dataclass
class TaskScores:
    label: str
    runs: list[Run]
    scores: np.ndarray  # one per run
    frames: list[int]  # the frame of each run's last evaluation


@dataclass
class Row:
    task: str
    runs: int
    seeds: str
    frames: str
    point: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]


def find_run_dirs(paths: Sequence[Path | str]) -> list[Path]:
    """Folders holding eval.csv: the paths themselves or below them (hidden folders skipped)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"{p} " + ("is not a folder" if p.exists() else "does not exist"))
        if (p / EVAL_CSV).is_file():
            found.append(p)
            continue
        below = sorted(d.parent for d in p.rglob(EVAL_CSV)
                       if not any(part.startswith(".") for part in d.relative_to(p).parts))
        if not below:
            raise UserError(f"{p} holds no run dir with an {EVAL_CSV}")
        found.extend(below)
    unique: dict[Path, Path] = {}
    for d in found:
        unique.setdefault(d.resolve(), d)
    return list(unique.values())


def task_scores(run_dirs: Sequence[Path], last: int = 1, by_name: bool = False) -> list[TaskScores]:
    """Each run's score (mean of its last ``last`` evaluations), grouped into tasks: by config, or
    with ``by_name`` by run dir name less ``-seed<N>`` (seeds run by versions of the code whose
    configs differ in keys added since)."""
    if last < 1:
        raise UserError(f"--last {last} must be at least 1")
    groups: dict[str, list[Run]] = {}
    for d in run_dirs:
        run = load_run(d, by_name=by_name)
        groups.setdefault(run.group, []).append(run)
    labels = group_labels(groups)
    tasks = []
    for g, runs in groups.items():
        runs.sort(key=lambda r: (r.seed is None, r.seed, str(r.path)))
        scores = np.array([float(np.mean(r.mean[-last:])) for r in runs])
        tasks.append(TaskScores(labels[g], runs, scores, [int(r.frame[-1]) for r in runs]))
    tasks.sort(key=lambda t: t.label)
    return tasks


def _rliable() -> tuple[Any, Any]:
    try:
        from rliable import library, metrics
    except ImportError as exc:
        raise UserError(f"the report needs rliable ({exc}); install it with pip install -e '.[cluster]'") from None
    return library, metrics


def interval_estimates(tasks: Sequence[TaskScores], reps: int, confidence: float, seed: int) -> list[Row]:
    """Mean and IQM with percentile stratified-bootstrap intervals, per task and across tasks."""
    if reps < 1:
        raise UserError(f"--reps {reps} must be at least 1")
    if not 0.0 < confidence < 1.0:
        raise UserError(f"--confidence {confidence} must be between 0 and 1")
    library, metrics = _rliable()

    def stats(matrix: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_mean(matrix), metrics.aggregate_iqm(matrix)])

    matrices = {t.label: t.scores[:, None] for t in tasks}
    counts = {len(t.scores) for t in tasks}
    equal = len(counts) == 1
    if len(tasks) > 1 and equal:
        matrices[ALL_TASKS] = np.stack([t.scores for t in tasks], axis=1)  # runs x tasks
    with warnings.catch_warnings():  # arch deprecates the RandomState that rliable passes on; the draws are the same
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"arch\.")
        point, interval = library.get_interval_estimates(
            matrices, stats, reps=reps, confidence_interval_size=confidence,
            random_state=np.random.RandomState(seed))
    rows = []
    for t in tasks:
        seeds = ",".join("?" if r.seed is None else str(r.seed) for r in t.runs)
        frames = f"{min(t.frames)}" if min(t.frames) == max(t.frames) else f"{min(t.frames)}-{max(t.frames)}"
        rows.append(_row(t.label, len(t.scores), seeds, frames, point[t.label], interval[t.label]))
    if len(tasks) > 1:
        n = sum(len(t.scores) for t in tasks)
        frames = sorted({f for t in tasks for f in t.frames})
        span = f"{frames[0]}" if len(frames) == 1 else f"{frames[0]}-{frames[-1]}"
        if equal:
            rows.append(_row(ALL_TASKS, n, f"{len(tasks)} tasks x {n // len(tasks)}", span, point[ALL_TASKS],
                             interval[ALL_TASKS]))
        else:
            across_point, across_interval = task_weighted_estimates([t.scores for t in tasks], reps, confidence,
                                                                    np.random.default_rng(seed))
            rows.append(_row(ALL_TASKS, n, f"{len(tasks)} tasks, {TASK_WEIGHTED}", span, across_point,
                             across_interval))
    return rows


def weighted_iqm(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """IQM of each row of ``scores`` (..., N) where score j weighs ``weights[j]``: the mean of the
    middle half of the weighted distribution, splitting a score that straddles a quartile."""
    order = np.argsort(scores, axis=-1)
    x = np.take_along_axis(scores, order, axis=-1)
    w = np.broadcast_to(weights / weights.sum(), scores.shape)
    w = np.take_along_axis(w, order, axis=-1)
    hi = np.cumsum(w, axis=-1)
    lo = hi - w
    inside = np.clip(np.minimum(hi, 0.75) - np.maximum(lo, 0.25), 0.0, None)
    return (x * inside).sum(axis=-1) / 0.5


def task_weighted_estimates(scores: Sequence[np.ndarray], reps: int, confidence: float,
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mean and IQM across tasks with unequal run counts, each task counting once, and percentile
    intervals from a stratified bootstrap (runs resampled within their task): rliable's layout
    needs a full runs x tasks matrix, which five seeds here and three there do not make."""
    weights = np.concatenate([np.full(len(s), 1.0 / len(s)) for s in scores])

    def stats(samples: Sequence[np.ndarray]) -> np.ndarray:
        task_means = np.stack([s.mean(axis=-1) for s in samples], axis=-1)
        return np.stack([task_means.mean(axis=-1), weighted_iqm(np.concatenate(samples, axis=-1), weights)])

    point = stats([np.asarray(s, float) for s in scores])
    boot = stats([np.asarray(s, float)[rng.integers(0, len(s), size=(reps, len(s)))] for s in scores])
    tail = (1.0 - confidence) / 2 * 100
    interval = np.percentile(boot, [tail, 100 - tail], axis=-1)
    return point, interval


def _row(task: str, runs: int, seeds: str, frames: str, point: np.ndarray, interval: np.ndarray) -> Row:
    return Row(task, runs, seeds, frames, dict(zip(STATISTICS, map(float, point))),
               dict(zip(STATISTICS, map(float, interval[0]))), dict(zip(STATISTICS, map(float, interval[1]))))


def markdown_table(rows: Sequence[Row], basis: str, confidence: float) -> str:
    pct = f"{confidence * 100:g}%"
    lines = [f"| task | runs | seeds | frames | mean [{pct} CI] | IQM [{pct} CI] |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r.point[s]:.1f} [{r.low[s]:.1f}, {r.high[s]:.1f}]" for s in STATISTICS]
        lines.append(f"| {r.task} | {r.runs} | {r.seeds} | {r.frames} | {cells[0]} | {cells[1]} |")
    weighted = any(r.seeds.endswith(TASK_WEIGHTED) for r in rows)
    return "\n".join(lines) + (f"\n\nscore per run: {basis}; stratified bootstrap (rliable"
                               + ("; the task-weighted row: the same resampling, each task counting once" if weighted else "")
                               + "), percentile intervals")


def write_csv(rows: Sequence[Row], basis: str, path: Path) -> Path:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r.task, r.runs, r.seeds, r.frames, basis, r.point["mean"], r.low["mean"], r.high["mean"],
                    r.point["iqm"], r.low["iqm"], r.high["iqm"]])
    try:
        return write_atomic(path, lambda f: f.write(buf.getvalue().encode()))
    except WriteError as exc:
        raise UserError(f"cannot write {path}: {exc.reason}") from None


def plot_report(rows: Sequence[Row], tasks: Sequence[TaskScores], out: Path, basis: str, confidence: float,
                title: str | None = None) -> Path:
    """Two panels (mean, IQM): a row per task and one for all tasks; estimate, interval, run dots."""
    fig = new_figure(out, figsize=(10.0, 1.2 + 0.45 * len(rows)))
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))[::-1]
    by_label = {t.label: t.scores for t in tasks}
    for ax, stat, name in zip(axes, STATISTICS, ("mean", "interquartile mean (IQM)")):
        for yi, r in zip(y, rows):
            color = "C3" if r.task == ALL_TASKS else "C0"
            ax.plot([r.low[stat], r.high[stat]], [yi, yi], color=color, linewidth=6, alpha=0.35,
                    solid_capstyle="butt")
            ax.plot([r.point[stat]], [yi], "|", color=color, markersize=14, markeredgewidth=2)
            dots = by_label.get(r.task, np.concatenate([t.scores for t in tasks]) if r.task == ALL_TASKS else [])
            ax.plot(dots, np.full(len(dots), yi), ".", color="0.25", markersize=4)
        ax.set_title(name)
        ax.set_xlabel(f"return ({basis})")
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(y, [r.task for r in rows])
    fig.suptitle(title or f"{confidence * 100:g}% stratified bootstrap confidence intervals; dots: runs")
    fig.tight_layout()
    return save_figure(fig, out)


def report(paths: Sequence[Path | str], out: Path | str, last: int = 1, reps: int = 10000,
           confidence: float = 0.95, seed: int = 0, table: Path | str | None = None,
           title: str | None = None, by_name: bool = False) -> tuple[list[Row], Path, Path]:
    """Find the runs, estimate, write figure and CSV; returns (rows, figure, csv)."""
    out = Path(out)
    new_figure(out)  # refuse a bad image type before any work
    tasks = task_scores(find_run_dirs(paths), last, by_name)
    basis = "final evaluation" if last == 1 else f"mean of the last {last} evaluations"
    rows = interval_estimates(tasks, reps, confidence, seed)
    figure = plot_report(rows, tasks, out, basis, confidence, title)
    table_path = write_csv(rows, basis, Path(table) if table is not None else out.with_suffix(".csv"))
    print(markdown_table(rows, basis, confidence))
    if len({len(t.scores) for t in tasks}) > 1:
        counts = ", ".join(f"{t.label}: {len(t.scores)}" for t in tasks)
        print(f"across tasks: the tasks have different numbers of runs ({counts}); each run weighs one over "
              "its task's runs, so every task counts once")
    return rows, figure, table_path


def main(argv: Sequence[str] | None = None, prog: str = "python -m pixel_ddpg.report") -> None:
    parser = ArgParser(prog=prog, description="Mean and IQM with bootstrap confidence intervals over a sweep's runs.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="DIR", help="sweep dirs or run dirs (eval.csv below)")
    parser.add_argument("--out", type=Path, default=Path("report.png"), help="figure (default: report.png)")
    parser.add_argument("--table", type=Path, default=None, help="CSV table (default: the figure's name, .csv)")
    parser.add_argument("--last", type=int, default=1,
                        help="a run's score: mean return of its last N evaluations (default 1: the final one)")
    parser.add_argument("--reps", type=int, default=10000,
                        help="bootstrap resamples (default 10000; rliable's own default, 50000, takes ~10 s a task)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval size (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap random seed")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--group-by", choices=("config", "name"), default="config",
                        help="config: runs whose configs differ only in the seed are one task; name: run dirs "
                             "<name>-seed<N> of one name are (seeds from code versions whose configs differ in keys added since)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        _, figure, table = report(args.paths, args.out, last=args.last, reps=args.reps, confidence=args.confidence,
                                  seed=args.seed, table=args.table, title=args.title,
                                  by_name=args.group_by == "name")
    except UserError as exc:
        fail(str(exc))
        return
    print(f"wrote {figure} and {table}")


if __name__ == "__main__":
    main()
