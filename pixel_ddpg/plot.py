"""Figures from run dirs and eval dirs: learning curves, the critic's Q against the return, aggregates.

``python -m pixel_ddpg.plot [curves] RUN_DIR... [--out curve.png] [--label-by env|seed|dir] [--title T]
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
writes beside it); keys that do not change what is learned (:data:`IGNORED_KEYS`: seed, run
length, logging, checkpoints, device, threads, compile) are left out of the comparison. A run
dir with no config is grouped by its name with a trailing ``-seed<N>`` removed (Hydra's
multirun subdir ``<env>-<obs>-seed<N>``), or else by its parent folder's name (a single run's
``runs/<env>-<obs>/<time>``). The seeds of a group are compared on the frames that all of them
reached: a curve stops where its shortest seed stopped. A group of one run is drawn as that
run's line with its own ±``return_std`` band (the spread over its evaluation episodes).
``--label-by seed`` and ``--label-by dir`` draw every run on its own (with its ±std band),
labelled by its group and seed, or by its dir name.

Errors (no ``eval.csv``, an empty or corrupt one, an output that cannot be written) are one
line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from pixel_ddpg.config import fail
from pixel_ddpg.errors import UserError

EVAL_CSV = "eval.csv"
REQUIRED_COLUMNS = ("frame", "return_mean", "return_std")
CONFIG_FILES = (Path(".hydra") / "config.yaml", Path("config.yaml"))
# Config keys that do not change what is learned; runs differing only in these (and the seed)
# are seeds of one configuration.
IGNORED_KEYS = ("seed", "resume", "total_frames", "log", "checkpoint", "device", "num_threads", "torch_threads",
                "compile", "provenance")
LABEL_BY = ("env", "seed", "dir")
FIGSIZE = (8.0, 5.0)  # inches
DPI = 100  # so the PNG is 800x500 pixels
_SEED_SUFFIX = re.compile(r"^(?P<name>.*?)[-_]seed(?P<seed>\d+)$")


@dataclass
class Run:
    """One run dir's evaluation curve and what it is a seed of."""

    path: Path
    frame: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    group: str  # runs with equal groups differ only in seed
    label: str  # human name of the group, e.g. "cheetah pixels"
    seed: int | None
    config: dict[str, Any] | None  # flattened, without IGNORED_KEYS


