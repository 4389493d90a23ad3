"""What EGL itself costs here, apart from MuJoCo: the device and renderer EGL gives, and the
price of the context switch that EnvPool makes around every frame.

Why: on an H200 (docs/benchmarks.md, "The GPU path") EnvPool rendered one 64-px frame in ~160
ms through NVIDIA's EGL, and several envs did not render in parallel. EnvPool's offscreen
renderer makes its thread's context current before each frame and afterwards releases it with
``eglMakeCurrent(NO_CONTEXT)`` and ``eglReleaseThread()``. This probe times that cycle, the
same cycle without the release, and a context that stays current, with nothing rendered, so
that one run on a GPU machine says whether the cycle is the cost.

    python -m envs.egl_probe [--cycles N] [--out FILE]

prints one JSON object (and writes it to FILE): the EGL vendor and version, the GL vendor and
renderer, whether the device is Mesa's software one, and milliseconds per cycle of each kind:
staying current; make current and clear; that and ``eglReleaseThread``; and a one-pixel clear and
read-back (the sync a frame's readback makes) with the context kept current or released after it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path
from typing import Any

from envs import egl

EGL_NONE = 0x3038
EGL_ALPHA_SIZE, EGL_BLUE_SIZE, EGL_GREEN_SIZE, EGL_RED_SIZE = 0x3021, 0x3022, 0x3023, 0x3024
EGL_DEPTH_SIZE, EGL_STENCIL_SIZE, EGL_SURFACE_TYPE, EGL_RENDERABLE_TYPE = 0x3025, 0x3026, 0x3033, 0x3040
EGL_PBUFFER_BIT, EGL_OPENGL_BIT, EGL_OPENGL_API = 0x0001, 0x0008, 0x30A2
EGL_WIDTH, EGL_HEIGHT, EGL_VENDOR = 0x3057, 0x3056, 0x3053
EGL_PLATFORM_DEVICE_EXT = 0x313F
GL_VENDOR, GL_RENDERER = 0x1F00, 0x1F01
GL_COLOR_BUFFER_BIT, GL_RGB, GL_UNSIGNED_BYTE = 0x4000, 0x1907, 0x1401
NO = ctypes.c_void_p(0)


class ProbeError(RuntimeError):
    """EGL refused a step of the probe; the message names the step."""


def _fn(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    f = getattr(lib, name)
    f.restype, f.argtypes = restype, list(argtypes)
    return f


def _ext(name: str, restype: Any, *argtypes: Any) -> Any:
    f = egl.egl_proc(name, restype, *argtypes)
    if f is None:
        raise ProbeError(f"EGL has no {name}")
    return f


def _display(lib: ctypes.CDLL) -> ctypes.c_void_p:
    """The display of the device EnvPool renders on (:func:`envs.egl.render_device`), else the
    default display."""
    vp = ctypes.c_void_p
    device = egl.render_device()
    platform_display = egl.egl_proc("eglGetPlatformDisplayEXT", vp, ctypes.c_uint, vp, vp)
    if device is not None and platform_display is not None:
        return ctypes.c_void_p(platform_display(EGL_PLATFORM_DEVICE_EXT, device, None))
    return ctypes.c_void_p(_fn(lib, "eglGetDisplay", vp, vp)(None))


def probe(cycles: int = 50) -> dict[str, Any]:
    """Make a 1x1 pbuffer OpenGL context as EnvPool does and time ``cycles`` of each switch."""
    if cycles < 1:
        raise ValueError(f"cycles={cycles} must be at least 1")
    if not egl.preload_egl() or egl._handle is None:
        raise ProbeError(f"cannot load the system EGL library ({egl._error})")
    lib, vp, i = egl._handle, ctypes.c_void_p, ctypes.c_int
    initialize = _fn(lib, "eglInitialize", i, vp, ctypes.POINTER(i), ctypes.POINTER(i))
    choose = _fn(lib, "eglChooseConfig", i, vp, ctypes.POINTER(i), ctypes.POINTER(vp), i, ctypes.POINTER(i))
    bind_api = _fn(lib, "eglBindAPI", i, ctypes.c_uint)
    pbuffer = _fn(lib, "eglCreatePbufferSurface", vp, vp, vp, ctypes.POINTER(i))
    create = _fn(lib, "eglCreateContext", vp, vp, vp, vp, ctypes.POINTER(i))
    make_current = _fn(lib, "eglMakeCurrent", i, vp, vp, vp, vp)
    release_thread = _fn(lib, "eglReleaseThread", i)
    query_string = _fn(lib, "eglQueryString", ctypes.c_char_p, vp, i)
    destroy_context = _fn(lib, "eglDestroyContext", i, vp, vp)
    destroy_surface = _fn(lib, "eglDestroySurface", i, vp, vp)
    terminate = _fn(lib, "eglTerminate", i, vp)

    display = _display(lib)
    major, minor = i(0), i(0)
    if not display.value or not initialize(display, ctypes.byref(major), ctypes.byref(minor)):
        raise ProbeError("eglInitialize failed on the EGL device EnvPool renders on")
    egl_vendor = query_string(display, EGL_VENDOR)
    attribs = (i * 17)(EGL_RED_SIZE, 8, EGL_GREEN_SIZE, 8, EGL_BLUE_SIZE, 8, EGL_ALPHA_SIZE, 8, EGL_DEPTH_SIZE, 24,
                       EGL_STENCIL_SIZE, 8, EGL_SURFACE_TYPE, EGL_PBUFFER_BIT, EGL_RENDERABLE_TYPE, EGL_OPENGL_BIT,
                       EGL_NONE)
    config, n = vp(), i(0)
    if not choose(display, attribs, ctypes.byref(config), 1, ctypes.byref(n)) or n.value < 1:
        raise ProbeError("eglChooseConfig found no pbuffer OpenGL config")
    if not bind_api(EGL_OPENGL_API):
        raise ProbeError("eglBindAPI(EGL_OPENGL_API) failed")
    surface = vp(pbuffer(display, config, (i * 5)(EGL_WIDTH, 1, EGL_HEIGHT, 1, EGL_NONE)))
    context = vp(create(display, config, None, None))
    if not surface.value or not context.value:
        raise ProbeError("could not create the pbuffer surface or the context")
    try:
        if not make_current(display, surface, surface, context):
            raise ProbeError("eglMakeCurrent failed")
        get_string = _ext("glGetString", ctypes.c_char_p, ctypes.c_uint)
        gl_vendor, gl_renderer = get_string(GL_VENDOR), get_string(GL_RENDERER)
        gl_clear = _ext("glClear", None, ctypes.c_uint)
        gl_read = _ext("glReadPixels", None, i, i, i, i, ctypes.c_uint, ctypes.c_uint, vp)
        pixel = (ctypes.c_ubyte * 4)()

        def frame() -> None:  # the smallest draw-and-read-back: the sync a frame's readback makes
            gl_clear(GL_COLOR_BUFFER_BIT)
            gl_read(0, 0, 1, 1, GL_RGB, GL_UNSIGNED_BYTE, ctypes.cast(pixel, vp))

        def timed(body: Any) -> float:
            start = time.perf_counter()
            for _ in range(cycles):
                body()
            return 1000.0 * (time.perf_counter() - start) / cycles

        def stay() -> None:
            make_current(display, surface, surface, context)

        def switch() -> None:
            make_current(display, surface, surface, context)
            make_current(display, NO, NO, NO)

        def switch_and_release() -> None:  # EnvPool's MakeCurrent() ... ClearCurrent() around each frame
            make_current(display, surface, surface, context)
            make_current(display, NO, NO, NO)
            release_thread()

        def frame_current() -> None:
            make_current(display, surface, surface, context)
            frame()

        def frame_released() -> None:  # EnvPool's cycle with a frame inside it
            make_current(display, surface, surface, context)
            frame()
            make_current(display, NO, NO, NO)
            release_thread()

        stay_ms, switch_ms, release_ms = timed(stay), timed(switch), timed(switch_and_release)
        frame_ms, frame_release_ms = timed(frame_current), timed(frame_released)
    finally:
        make_current(display, NO, NO, NO)
        destroy_context(display, context)
        destroy_surface(display, surface)
        terminate(display)
        release_thread()

    def text(b: bytes | None) -> str | None:
        return None if b is None else b.decode(errors="replace")

    return {
        "egl_vendor": text(egl_vendor),
        "egl_version": f"{major.value}.{minor.value}",
        "gl_vendor": text(gl_vendor),
        "gl_renderer": text(gl_renderer),
        "software": egl.software_rendering(),
        "cycles": cycles,
        "stay_current_ms": round(stay_ms, 4),
        "make_and_clear_current_ms": round(switch_ms, 4),
        "make_clear_and_release_thread_ms": round(release_ms, 4),
        "clear_and_read_back_current_ms": round(frame_ms, 4),
        "clear_and_read_back_released_ms": round(frame_release_ms, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.egl_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50, help="timed cycles of each kind (default 50)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    try:
        result = probe(args.cycles)
    except (ProbeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
