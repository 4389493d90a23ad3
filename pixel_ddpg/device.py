"""Resolving ``device``, ``amp``, ``compile`` and thread counts once, before anything is allocated.

The ``auto`` choices follow rules written down here and in docs/benchmarks.md, each based on
a measurement: bf16 autocast only where the hardware runs bf16 natively (without it, bf16 on
an AVX2-only EPYC was 5-8x slower than fp32), ``torch.compile`` where its ~30 s of compiling
pays back, and torch threads from the cores this process may use, leaving EnvPool its share.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sysconfig
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from pixel_ddpg.errors import ConfigError, UserError

if TYPE_CHECKING:
    from envs import EnvSettings

_SWITCH = {"auto": None, True: True, False: False, "true": True, "false": False}
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bf16 math
TIMED_AT_START = "compiled and eager updates to be timed at start-up"  # replaced by the figures
MAX_AUTO_TORCH_THREADS = 16  # plan_threads' cap: a guard, unmeasured past 2 cores


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name} but torch sees no CUDA GPU here; use device=cpu or device=auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device={name!r} is not a device; choose one of ['auto', 'cpu', 'cuda']")


class _NoCudaRuntimeOnCpu(logging.Filter):
    """Drops torch's "No CUDA runtime is found" line: inductor's C++ backend looks for a CUDA
    toolkit when it first compiles, and a CPU run on a machine that has ``nvcc`` but no GPU (or a
    CUDA wheel on a laptop) would print it at start-up as if something were wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


def quiet_cuda_home_warning() -> None:
    """Install :class:`_NoCudaRuntimeOnCpu` once; other cpp_extension warnings still print."""
    log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeOnCpu) for f in log.filters):
        log.addFilter(_NoCudaRuntimeOnCpu())


def _switch(value: object, key: str) -> bool | None:
    if value not in _SWITCH:
        raise ConfigError(f"{key}={value!r} must be one of ['auto', true, false]")
    return _SWITCH[value]  # type: ignore[index]


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty when /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend would call (``$CXX``, else ``g++``), if present.

    Without one, compiling on a CPU fails at the first update; ``compile=auto`` then stays eager.
    """
    name = os.environ.get("CXX") or "g++"
    return shutil.which(name.split()[0]) if name.strip() else None


def triton_missing() -> list[str]:
    """What Triton lacks here to build the launcher of a CUDA kernel ([] when nothing).

    torch.compile on CUDA generates Triton kernels, and Triton compiles a small C launcher for
    each with ``$CC`` (else clang, gcc or cc) against the Python headers (``Python.h``, found
    through sysconfig). A slim container often has neither: the first compiled call would then
    fail at start-up, so ``compile=auto`` checks first.
    """
    missing = []
    if importlib.util.find_spec("triton") is None:
        missing.append("the triton package (pip install triton)")
    cc = os.environ.get("CC", "").strip()
    if cc:
        if shutil.which(cc.split()[0]) is None:
            missing.append(f"the C compiler $CC={cc}")
    elif not any(shutil.which(name) for name in ("clang", "gcc", "cc")):
        missing.append("a C compiler (clang, gcc or cc; apt-get install gcc)")
    include = sysconfig.get_paths().get("include") or ""
    if not os.path.isfile(os.path.join(include, "Python.h")):
        missing.append(f"the Python headers ({include or 'no include dir'}/Python.h; apt-get install python3-dev)")
    return missing


def usable_cores() -> int:
    """Cores this process may run on (``taskset``, cgroups cpusets), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Precision:
    """What the learner runs with: device, autocast dtype (None: fp32) and compile."""

    device: torch.device
    amp_dtype: torch.dtype | None
    compile: bool
    why: str = ""  # one line: what ``auto`` chose and on what grounds
    cuda_graphs: bool = False  # the compiled update replays CUDA graphs (only ever with compile on CUDA)
    timed: bool = False  # compile=auto on a CPU: the trainer times both at start-up and keeps the faster

    def after_timing(self, compiled_s: float, eager_s: float) -> Precision:
        """The precision the start-up timing chose (``timed``), with its figures in ``why``."""
        keep = compiled_s < eager_s
        figures = (f"timed here: compiled {1 / compiled_s:.2f}, eager {1 / eager_s:.2f} updates/s, so "
                   f"{'compiled' if keep else 'eager'}")
        return replace(self, compile=keep, timed=False, why=self.why.replace(TIMED_AT_START, figures))

    @property
    def needs_scaler(self) -> bool:
        return self.amp_dtype == torch.float16

    def describe(self) -> str:
        amp = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.amp_dtype]
        compiled = "compiled with CUDA graphs" if self.cuda_graphs else "compiled"
        return f"{self.device}: {amp}, {compiled if self.compile else 'eager'} ({self.why})"


