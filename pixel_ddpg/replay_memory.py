"""How much replay a run gets, decided before anything is allocated, and what other runs on
this machine have already claimed.

Bytes per stored step (:func:`bytes_per_transition`), the free memory where the buffer will live,
the capacity a config asks for (:func:`plan_capacity`: ``auto`` or a number, refused in one line
when it cannot fit) and a registry of the CPU replays of other live pixel_ddpg processes
(:func:`reserved_by_others`), since host memory is claimed lazily and their buffers do not show
as used yet. :class:`~pixel_ddpg.replay.ReplayBuffer` allocates what this module planned.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from envs.pool import EnvSpec
from pixel_ddpg.errors import ConfigError, UserError

GIB = 1024**3


def bytes_per_transition(spec: EnvSpec) -> int:
    """Bytes one stored step takes: new frame + float32 action + float32 reward + flag byte."""
    frame_dtype = np.uint8 if spec.pixels else np.float32
    frame = int(np.prod(spec.frame_shape)) * np.dtype(frame_dtype).itemsize
    return frame + 4 * spec.action_dim + 4 + 1


def estimate_bytes(spec: EnvSpec, capacity: int) -> int:
    """Exact bytes the buffer's tensors will take for ``capacity`` (rounded down to whole slots)."""
    slots = int(capacity) // spec.num_envs
    return slots * spec.num_envs * bytes_per_transition(spec)


def free_bytes(device: torch.device | str) -> int:
    """Free memory where the buffer will live: CUDA ``mem_get_info``, else ``MemAvailable``."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def min_slots(spec: EnvSpec, nstep: int) -> int:
    """Fewest slots per env that can ever hold a sampleable transition (history + n steps)."""
    return spec.frame_stack + nstep


def _parse_capacity(requested: int | str) -> int | None:
    """``auto`` → None; a whole number (int, or a string/float Hydra may hand over) → int."""
    bad = ConfigError(f"replay.capacity={requested!r} must be a whole number of transitions or auto")
    if isinstance(requested, bool):
        raise bad
    if isinstance(requested, str):
        if requested.strip() == "auto":
            return None
        try:
            requested = float(requested)
        except ValueError:
            raise bad from None
    if isinstance(requested, float):
        if not requested.is_integer():
            raise bad
        requested = int(requested)
    if not isinstance(requested, int):
        raise bad
    return requested


def run_transitions(total_frames: int, spec: EnvSpec) -> int:
    """Most transitions a run of ``total_frames`` can store: one slot per env per agent step,
    plus the reset step (frames count agent steps x action repeat, summed over envs)."""
    steps = -(-int(total_frames) // (spec.num_envs * spec.action_repeat))
    return (steps + 1) * spec.num_envs


def plan_capacity(
    requested: int | str,
    spec: EnvSpec,
    device: torch.device | str,
    *,
    max_transitions: int = 1_000_000,
    memory_fraction: float = 0.5,
    nstep: int = 1,
    run_transitions: int | None = None,
) -> tuple[int, int]:
    """Decide the capacity before anything is allocated; returns ``(capacity, bytes)``.

    ``auto``: min(max_transitions, ``run_transitions`` (what the run will collect), what fits in
    ``memory_fraction`` of the free memory less what other live runs reserved). An explicit
    number that does not fit in the free memory is a :class:`UserError` naming the override
    that would. Capacity is rounded down to whole slots (a multiple of num_envs).
    """
    if not 0.0 < float(memory_fraction) <= 1.0:
        raise ConfigError(f"replay.memory_fraction={memory_fraction} must be in (0, 1]")
    device = torch.device(device)
    n = spec.num_envs
    per = bytes_per_transition(spec)
    free = free_bytes(device) - reserved_by_others(device)
    fit = int(max(free, 0) * float(memory_fraction)) // per // n * n
    wanted = _parse_capacity(requested)
    least = min_slots(spec, nstep) * n
    if wanted is None:
        capacity = int(max_transitions) // n * n
        if run_transitions is not None:
            capacity = min(capacity, max(-(-int(run_transitions) // n) * n, least))
        capacity = min(capacity, fit)
        if capacity < least:
            raise UserError(
                f"replay.capacity=auto: only {free / GIB:.2f} GiB free on {device}, room for {fit} transitions "
                f"of {per} B; at least {least} are needed (free memory or use a smaller num_envs)"
            )
    else:
        capacity = wanted // n * n
        if capacity < least:
            raise ConfigError(
                f"replay.capacity={wanted} is too small: it needs at least {least} transitions "
                f"({min_slots(spec, nstep)} per env x {n} envs)"
            )
        check_fits(capacity, spec, device, free, fit)
    return capacity, estimate_bytes(spec, capacity)


# Host memory is claimed lazily (torch.empty pages are touched as the buffer fills), so a run
# started beside another sees the other's replay as free. Each CPU buffer records its size in
# a file named by its pid; planning subtracts those of other live processes (counting pages
# they already touched twice: on the safe side).
def _registry() -> Path:
    return Path(tempfile.gettempdir()) / f"pixel_ddpg-replay-{os.getuid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reserved_by_others(device: torch.device | str) -> int:
    """Bytes of CPU replay other live pixel_ddpg processes have planned (0 for CUDA, which
    allocates at once and so shows in ``mem_get_info``)."""
    if torch.device(device).type != "cpu" or not _registry().is_dir():
        return 0
    total = 0
    for f in _registry().glob("*.bytes"):
        try:
            pid, nbytes = int(f.stem), int(f.read_text())
        except (ValueError, OSError):
            continue
        if pid != os.getpid() and _alive(pid):
            total += nbytes
        elif pid != os.getpid():
            f.unlink(missing_ok=True)
    return total


def reserve(nbytes: int) -> None:
    """Record this process's CPU replay bytes (summed over its buffers) until it exits."""
    global _reserved
    try:
        _registry().mkdir(mode=0o700, exist_ok=True)
        path = _registry() / f"{os.getpid()}.bytes"
        if _reserved == 0:
            atexit.register(path.unlink, missing_ok=True)
        _reserved += nbytes
        path.write_text(str(_reserved))
    except OSError:
        pass  # a read-only temp dir only loses the side-by-side accounting


_reserved = 0


def release(nbytes: int) -> None:
    global _reserved
    _reserved = max(0, _reserved - nbytes)
    try:
        path = _registry() / f"{os.getpid()}.bytes"
        if _reserved:
            path.write_text(str(_reserved))
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def check_fits(capacity: int, spec: EnvSpec, device: torch.device, free: int, fit: int) -> None:
    need = estimate_bytes(spec, capacity)
    if need > free:
        raise UserError(
            f"replay.capacity={capacity} needs {need / GIB:.2f} GiB on {device} but only {free / GIB:.2f} GiB is free; "
            f"use replay.capacity={max(fit, 0)} or replay.capacity=auto"
        )
