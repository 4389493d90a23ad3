"""Host-to-device copies that do not make the host wait: one reusable pinned buffer per stream
of data, ``non_blocking`` copies out of it, and an event before the buffer is written again.

A copy from pageable (ordinary) host memory to a GPU is synchronous: the host stalls until it
is done. From page-locked memory it is queued and the host moves on, but the buffer must then
not be overwritten before the copy has read it, hence the event. On a CPU device the same code
runs with an ordinary buffer (pinning needs CUDA) and the copies are plain copies, so the CPU
path is exercised by the tests and gives the same bytes.
"""

from __future__ import annotations

import numpy as np
import torch


class HostStaging:
    """Named reusable host buffers feeding ``device``; one per kind of array (frames, indices...).

    ``pin``: page-locked buffers (None: exactly when ``device`` is CUDA, the only place it helps).
    Not thread-safe per name: each name is used by one thread (the collector, or the learner).
    """

    def __init__(self, device: torch.device, pin: bool | None = None) -> None:
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda" if pin is None else bool(pin)
        self._buffers: dict[str, torch.Tensor] = {}
        self._events: dict[str, torch.cuda.Event] = {}

    def stage(self, name: str, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``array`` copied into the buffer ``name``, once the previous copy out of it has finished.

        The buffer is raw bytes that only grows, viewed as the array's dtype and shape: index
        arrays whose length changes from call to call do not allocate page-locked memory (slow)
        each time."""
        src = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
        nbytes = src.numel() * src.element_size()
        buf = self._buffers.get(name)
        event = self._events.pop(name, None)
        if buf is None or buf.numel() < nbytes:
            # a buffer still being read is kept alive by torch's host allocator until its copy ends
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=self.pin)
            self._buffers[name] = buf
        elif event is not None:
            event.synchronize()  # the device has read the last contents: safe to overwrite
        view = buf[:nbytes].view(src.dtype).view(src.shape)
        view.copy_(src)
        return view

    def _issued(self, name: str) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
            self._events[name] = event

    def upload(self, name: str, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A new device tensor holding ``array`` (a copy even on a CPU device: the buffer is reused)."""
        out = self.stage(name, array).to(self.device, non_blocking=True, copy=True)
        self._issued(name)
        return out

    def copy_into(self, name: str, dst: torch.Tensor, array: np.ndarray | torch.Tensor) -> None:
        """``dst.copy_(array)`` through the buffer ``name``: no temporary device tensor."""
        dst.copy_(self.stage(name, array), non_blocking=True)
        self._issued(name)
