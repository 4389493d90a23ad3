"""Figures from run dirs and eval dirs: learning curves, the critic's Q against the return, aggregates.

``python -m pixel_ddpg.plot [curves] RUN_DIR... [--out curve.png] [--label-by env|name|seed|dir] [--title T]
[--reference LABEL=RETURN ...]``: evaluation return against env frames, from the ``eval.csv`` of run
dirs (the default subcommand).

``python -m pixel_ddpg.plot q EVAL... [--out q.png] [--returns observed|bootstrapped] [--steps
all|tail-negligible]``: the DDPG paper's Figure 3 from evaluate's ``q_record.npz`` files, one
colour per checkpoint (:func:`plot_q`).

``python -m pixel_ddpg.plot report RUN_DIR_OR_SWEEP... [--out report.png]``: mean and IQM with
bootstrap confidence intervals per task and across tasks (:mod:`pixel_ddpg.report`).

Why argparse and not Hydra: this command takes paths, not a config to compose.

Grouping (``--label-by env``, the default): runs whose configs are equal except for the seed
are one curve, the mean over seeds on a common frame grid with a shaded min–max band across
seeds. A run's config is its ``.hydra/config.yaml`` (else the ``config.yaml`` the trainer
writes beside it); keys that do not change what is learned (:data:`pixel_ddpg.rundir.IGNORED_KEYS`: seed, run
length, logging, checkpoints, device, threads, compile) are left out of the comparison. A run
dir with no config is grouped by its name with a trailing ``-seed<N>`` removed (Hydra's
multirun subdir ``<env>-<obs>-seed<N>``), or else by its parent folder's name (a single run's
``runs/<env>-<obs>/<time>``). The seeds of a group are compared on the frames that all of them
reached: a curve stops where its shortest seed stopped. A group of one run is drawn as that
run's line with its own ±``return_std`` band (the spread over its evaluation episodes).
``--label-by name`` draws the same mean and band, grouping by the dir name alone with a trailing
``-seed<N>`` removed: for seeds run by different versions of the code, whose configs differ in
keys added since or in how a value was given (``agent.noise.sigma=0.3`` or the env group's), so
the name is the record of what a run is. ``--label-by seed`` and ``--label-by dir`` draw every run on its own (with its ±std band),
labelled by its group and seed, or by its dir name.

Errors (no ``eval.csv``, an empty or corrupt one, an output that cannot be written) are one
line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pixel_ddpg.config import ArgParser, fail
from pixel_ddpg.errors import UserError
from pixel_ddpg.figures import group_labels, new_figure, save_figure
from pixel_ddpg.rundir import Run, load_run

LABEL_BY = ("env", "name", "seed", "dir")


def _seed_band(runs: list[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and min/max over seeds, each seed interpolated onto the frames all seeds reached."""
    lo = max(r.frame[0] for r in runs)
    hi = min(r.frame[-1] for r in runs)
    if lo > hi:
        names = ", ".join(str(r.path) for r in runs)
        raise UserError(f"the seeds {names} have no frames in common, so they cannot be averaged; plot them with --label-by seed")
    grid = np.unique(np.concatenate([r.frame for r in runs]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    curves = np.stack([np.interp(grid, r.frame, r.mean) for r in runs])
    return grid, curves.mean(axis=0), curves.min(axis=0), curves.max(axis=0)


def plot_runs(
    run_dirs: Sequence[Path | str],
    out: Path | str,
    label_by: str = "env",
    title: str | None = None,
    references: Sequence[tuple[str, float]] = (),
) -> Path:
    """Write a PNG of evaluation return against env frames for ``run_dirs``; returns ``out``.

    ``references``: (label, return) pairs drawn as dashed horizontal lines, such as a random
    policy's return, so a curve reads against what learning has to beat.

    Shared by ``python -m pixel_ddpg.plot`` and the evaluate command. Raises :class:`UserError`
    for a run dir without a readable ``eval.csv`` or an output that cannot be written.
    """
    from matplotlib.ticker import EngFormatter

    if label_by not in LABEL_BY:
        raise UserError(f"label_by={label_by!r} is not one of {', '.join(LABEL_BY)}")
    if not run_dirs:
        raise UserError("no run dirs given")
    seen: set[Path] = set()
    runs: list[Run] = []
    for d in map(Path, run_dirs):
        if d.resolve() not in seen:
            seen.add(d.resolve())
            runs.append(load_run(d, by_name=label_by == "name"))
    out = Path(out)

    fig = new_figure(out)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)
    labels = group_labels(groups)

    def single(run: Run, label: str, color: str) -> None:
        marker = "o" if len(run.frame) < 20 else None
        ax.plot(run.frame, run.mean, color=color, label=label, marker=marker, markersize=3)
        ax.fill_between(run.frame, run.mean - run.std, run.mean + run.std, color=color, alpha=0.2, linewidth=0)

    if label_by in ("env", "name"):
        for color, (g, members) in zip(colors, groups.items()):
            if len(members) == 1:
                single(members[0], f"{labels[g]} (±std over episodes)", color)
                continue
            grid, mean, low, high = _seed_band(members)
            marker = "o" if len(grid) < 20 else None
            ax.plot(grid, mean, color=color, marker=marker, markersize=3,
                    label=f"{labels[g]} (mean of {len(members)} seeds, min–max)")
            ax.fill_between(grid, low, high, color=color, alpha=0.2, linewidth=0)
    else:
        names = [r.path.resolve().name for r in runs]
        for color, r in zip(colors, runs):
            if label_by == "seed":
                label = f"{labels[r.group]} seed {r.seed if r.seed is not None else '?'}"
            else:
                label = r.path.name if names.count(r.path.resolve().name) == 1 else str(r.path)
            single(r, label, color)

    for i, (label, value) in enumerate(references):
        ax.axhline(value, color="0.35", linestyle=("--", ":", "-.")[i % 3], linewidth=1, label=f"{label} ({value:g})")

    envs = sorted({labels[r.group] for r in runs})
    ax.set_title(title or ("Evaluation return: " + ", ".join(envs) if len(envs) <= 2 else "Evaluation return"))
    ax.set_xlabel("env frames (agent steps × action repeat)")
    ax.set_ylabel("episode return (mean over eval episodes)")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()

    save_figure(fig, out)
    return out


Q_RETURNS = ("observed", "bootstrapped")
Q_STEPS = ("all", "tail-negligible")


def plot_q(
    sources: Sequence[Path | str],
    out: Path | str,
    returns: str = "observed",
    steps: str = "all",
    tolerance: float = 0.01,
    title: str | None = None,
) -> Path:
    """The DDPG paper's Figure 3: the critic's Q(s, a) against the return that followed, one
    colour per checkpoint, with the identity line; returns ``out``.

    ``sources``: eval dirs holding ``q_record.npz`` (or the files). ``returns``: ``observed``
    (discounted return to the episode's end) or ``bootstrapped`` (plus γ^{T−t} Q1(s_T, μ(s_T))
    after a time limit); ``steps``: ``all`` or ``tail-negligible`` (only steps whose unobserved
    tail weighs γ^{T−t} < ``tolerance``). See :mod:`pixel_ddpg.qestimate`.
    """
    from pixel_ddpg.qestimate import check_tolerance, compare, load_record, negligible_tail

    if returns not in Q_RETURNS:
        raise UserError(f"returns={returns!r} is not one of {', '.join(Q_RETURNS)}")
    if steps not in Q_STEPS:
        raise UserError(f"steps={steps!r} is not one of {', '.join(Q_STEPS)}")
    tolerance = check_tolerance(tolerance)
    if not sources:
        raise UserError("no eval dirs or q_record.npz files given")
    out = Path(out)
    seen: set[Path] = set()
    records = []
    for src in map(Path, sources):
        if src.resolve() not in seen:
            seen.add(src.resolve())
            records.append((src, load_record(src)))
    records.sort(key=lambda sr: int(sr[1].meta.get("checkpoint_frame", 0)))
    fig = new_figure(out)
    ax = fig.add_subplot()
    names = [f"{Path(str(r.meta.get('checkpoint', '?'))).name} @ {int(r.meta.get('checkpoint_frame', 0)):,} frames"
             for _, r in records]
    lo, hi, drawn = math.inf, -math.inf, 0
    for i, ((src, r), name) in enumerate(zip(records, names)):
        x = r.bootstrapped if returns == "bootstrapped" else r.ret
        y = r.q
        if steps == "tail-negligible":
            keep = negligible_tail(r, tolerance)
            x, y = x[keep], y[keep]
        if names.count(name) > 1:
            name = f"{name} ({src})"
        c = compare(y, x)
        if not c["steps"]:
            ax.scatter([], [], color=f"C{i % 10}", label=f"{name}: no steps")
            continue
        corr = "n/a" if c["correlation"] is None else f"{c['correlation']:.2f}"
        ax.scatter(x, y, s=6, alpha=0.4, linewidths=0, color=f"C{i % 10}",
                   label=f"{name}: bias {c['bias']:+.1f}, r {corr}, {c['steps']} steps")
        lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
        drawn += 1
    if not drawn:
        raise UserError(f"no steps to draw with --steps {steps}: every step's unobserved tail weighs gamma^k >= "
                        f"{tolerance} (episodes shorter than the horizon); use --steps all or --returns bootstrapped")
    pad = 0.02 * (hi - lo) or 1.0
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.2", linestyle="--", linewidth=1, label="Q = return")
    gammas = sorted({r.gamma for _, r in records})
    g = ", ".join(f"{v:g}" for v in gammas)
    xlabel = f"observed discounted return from the step (γ={g})"
    if returns == "bootstrapped":
        xlabel += " + γ^(T−t) Q1(s_T, μ(s_T)) after a time limit"
    ax.set_xlabel(xlabel + (f"; steps with tail weight < {tolerance:g}" if steps == "tail-negligible" else ""))
    ax.set_ylabel("critic's estimate Q1(s, a)")
    envs = sorted({f"{r.meta.get('env', '?')} {r.meta.get('obs', '?')}" for _, r in records})
    ax.set_title(title or "Estimated Q vs observed return: " + ", ".join(envs))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small", markerscale=2)
    fig.tight_layout()
    return save_figure(fig, out)


def _reference(text: str) -> tuple[str, float]:
    label, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not label.strip() or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r} is not LABEL=RETURN (a label and a finite number)")
    return label.strip(), number