def read_eval_csv(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame, return_mean, return_std) sorted by frame; a missing std (one episode) is 0."""
    path = run_dir / EVAL_CSV
    if not run_dir.is_dir():
        raise UserError(f"run dir {run_dir} " + ("is not a folder" if run_dir.exists() else "does not exist"))
    if not path.is_file():
        raise UserError(f"{run_dir} has no {EVAL_CSV}; is it a pixel_ddpg run dir that has evaluated at least once?")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise UserError(f"{path} is empty")
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise UserError(f"{path} lacks the column(s) {', '.join(missing)} (has {', '.join(header)})")
            rows: dict[float, tuple[float, float]] = {}
            for row in reader:
                line = reader.line_num
                frame = _number(row, "frame", path, line)
                mean = _number(row, "return_mean", path, line)
                std = _number(row, "return_std", path, line, missing_ok=True)
                if not math.isfinite(frame) or not math.isfinite(mean):
                    raise UserError(f"{path} line {line}: frame and return_mean must be finite")
                rows[frame] = (mean, std if math.isfinite(std) else 0.0)  # a repeated frame: the last row wins
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise UserError(f"{path} has a header but no evaluation rows yet")
    frames = np.array(sorted(rows), dtype=np.float64)
    values = np.array([rows[f] for f in frames], dtype=np.float64)
    return frames, values[:, 0], values[:, 1]


def _number(row: dict[str, str | None], key: str, path: Path, line: int, missing_ok: bool = False) -> float:
    text = row.get(key)
    if text is None or text.strip() == "":
        if missing_ok:
            return math.nan
        raise UserError(f"{path} line {line}: no value for {key}")
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{path} line {line}: {key} is {text!r}, not a number") from None


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's composed config as a plain dict, or None if the run dir has none."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for name in CONFIG_FILES:
        path = run_dir / name
        if path.is_file():
            try:
                cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            except (OSError, ValueError, OmegaConfBaseException) as exc:  # yaml errors are ValueErrors
                raise UserError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            if not isinstance(cfg, dict):
                raise UserError(f"{path} is not a config mapping")
            return cfg
    return None


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in _flatten(cfg).items() if k.split(".")[0] not in IGNORED_KEYS}


def load_run(run_dir: Path) -> Run:
    """Read one run dir: its curve, its config group, its seed."""
    frame, mean, std = read_eval_csv(run_dir)
    cfg = read_config(run_dir)
    match = _SEED_SUFFIX.match(run_dir.name)
    if cfg is not None:
        flat = _comparable(cfg)
        group = repr(sorted(flat.items()))
        env, obs = cfg.get("env"), cfg.get("obs")
        label = f"{env.get('name', '?') if isinstance(env, dict) else '?'} {obs.get('type', '?') if isinstance(obs, dict) else '?'}"
        seed = cfg.get("seed")
        seed = int(seed) if isinstance(seed, int) else None
    else:
        label = match["name"] if match else run_dir.resolve().parent.name
        group = f"dir:{label}"
        seed = int(match["seed"]) if match else None
        flat = None
    return Run(run_dir, frame, mean, std, group, label, seed, flat)


def _differences(config: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """``key=value`` for each key where ``config`` differs from ``base``; another agent preset is
    named once (``agent.name=ddpg``), not by every setting the presets differ in."""
    keys = sorted(set(config) | set(base))
    differing = [k for k in keys if repr(config.get(k)) != repr(base.get(k))]
    if "agent.name" in differing:
        differing = ["agent.name"] + [k for k in differing if not k.startswith("agent.")]
    return [f"{k}={config.get(k)}" for k in differing]


def group_labels(groups: dict[str, list[Run]]) -> dict[str, str]:
    """Group labels; groups sharing a label (same env and obs) are named by how their config
    differs from the group with the most seeds (at most 3 keys), which keeps the plain label."""
    labels = {g: runs[0].label for g, runs in groups.items()}
    by_label: dict[str, list[str]] = {}
    for g, label in labels.items():
        by_label.setdefault(label, []).append(g)
    for label, gs in by_label.items():
        if len(gs) < 2:
            continue
        base = max(gs, key=lambda g: len(groups[g]))  # the first of the largest groups
        base_config = groups[base][0].config or {}
        for g in gs:
            if g == base:
                continue
            extra = _differences(groups[g][0].config or {}, base_config)
            shown = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "")
            labels[g] = f"{label} ({shown})" if extra else f"{label} [{groups[g][0].path.parent.name}]"
    return labels


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


def new_figure(out: Path, figsize: tuple[float, float] = FIGSIZE) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend switch), after
    checking that ``out``'s suffix is an image type Agg writes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in canvas.get_supported_filetypes():
        raise UserError(f"cannot write {out}: unknown image type {fmt!r}; use .png")
    return fig


def save_figure(fig: Any, out: Path) -> Path:
    """Write ``fig`` whole to a temporary file, then rename: never half a PNG."""
    fmt = out.suffix.lstrip(".").lower() or "png"
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {out}: folder {out.parent} cannot be created ({exc.strerror or exc})") from None
    try:
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


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
            runs.append(load_run(d))
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

    if label_by == "env":
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


class _Parser(argparse.ArgumentParser):
    """argparse with usage mistakes as one ``error:`` line and exit code 2, like the other commands."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)")
        raise AssertionError("unreachable")


def _main_q(argv: Sequence[str]) -> None:
    parser = _Parser(prog="python -m pixel_ddpg.plot q",
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
    parser = _Parser(prog="python -m pixel_ddpg.plot", description="Plot evaluation return against env frames.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run dirs holding eval.csv")
    parser.add_argument("--out", type=Path, default=Path("curve.png"), help="image to write (default: curve.png)")
    parser.add_argument("--label-by", choices=LABEL_BY, default="env",
                        help="env: seeds of one config as mean and min-max band; seed/dir: every run on its own")
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
