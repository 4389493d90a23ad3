"""A run dir's files: their names, the one way a file of ours is written (whole or not at all),
and reading a run back (its evaluation curve and config).

Layout of a run dir::

    config.yaml          the resolved config (and provenance) the run was started with
    .hydra/config.yaml   what Hydra wrote before that
    train.csv, eval.csv  rows keyed by frame (pixel_ddpg.runlog)
    tb/                  TensorBoard events
    checkpoints/         last.pt, best.pt (pixel_ddpg.checkpoint)
    run.lock             held by the live run (pixel_ddpg.runlog.RunLock)
    eval/frame_N/        what evaluate wrote for a checkpoint: eval.json, videos, q_record.npz
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pixel_ddpg.errors import UserError

RUN_CONFIG = "config.yaml"  # the resolved config a run writes in its run dir before it starts
HYDRA_CONFIG = ".hydra/config.yaml"  # what Hydra wrote there before that
TRAIN_CSV = "train.csv"
EVAL_CSV = "eval.csv"
TB_DIR = "tb"
CKPT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
LOCK_FILE = "run.lock"
EVAL_DIR = "eval"  # evaluate's output folders, one per checkpoint
EVAL_JSON = "eval.json"
TMP_MARK = ".tmp-"  # in the name of a file being written: .<name>.tmp-<pid>


# ---------------------------------------------------------------------------- atomic writes
class WriteError(UserError):
    """A file of the run could not be written (full disk, quota, file-size limit, read-only
    folder...): what was there before is intact, and nothing half-written sits under its name.
    ``reason``: the system's word for it (``No space left on device``)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


def write_error(path: Path, exc: OSError, kept: str) -> WriteError:
    """One line for a failed write of ``path``; ``kept`` says what is left as it was."""
    reason = str(exc.strerror or exc)
    return WriteError(f"could not write {path} ({reason}); {kept}", reason)


def temporary_name(path: Path) -> Path:
    """Where ``path`` is written before it is renamed onto its name: a hidden file beside it,
    marked so that :func:`remove_stale_temporaries` finds what a killed process left."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


class _Recording:
    """A file wrapper that keeps the OSError of a failed write: ``torch.save`` turns it into a
    RuntimeError without the errno ("unexpected pos ..."), which would hide a full disk.
    Everything else is the file's own (NumPy and matplotlib look for ``read``, ``seek``...)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.f.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def commit(tmp: Path, path: Path) -> None:
    """Move the finished temporary file ``tmp`` onto ``path`` and make the rename durable (a
    power cut after it must not bring the old file back)."""
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write to a temporary file in the same folder, flush it to disk, then rename: ``path``
    holds either its previous content or the whole new one, after a kill -9 or a full disk too.
    A failed write raises :class:`WriteError` and leaves no temporary file. Returns ``path``."""
    path = Path(path)
    existed = path.exists()
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            recording = _Recording(f)
            try:
                write(recording)  # type: ignore[arg-type]
            except RuntimeError:
                if recording.error is None:
                    raise
                raise recording.error from None
            f.flush()
            os.fsync(f.fileno())
        commit(tmp, path)
    except OSError as exc:
        raise write_error(path, exc, f"{path.name} keeps its previous content" if existed
                          else "nothing was written under that name") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    """``data`` to ``path`` atomically (config.yaml, a repaired CSV, eval.json...)."""
    return write_atomic(path, lambda f: f.write(data))


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files that a killed process left in ``run_dir`` and its checkpoints
    folder. Only the run holding the run dir's lock may call it: no live writer owns them then."""
    removed = []
    for folder in (run_dir, run_dir / CKPT_DIR):
        for tmp in folder.glob(f".*{TMP_MARK}*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


# ---------------------------------------------------------------------------- where things are
def run_dir_of(checkpoint: Path) -> Path:
    """The run dir a checkpoint file belongs to (``<run>/checkpoints/last.pt``, or a file beside it)."""
    return checkpoint.parent.parent if checkpoint.parent.name == CKPT_DIR else checkpoint.parent


def run_config_file(run_dir: Path, hydra_first: bool = False) -> Path | None:
    """The config a run wrote in ``run_dir`` (config.yaml), else the one Hydra wrote before the
    run began (.hydra/config.yaml: a run killed before it wrote its own). ``hydra_first``: the
    other way round (the figures group runs by what Hydra composed)."""
    names = (HYDRA_CONFIG, RUN_CONFIG) if hydra_first else (RUN_CONFIG, HYDRA_CONFIG)
    for name in names:
        if (run_dir / name).is_file():
            return run_dir / name
    return None


# ---------------------------------------------------------------------------- reading a run
REQUIRED_COLUMNS = ("frame", "return_mean", "return_std")
# Config keys that do not change what is learned; runs differing only in these (and the seed)
# are seeds of one configuration.
IGNORED_KEYS = ("seed", "resume", "total_frames", "log", "checkpoint", "device", "num_threads", "torch_threads",
                "compile", "provenance")
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
    """The run's composed config as a plain dict (Hydra's first), or None if the run dir has none."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = run_config_file(run_dir, hydra_first=True)
    if path is None:
        return None
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except (OSError, ValueError, OmegaConfBaseException) as exc:  # yaml errors are ValueErrors
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a config mapping")
    return cfg


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


def load_run(run_dir: Path, by_name: bool = False) -> Run:
    """Read one run dir: its curve, its config group, its seed.

    A run dir with no config is grouped by its name with a trailing ``-seed<N>`` removed (Hydra's
    multirun subdir), or else by its parent folder's name (a single run's ``runs/<env>-<obs>/<time>``).
    ``by_name``: every run is grouped by its name so, its config left out (seeds run by different
    versions of the code, whose configs differ in keys added since); a name without the suffix is
    an error."""
    frame, mean, std = read_eval_csv(run_dir)
    cfg = read_config(run_dir)
    match = _SEED_SUFFIX.match(run_dir.name)
    if by_name and match is None:
        raise UserError(f"grouping by name needs run dirs named <name>-seed<N>; {run_dir} is not")
    if cfg is not None and not by_name:
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
