"""What a run writes as it goes: CSV files, TensorBoard events and a progress bar; and the lock
that keeps a run dir to one run.

CSV rows are keyed by ``frame``. On resume, rows past the checkpoint's frame (written after
the last checkpoint, before the run stopped) are dropped, so a resumed run appends with no
duplicate rows. A row reaches the file in one unbuffered write, and a write that fails (a full
disk) is cut back off; a last line torn by a kill -9 is dropped when the file is opened again.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from pixel_ddpg.errors import UserError
from pixel_ddpg.rundir import EVAL_CSV, LOCK_FILE, TB_DIR, TRAIN_CSV, write_bytes_atomic, write_error

TRAIN_FIELDS = ("frame", "step", "episodes", "episode_return", "episode_return_max", "rewarded", "critic_loss",
                "actor_loss", "q", "target_q", "feat_norm", "dead_ch", "pre_tanh", "sat_frac", "updates", "fps", "wall_s")
EVAL_FIELDS = ("frame", "step", "return_mean", "return_std", "episodes", "length_mean", "wall_s")


class CsvLog:
    """An append-only CSV with a fixed header, resumable at a frame."""

    def __init__(self, path: Path, fields: Sequence[str], resume_frame: int | None = None) -> None:
        self.path = Path(path)
        self.fields = tuple(fields)
        if self.path.exists():
            self._repair(resume_frame)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc, "nothing was written to it") from None
        if os.fstat(self._fd).st_size == 0:
            self._append(self._line(dict(zip(self.fields, self.fields))))

    def _line(self, row: Mapping[str, object]) -> bytes:
        buf = io.StringIO()
        csv.writer(buf).writerow([_fmt(row.get(k, "")) for k in self.fields])
        return buf.getvalue().encode()

    def _repair(self, resume_frame: int | None) -> None:
        """Drop a torn last line (a kill -9 mid-write) and, on resume, the rows past
        ``resume_frame``; rewrite the file (atomically) only when that changes it."""
        data = self.path.read_bytes()
        lines = [ln + b"\n" for ln in data.split(b"\n")]
        torn = lines.pop() != b"\n"  # what follows the last newline: empty unless a line was cut
        if not lines:
            if torn:
                write_bytes_atomic(b"", self.path)
            return
        header = next(csv.reader([lines[0].decode(errors="replace")]))
        kept = [lines[0]]
        at = header.index("frame") if "frame" in header else None
        for line in lines[1:]:
            values = next(csv.reader([line.decode(errors="replace")]), [])
            if resume_frame is None or at is None or (len(values) > at and int(float(values[at])) <= resume_frame):
                kept.append(line)
        if tuple(header) != self.fields:  # an older header: the same rows under this one
            rows = [dict(zip(header, next(csv.reader([ln.decode(errors="replace")])))) for ln in kept[1:]]
            kept = [self._line(dict(zip(self.fields, self.fields))), *(self._line(r) for r in rows)]
        elif not torn and len(kept) == len(lines):
            return
        write_bytes_atomic(b"".join(kept), self.path)

    def _append(self, data: bytes) -> None:
        """Write ``data`` at the end of the file, all of it or (cut back) none of it."""
        start = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            with contextlib.suppress(OSError):  # best effort: the error below says what matters
                os.ftruncate(self._fd, start)
            raise write_error(self.path, exc, "it keeps every row written before this one") from None

    def write(self, row: Mapping[str, object]) -> None:
        self._append(self._line(row))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RunDirInUse(UserError):
    """Another live run holds the run dir."""


class RunLock:
    """One run per run dir: an exclusive ``flock`` on ``run.lock`` in it, a file that names its
    holder (pid, host, start). The kernel drops the lock when the holder dies, however it dies,
    so a lock left by a killed run is told from a live run's exactly (on one machine; NFS maps
    flock to its own locks). A run that ends removes the file."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the run dir, or raise :class:`RunDirInUse` naming the live run that holds it.
        Returns a warning when it takes over a lock left by a run that died."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise write_error(self.path, exc, "the run did not start") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise self._in_use(holder) from None
            except OSError as exc:
                os.close(fd)
                raise UserError(f"cannot lock {self.path} ({exc.strerror}): this filesystem has no flock; "
                                "choose a run dir on another one") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its holder removed it as we opened it: lock the file that is there now
        previous = _holder(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)
        self._fd = fd
        if previous is None:
            return None
        return (f"warning: {self.run_dir} was left locked by {previous}, which is no longer running "
                "(killed?); taking it over")

    def _in_use(self, holder: str | None) -> RunDirInUse:
        return RunDirInUse(f"{self.run_dir} is in use by a live run ({holder or 'an unknown process'}); one run per "
                           "run dir: wait for it to end (or stop it), or choose another hydra.run.dir=")

    def check_free(self) -> None:
        """Refuse a run dir that a live run holds, without taking it: before Hydra writes its
        own files into the dir (a brief shared lock, dropped on close)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use(_holder(fd)) from None
        except OSError:
            return  # no flock here: acquire() says so
        finally:
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no one locks a file about to go), then unlock."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # a dir that became read-only: the next run takes the lock over
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


def _holder(fd: int) -> str | None:
    """Who a lock file names, in words; None when it names no one (a new file)."""
    raw = os.pread(fd, 4096, 0).strip()
    if not raw:
        return None
    try:
        who = json.loads(raw)
        return f"pid {who['pid']} on {who['host']}, started {who['started']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


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

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside (an evaluation) counts toward neither frames/s nor the ETA: without it the
        first line after the frame-0 evaluation read 0 frames/s and an ETA of an hour for a 2k-frame run."""
        began = self._clock()
        try:
            yield
        finally:
            spent = self._clock() - began
            self._start = (self._start[0] + spent, self._start[1])
            self._line = (self._line[0] + spent, self._line[1])
            if self._bar is not None:
                self._bar.unpause()  # tqdm's own rate restarts from now

    def line(self, frame: int, now: float, **postfix: object) -> str:
        """frames done, frames/s since the last line, ETA at the rate since this process started,
        both over training time only (evaluations run :meth:`paused`)."""
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
        self.train = CsvLog(run_dir / TRAIN_CSV, TRAIN_FIELDS, resume_frame)
        self.eval = CsvLog(run_dir / EVAL_CSV, EVAL_FIELDS, resume_frame)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / TB_DIR), purge_step=resume_frame)
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
