"""What a run writes as it goes: CSV files, TensorBoard events and a progress bar.

CSV rows are keyed by ``frame``. On resume, rows past the checkpoint's frame (written after
the last checkpoint, before the run stopped) are dropped, so a resumed run appends with no
duplicate rows.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

TRAIN_FIELDS = ("frame", "step", "episodes", "episode_return", "critic_loss", "actor_loss", "q",
                "target_q", "feat_norm", "dead_ch", "pre_tanh", "sat_frac", "updates", "fps", "wall_s")
EVAL_FIELDS = ("frame", "step", "return_mean", "return_std", "episodes", "length_mean", "wall_s")


class CsvLog:
    """An append-only CSV with a fixed header, resumable at a frame."""

    def __init__(self, path: Path, fields: Sequence[str], resume_frame: int | None = None) -> None:
        self.path = Path(path)
        self.fields = tuple(fields)
        if resume_frame is not None and self.path.exists():
            self._truncate_after(resume_frame)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore")
        if new:
            self._writer.writeheader()
            self._file.flush()

    def _truncate_after(self, frame: int) -> None:
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(float(r["frame"])) <= frame]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: Mapping[str, object]) -> None:
        self._writer.writerow({k: _fmt(row.get(k, "")) for k in self.fields})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """A tqdm bar over env frames on a terminal; elsewhere (a log file, a pipe) one line every
    ``every_s`` seconds, so a run started with nohup shows signs of life in its log."""

    def __init__(self, total: int, initial: int, enabled: object = "auto", every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        auto = enabled in ("auto", None)
        self._bar = None
        self.lines = auto and not sys.stderr.isatty()  # the bar goes to stderr, lines to stdout
        if (auto and not self.lines) or (not auto and bool(enabled)):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="frame", unit_scale=True, dynamic_ncols=True,
                             smoothing=0.05)
        self.total, self.every_s, self._clock = total, float(every_s), clock
        self._last = initial
        self._start = (clock(), initial)
        self._line = (clock(), initial)  # time and frame of the last line printed
        self._noted = clock()

    def update(self, frame: int, **postfix: object) -> None:
        if self._bar is not None:
            self._bar.update(frame - self._last)
            if postfix:
                self._bar.set_postfix({k: v for k, v in postfix.items() if v is not None}, refresh=False)
        elif self.lines:
            now = self._clock()
            if now - self._line[0] >= self.every_s:
                print(self.line(frame, now, **postfix), flush=True)
                self._line = (now, frame)
        self._last = frame

    def line(self, frame: int, now: float, **postfix: object) -> str:
        """frames done, frames/s since the last line, ETA at the rate since this process started."""
        rate = (frame - self._line[1]) / max(now - self._line[0], 1e-9)
        overall = (frame - self._start[1]) / max(now - self._start[0], 1e-9)
        eta = _clock((self.total - frame) / overall) if overall > 0 else "?"
        extra = "".join(f" | {k.replace('_', ' ')} {v}" for k, v in postfix.items() if v is not None)
        return (f"frames {frame:,}/{self.total:,} ({100 * frame / max(self.total, 1):.1f}%) | {rate:,.0f} frames/s"
                f" | ETA {eta}{extra}")

    def note(self, message: str) -> None:
        """A status that changes often (evaluation progress): throttled to one line per ``every_s``."""
        if self._bar is not None:
            self._bar.set_postfix_str(message)
        elif self.lines and self._clock() - self._noted >= self.every_s:
            print(message, flush=True)
            self._noted = self._clock()

    def write(self, message: str) -> None:
        if self._bar is None:
            print(message, flush=True)
        else:
            self._bar.write(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class RunLog:
    """train.csv, eval.csv, TensorBoard under tb/, and the progress bar of one run dir."""

    def __init__(self, run_dir: Path, *, total_frames: int, resume_frame: int | None, tensorboard: bool,
                 progress: object, progress_every_s: float = 10.0) -> None:
        self.train = CsvLog(run_dir / "train.csv", TRAIN_FIELDS, resume_frame)
        self.eval = CsvLog(run_dir / "eval.csv", EVAL_FIELDS, resume_frame)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=resume_frame)
        self.progress = Progress(total_frames, resume_frame or 0, progress, progress_every_s)

    def scalars(self, prefix: str, row: Mapping[str, object], frame: int) -> None:
        if self.tb is None:
            return
        for key, value in row.items():
            if key not in ("frame", "step") and isinstance(value, (int, float)) and not math.isnan(value):
                self.tb.add_scalar(f"{prefix}/{key}", value, frame)

    def close(self) -> None:
        self.progress.close()
        self.train.close()
        self.eval.close()
        if self.tb is not None:
            self.tb.close()
