"""Load the system EGL before EnvPool.

EnvPool's wheel bundles a renamed libEGL, and MuJoCo finds no GL through it unless the
system ``libEGL.so.1`` is already loaded with ``RTLD_GLOBAL``. Without it a pixel env kills
the process (rc=1) with no Python error, so we load it first and fail with a message instead.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

from envs.errors import EGLUnavailable

# Overridable for systems that keep EGL under another name; also how the tests simulate a
# machine without it.
EGL_LIBRARY_ENV = "PIXEL_DDPG_EGL_LIBRARY"
DEBIAN_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri"

_handle: ctypes.CDLL | None = None
_error: str | None = None


def preload_egl() -> bool:
    """Try once to load the system EGL globally; return whether it is loaded.

    Safe to call many times. Must run before the first ``import envpool`` to take effect.
    """
    global _handle, _error
    if _handle is not None:
        return True
    if _error is not None:
        return False
    os.environ.setdefault("MUJOCO_GL", "egl")
    name = os.environ.get(EGL_LIBRARY_ENV, "libEGL.so.1")
    try:
        _handle = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        _error = f"{name}: {exc}"
        return False
    return True


def require_egl() -> None:
    """Raise a clear error if pixels cannot be rendered on this machine."""
    if not preload_egl():
        raise EGLUnavailable(
            f"cannot load the system EGL library ({_error}); pixel observations need it for "
            f"headless MuJoCo rendering. On Debian/Ubuntu: apt-get install {DEBIAN_PACKAGES}"
        )
    _load_llvm_users_first()
    if _ENVPOOL_IMPORTED_FIRST:
        raise EGLUnavailable(
            "envpool was imported before pixel_ddpg could load the system libEGL.so.1; import "
            "envs (or pixel_ddpg) before envpool so that headless rendering works"
        )


def _load_llvm_users_first() -> None:
    """Load torch's compiler stack (Triton, with its own LLVM) before Mesa's llvmpipe loads LLVM.

    Measured: once a pixel env has rendered on llvmpipe, the first ``torch._dynamo`` import
    (``Adam(foreach=True)`` does it lazily) segfaults the process. In the other order both work.
    """
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # no torch: nothing to protect
        pass


# EGL_EXT_device_enumeration / EGL_EXT_device_query; Mesa marks its CPU rasterizer's device.
_SOFTWARE_DEVICE_EXTENSION = "EGL_MESA_device_software"
_EGL_EXTENSIONS = 0x3055
_software: bool | None = None


def software_rendering() -> bool:
    """Whether EnvPool's renders will run on a software rasterizer (Mesa llvmpipe).

    Why it matters: Mesa 22.3's llvmpipe (Debian 12) crashes the process (segfault or general
    protection fault in swrast_dri.so) when several GL contexts render at once, which is what
    EnvPool's worker threads do with one context per env: measured, 16 envs on 16 threads died
    within 30-90 s, 4 envs within 7-20 minutes of training; one thread ran 835k frames clean.
    EnvPool renders on the first EGL device (or ``MUJOCO_EGL_DEVICE_ID``); that device is
    checked here. When the answer cannot be had (no device extensions), we say software,
    the safe side.
    """
    global _software
    if _software is None:
        _software = _query_software_device()
    return _software


def _query_software_device() -> bool:
    device = render_device()
    query_string = egl_proc("eglQueryDeviceStringEXT", ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int)
    if device is None or query_string is None:
        return True
    extensions = query_string(device, _EGL_EXTENSIONS) or b""
    return _SOFTWARE_DEVICE_EXTENSION in extensions.decode(errors="replace").split()


def egl_proc(name: str, restype: Any, *argtypes: Any) -> Any:
    """An EGL (or GL) function by name through ``eglGetProcAddress``, or None where the loaded EGL
    lacks it: how the device extensions and their users (:mod:`envs.egl_probe`) reach EGL."""
    if not preload_egl() or _handle is None:
        return None
    get_proc = _handle.eglGetProcAddress
    get_proc.restype, get_proc.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    ptr = get_proc(name.encode())
    return ctypes.CFUNCTYPE(restype, *argtypes)(ptr) if ptr else None


def render_device() -> int | None:
    """The EGL device EnvPool renders on (``MUJOCO_EGL_DEVICE_ID``'s when it names one, else the
    first), as an ``EGLDeviceEXT`` handle; None where EGL cannot enumerate its devices."""
    query_devices = egl_proc("eglQueryDevicesEXT", ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                             ctypes.POINTER(ctypes.c_int))
    if query_devices is None:
        return None
    devices = (ctypes.c_void_p * 16)()
    count = ctypes.c_int(0)
    if not query_devices(16, devices, ctypes.byref(count)) or count.value < 1:
        return None
    selected = os.environ.get("MUJOCO_EGL_DEVICE_ID", "0")
    return devices[int(selected) if selected.isdigit() and int(selected) < count.value else 0]


NVIDIA_CAPABILITIES_ENV = "NVIDIA_DRIVER_CAPABILITIES"


def software_render_warning(cuda: bool, software: bool, capabilities: str | None) -> str | None:
    """The start-up warning for a GPU machine whose renders fall back to the CPU, else None.

    NVIDIA's container runtime mounts its EGL driver only with the ``graphics`` capability;
    without it EGL device 0 is Mesa llvmpipe, which renders on the CPU at ~50 frames/s. The run
    works, slowly, so the user is told what to add. ``capabilities``: the environment's
    ``NVIDIA_DRIVER_CAPABILITIES`` (None: unset, which the runtime reads as ``utility,compute``).
    """
    if not (cuda and software):
        return None
    caps = [c.strip() for c in (capabilities or "").split(",") if c.strip()]
    if "graphics" in caps or "all" in caps:
        cause = (f"{NVIDIA_CAPABILITIES_ENV}={capabilities} asks for graphics, yet no NVIDIA EGL device is "
                 "first: check the driver's EGL files (libEGL_nvidia) are in the container")
    else:
        shown = "unset (utility,compute)" if capabilities is None else f"{capabilities!r}"
        cause = (f"the NVIDIA driver capability `graphics` is missing ({NVIDIA_CAPABILITIES_ENV} is {shown}): "
                 f"start the container with {NVIDIA_CAPABILITIES_ENV}=compute,utility,graphics (or all)")
    return (f"warning: CUDA is here but EGL renders in software (Mesa llvmpipe, on the CPU, ~50 frames/s); "
            f"{cause} to render on the GPU")


def import_envpool():  # noqa: ANN201 - returns the envpool module
    """Import envpool only after EGL has been given its chance to load."""
    preload_egl()
    import envpool

    return envpool


# Recorded once, when envs is first imported: after envpool, loading EGL is too late.
_ENVPOOL_IMPORTED_FIRST = "envpool" in sys.modules
