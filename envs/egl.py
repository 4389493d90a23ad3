"""Load the system EGL before EnvPool.

EnvPool's wheel bundles a renamed libEGL, and MuJoCo finds no GL through it unless the
system ``libEGL.so.1`` is already loaded with ``RTLD_GLOBAL``. Without it a pixel env kills
the process (rc=1) with no Python error, so we load it first and fail with a message instead.
"""

from __future__ import annotations

import ctypes
import os
import sys

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


def import_envpool():  # noqa: ANN201 - returns the envpool module
    """Import envpool only after EGL has been given its chance to load."""
    preload_egl()
    import envpool

    return envpool


# Recorded once, when envs is first imported: after envpool, loading EGL is too late.
_ENVPOOL_IMPORTED_FIRST = "envpool" in sys.modules