def native_bf16(device: torch.device, flags: frozenset[str] | None = None) -> tuple[bool, str]:
    """Whether ``device`` does bf16 math in hardware, and the evidence."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA {'with' if ok else 'without'} native bf16"
    flags = cpu_flags() if flags is None else flags
    have = [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]
    return bool(have), (f"CPU has {'+'.join(have)}" if have else f"CPU lacks {' and '.join(NATIVE_BF16_CPU_FLAGS)}")


def resolve_precision(device: str, amp: object = "auto", amp_dtype: str = "bfloat16", compile: object = "auto", *,
                      planned_updates: int | None = None, compile_min_updates: int = 0,
                      flags: frozenset[str] | None = None, cuda_graphs: object = "auto",
                      planned_is_floor: bool = False) -> Precision:
    """``amp=auto``: bf16 only where native; ``compile=auto``: CUDA when Triton has what it needs
    (:func:`triton_missing`), CPU when the run is long enough.

    On a CPU, compiling costs ~30 s up front and then ran the paper update 1.2-1.8x faster
    (AMX Xeon, AVX2 EPYC) but a batch-128 twin-Q update 0.92x as fast on another AVX2 EPYC
    (docs/benchmarks.md), so it pays back, if at all, only past a few thousand updates:
    ``compile_min_updates`` (conf) is that threshold and ``planned_updates`` the run's count
    (None: unknown, compile; ``planned_is_floor``: the count of ``frames_per_update=auto``'s cheapest
    choice, which the start-up timing may raise); above it the returned precision is ``timed``, and the trainer
    times compiled against eager updates on this machine (``DDPGAgent.time_compiled_and_eager``). Without a C++ compiler (:func:`cpu_compiler`) a CPU run
    stays eager. ``cuda_graphs=auto``: on exactly when the update compiles on CUDA, where a small
    update is bound by kernel launches; CUDA graphs do not exist on a CPU.
    """
    dev = resolve_device(device)
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if str(amp_dtype) not in dtypes:
        raise ConfigError(f"amp_dtype={amp_dtype!r} must be one of {list(dtypes)}")
    use_amp = _switch(amp, "amp")
    use_compile = _switch(compile, "compile")
    reasons, timed = [], False
    if use_amp is None:
        native, evidence = native_bf16(dev, flags)
        # fp16 has no native CPU path; on CUDA it is the user's explicit dtype choice
        use_amp = native if str(amp_dtype) == "bfloat16" else dev.type == "cuda"
        reasons.append(f"amp=auto: {evidence}")
    if use_compile is None:
        if dev.type == "cuda":
            missing = triton_missing()
            use_compile = not missing
            reasons.append("compile=auto: on for CUDA" if use_compile else
                           f"compile=auto: eager, Triton cannot compile for CUDA here without {' and '.join(missing)}")
        elif cpu_compiler() is None:
            use_compile = False
            reasons.append(f"compile=auto: no C++ compiler ({os.environ.get('CXX') or 'g++'}) for torch.compile "
                           "on a CPU; install g++ to compile")
        elif planned_updates is not None and planned_updates < compile_min_updates:
            use_compile = False
            none = "no updates planned (the run ends inside its warm-up, or has none left)"
            reasons.append(f"compile=auto: {none}" if planned_updates == 0
                           else f"compile=auto: {planned_updates:,} updates planned, under the "
                                f"{compile_min_updates:,} that repay ~30 s of compiling")
        else:
            # Compiled updates ran 1.2-1.8x faster on some CPUs and 0.92x on another (docs/benchmarks.md):
            # compile, and let the trainer time both on this machine before the first update.
            use_compile, timed = True, True
            floor = "at least " if planned_is_floor else ""
            count = "" if planned_updates is None else f"{floor}{planned_updates:,} updates planned, "
            reasons.append(f"compile=auto: {count}{TIMED_AT_START}")
    elif use_compile and dev.type == "cuda" and (missing := triton_missing()):
        raise UserError(f"compile=true on CUDA needs what Triton compiles with, and this machine lacks "
                        f"{' and '.join(missing)}: install them, or use compile=auto or compile=false")
    elif use_compile and dev.type == "cpu" and cpu_compiler() is None:
        raise UserError(f"compile=true needs a C++ compiler for torch.compile on a CPU ({os.environ.get('CXX') or 'g++'} "
                        "not found): install g++, or use compile=auto or compile=false")
    graphs = _switch(cuda_graphs, "cuda_graphs")
    if graphs and not (use_compile and dev.type == "cuda"):
        raise ConfigError(f"cuda_graphs=true needs compile on CUDA (here: device {dev}, compile "
                          f"{'on' if use_compile else 'off'}); use cuda_graphs=auto or cuda_graphs=false")
    graphs = bool(use_compile and dev.type == "cuda") if graphs is None else graphs
    return Precision(device=dev, amp_dtype=dtypes[str(amp_dtype)] if use_amp else None, compile=bool(use_compile),
                     why="; ".join(reasons) or "set explicitly", cuda_graphs=graphs, timed=timed)


def plan_threads(cores: int, env_threads: int) -> int:
    """torch intra-op threads for ``torch_threads=auto``: the cores EnvPool's threads leave free.

    The learner is the bottleneck on a CPU, so it gets every core but those of the env
    threads, and at least one. The cap ``MAX_AUTO_TORCH_THREADS`` is a guard, not a measured
    optimum (only 1 and 2 cores were measured): a batch-16 update's ops are small. With
    OpenMP's passive wait policy (set by :mod:`pixel_ddpg` before torch loads) idle learner
    threads sleep instead of spinning on the env's cores.
    """
    return max(1, min(cores - max(env_threads, 0), MAX_AUTO_TORCH_THREADS))


def set_cpu_threads(device: torch.device, threads: object = "auto", env_threads: int = 1,
                    cores: int | None = None) -> int:
    """Set torch's intra-op threads; returns the count in force.

    ``auto``: :func:`plan_threads` over :func:`usable_cores`; ``env_threads`` is how many threads
    EnvPool steps with (its own count, or the renderer's one on a software rasterizer).

    On a CPU it also flushes denormal floats to zero (as TensorFlow and XLA do by default): weights
    and Adam moments that an L2 decay drives toward zero turn denormal, and x86 cores compute on
    those many times slower (the paper learner's update fell from 26 to 5 per second at 20k
    frames: docs/results.md). The flag is per thread: torch's intra-op workers inherit it only
    when they start after it, so the trainer, the benchmark and evaluate call this before any
    torch op runs in parallel (a process whose thread pool already runs keeps it in the caller only).
    """
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    if threads == "auto":
        if device.type != "cpu":
            return torch.get_num_threads()
        threads = plan_threads(usable_cores() if cores is None else cores, env_threads)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"torch_threads={threads!r} must be auto or a positive whole number")
    torch.set_num_threads(threads)
    return threads


def resolve_compute(cfg: Any, settings: EnvSettings, planned_updates: int | None,
                    planned_is_floor: bool = False) -> tuple[Precision, int, int]:
    """What a run computes with, from its config: the precision (:func:`resolve_precision`), then
    EnvPool's threads (:meth:`~envs.EnvSettings.envpool_threads`, one on a software rasterizer) and
    torch's (:func:`set_cpu_threads`, which sets them); returns ``(precision, env_threads,
    torch_threads)``. ``planned_updates``: the run's, for ``compile=auto`` (``planned_is_floor``: a
    lower bound, ``frames_per_update=auto``'s cheapest choice).

    The trainer and the benchmark (which times what the trainer would run) both start here.
    Configs saved before ``compile_min_updates``, ``cuda_graphs`` and ``torch_threads`` existed
    (older checkpoints') get the behaviour of that time."""
    from envs.egl import software_rendering

    precision = resolve_precision(cfg.device, cfg.amp, cfg.amp_dtype, cfg.compile, planned_updates=planned_updates,
                                  compile_min_updates=int(cfg.get("compile_min_updates", 0)),
                                  cuda_graphs=cfg.get("cuda_graphs", "auto"), planned_is_floor=planned_is_floor)
    env_threads = settings.envpool_threads(settings.pixels and software_rendering())
    torch_threads = set_cpu_threads(precision.device, cfg.get("torch_threads", "auto"), env_threads=env_threads)
    return precision, env_threads, torch_threads