def _main_q(argv: Sequence[str]) -> None:
    parser = ArgParser(prog="python -m pixel_ddpg.plot q",
                     description="The critic's Q against the observed return (DDPG paper, Figure 3).")
    parser.add_argument("sources", nargs="+", type=Path, metavar="EVAL",
                        help="eval dirs holding q_record.npz (from evaluate), or the files; one colour each")
    parser.add_argument("--out", type=Path, default=Path("q.png"), help="image to write (default: q.png)")
    parser.add_argument("--returns", choices=Q_RETURNS, default="observed",
                        help="observed: discounted return to the episode's end; bootstrapped: plus the critic's "
                             "value of the last state after a time limit")
    parser.add_argument("--steps", choices=Q_STEPS, default="all",
                        help="tail-negligible: only steps far enough from the time limit that the unseen tail "
                             "weighs gamma^k < --tolerance")
    parser.add_argument("--tolerance", type=float, default=0.01, help="tail weight for --steps tail-negligible")
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args(argv)
    _write_figure(lambda: plot_q(args.sources, args.out, returns=args.returns, steps=args.steps,
                                 tolerance=args.tolerance, title=args.title))


def _write_figure(draw: Callable[[], Path]) -> None:
    """Run a subcommand's drawing: its path on stdout, or one ``error:`` line and exit code 2."""
    try:
        out = draw()
    except UserError as exc:
        fail(str(exc))
        return
    print(f"wrote {out}")


