"""Resolving ``device``, ``amp`` and ``compile`` settings once, before anything is allocated."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from envs.errors import ConfigError
from pixel_ddpg.config import UserError

_SWITCH = {"auto": None, True: True, False: False, "true": True, "false": False}


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


def _switch(value: object, key: str) -> bool | None:
    if value not in _SWITCH:
        raise ConfigError(f"{key}={value!r} must be one of ['auto', true, false]")
    return _SWITCH[value]  # type: ignore[index]


@dataclass(frozen=True)
class Precision:
    """What the learner runs with: device, autocast dtype (None: fp32) and compile."""

    device: torch.device
    amp_dtype: torch.dtype | None
    compile: bool

    @property
    def needs_scaler(self) -> bool:
        return self.amp_dtype == torch.float16


def resolve_precision(device: str, amp: object = "auto", amp_dtype: str = "bfloat16", compile: object = "auto") -> Precision:
    """bf16 autocast and torch.compile default on for CUDA, off on CPU (both work on CPU)."""
    dev = resolve_device(device)
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if str(amp_dtype) not in dtypes:
        raise ConfigError(f"amp_dtype={amp_dtype!r} must be one of {list(dtypes)}")
    use_amp = _switch(amp, "amp")
    use_compile = _switch(compile, "compile")
    on_cuda = dev.type == "cuda"
    return Precision(
        device=dev,
        amp_dtype=dtypes[str(amp_dtype)] if (on_cuda if use_amp is None else use_amp) else None,
        compile=on_cuda if use_compile is None else use_compile,
    )


def set_cpu_threads(device: torch.device, threads: object = "auto") -> int:
    """Fix torch's intra-op threads when learning on the CPU; returns the count in force.

    OpenMP workers spin while EnvPool's threads step the envs on the same cores; on 2 cores a
    state update went from 3.4 ms (1 thread) to 310 ms (2 threads) under that load. ``auto``
    therefore uses 1 thread on CPU and leaves CUDA runs alone.
    """
    if threads == "auto":
        if device.type != "cpu":
            return torch.get_num_threads()
        threads = 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"torch_threads={threads!r} must be auto or a positive whole number")
    torch.set_num_threads(threads)
    return threads
