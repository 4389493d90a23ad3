"""python -m envs.egl_probe: the EGL device's names and what EnvPool's per-frame context switch
costs, apart from MuJoCo (the H200's ~160 ms frames, docs/benchmarks.md "The GPU path")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("stay_current_ms", "make_and_clear_current_ms", "make_clear_and_release_thread_ms",
           "clear_and_read_back_current_ms", "clear_and_read_back_released_ms")


def probe(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "envs.egl_probe", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_the_probe_names_the_renderer_and_times_each_cycle(tmp_path):
    out = tmp_path / "egl.json"
    proc = probe("--cycles", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result == json.loads(proc.stdout)
    assert result["gl_renderer"] and result["egl_version"] and isinstance(result["software"], bool)
    assert result["cycles"] == 3 and all(result[k] >= 0 for k in TIMINGS)


def test_the_probe_fails_in_one_line_without_egl_or_with_no_cycles():
    proc = probe("--cycles", "2", PIXEL_DDPG_EGL_LIBRARY="libEGL-missing.so.9")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot load the system EGL library (libEGL-missing.so.9")
    proc = probe("--cycles", "0")
    assert proc.returncode == 1 and "cycles=0 must be at least 1" in proc.stderr