def _main_curves(argv: Sequence[str]) -> None:
    parser = ArgParser(prog="python -m pixel_ddpg.plot", description="Plot evaluation return against env frames.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run dirs holding eval.csv")
    parser.add_argument("--out", type=Path, default=Path("curve.png"), help="image to write (default: curve.png)")
    parser.add_argument("--label-by", choices=LABEL_BY, default="env",
                        help="env: seeds of one config as mean and min-max band; name: the same, seeds being dirs "
                             "<name>-seed<N> of one name; seed/dir: every run on its own")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--reference", action="append", default=[], type=_reference, metavar="LABEL=RETURN",
                        help="a dashed line at a return, e.g. --reference 'random policy=303' (repeatable)")
    args = parser.parse_args(argv)
    _write_figure(lambda: plot_runs(args.run_dirs, args.out, label_by=args.label_by, title=args.title,
                                    references=args.reference))


def _main_report(argv: Sequence[str]) -> None:
    from pixel_ddpg.report import main as report_main

    report_main(argv, prog="python -m pixel_ddpg.plot report")


SUBCOMMANDS = {"curves": _main_curves, "q": _main_q, "report": _main_report}


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry: ``python -m pixel_ddpg.plot [curves] RUN_DIR...``, ``... q EVAL...``,
    ``... report RUN_DIR...``. Without a subcommand the arguments are run dirs (curves); a run dir
    literally named ``q``, ``report`` or ``curves`` is given as ``./q``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        SUBCOMMANDS[args[0]](args[1:])
    else:
        _main_curves(args)

if __name__ == "__main__":
    main(sys.argv[1:])
