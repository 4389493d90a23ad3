"""scripts/gpu_check.sh --dry-run: the GPU check's steps on the CPU with tiny sizes, so the script
that will first run on a GPU machine has run end to end before it gets there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_check_dry_run_writes_every_figure_to_one_json(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(out.glob("*.log")))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["dry_run"] and result["all_passed"]
    assert list(result["steps"]) == ["gpu_tests", "render", "egl_probe", "benchmark", "cpu_train", "gpu_train",
                                     "eval_gpu_run", "eval_cpu_ckpt"]
    assert result["gpu_run"]["learner"].startswith("learner on cpu") and result["gpu_run"]["eval"]
    for name in ("eval_gpu_run", "eval_cpu_ckpt"):
        assert result["evaluate"][name]["episodes"] == 1 and result["evaluate"][name]["checkpoint_frame"] == 120
    assert set(result["benchmark"]["sweep"]["batch_size"]) == {"4", "8"}
    assert {"standard", "fast"} <= set(result["render"]["stages"]["env_pixels"])  # ms a frame, before the runs
    assert result["egl_probe"]["gl_renderer"] and result["egl_probe"]["make_clear_and_release_thread_ms"] >= 0


def test_gpu_check_refuses_a_machine_without_cuda_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--out", str(tmp_path / "c")],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
