"""What a first GPU run is told at start-up (issue 27), on a CPU by mocking what the GPU machine
would report: compile=auto without what Triton needs, and EGL rendering in software beside CUDA."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from envs.egl import software_render_warning
from pixel_ddpg import device
from pixel_ddpg.errors import UserError
from pixel_ddpg.device import resolve_precision, triton_missing
from tests.conftest import ROOT, TINY

LACKS = ["a C compiler (clang, gcc or cc; apt-get install gcc)", "the Python headers (/x/Python.h; apt-get install python3-dev)"]


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_compile_auto_on_cuda_stays_eager_and_says_why_without_what_triton_needs(fake_cuda, monkeypatch):
    monkeypatch.setattr(device, "triton_missing", lambda: LACKS)
    p = resolve_precision("cuda", "auto", compile="auto")
    assert not p.compile and p.amp_dtype == torch.bfloat16
    line = p.describe()
    assert "eager" in line and "Triton cannot compile for CUDA here without a C compiler" in line and "Python.h" in line


def test_compile_auto_on_cuda_compiles_when_triton_has_what_it_needs(fake_cuda, monkeypatch):
    monkeypatch.setattr(device, "triton_missing", lambda: [])
    p = resolve_precision("cuda", "auto", compile="auto")
    assert p.compile and "compile=auto: on for CUDA" in p.why


def test_compile_true_on_cuda_without_them_is_one_clear_line(fake_cuda, monkeypatch):
    monkeypatch.setattr(device, "triton_missing", lambda: LACKS[:1])
    with pytest.raises(UserError, match=r"^compile=true on CUDA needs what Triton compiles with.*lacks a C compiler") \
            as info:
        resolve_precision("cuda", "false", compile="true")
    assert "\n" not in str(info.value)
    assert not resolve_precision("cuda", "false", compile="false").compile  # no check when not compiling


def test_compile_true_on_cuda_without_them_exits_with_one_line_from_train(tmp_path):
    """The whole command: one `error:` line on stderr and a non-zero exit, before any env starts."""
    code = ("import sys, torch; torch.cuda.is_available = lambda: True; "
            "from pixel_ddpg import device; device.triton_missing = lambda: ['a C compiler (clang, gcc or cc)']; "
            "from pixel_ddpg.train import main; sys.argv[0] = 'train'; main()")
    args = [a for a in TINY if not a.startswith(("device=", "compile="))]
    proc = subprocess.run([sys.executable, "-c", code, *args, "device=cuda", "compile=true", "obs=state",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "compile=true on CUDA" in lines[0] and "a C compiler" in lines[0], proc.stderr


def test_triton_missing_names_the_compiler_and_the_headers(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-cc-here")
    monkeypatch.setattr(device.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    missing = triton_missing()
    assert any("$CC=no-such-cc-here" in m for m in missing)
    assert any(f"{tmp_path}/Python.h" in m and "python3-dev" in m for m in missing)
    (tmp_path / "Python.h").write_text("")
    monkeypatch.setenv("CC", sys.executable)  # any executable stands for a compiler here
    assert not any("CC" in m or "Python.h" in m for m in triton_missing())


@pytest.mark.parametrize("caps,needle", [(None, "is unset"), ("compute,utility", "'compute,utility'"),
                                         ("all", "asks for graphics")])
def test_software_egl_beside_cuda_names_the_missing_capability(caps, needle):
    line = software_render_warning(True, True, caps)
    assert line.startswith("warning: CUDA is here but EGL renders in software") and "\n" not in line
    assert needle in line
    if caps != "all":
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics" in line
    assert software_render_warning(True, False, caps) is None  # the GPU renders: nothing to say
    assert software_render_warning(False, True, caps) is None  # a CPU machine: llvmpipe is all there is


def test_the_trainer_prints_it_at_start_up(monkeypatch, tmp_path, capsys):
    from pixel_ddpg.config import compose
    from pixel_ddpg.trainer import Trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("pixel_ddpg.trainer.software_rendering", lambda: True)
    monkeypatch.setenv("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
    trainer = Trainer(compose([*TINY, "obs=pixels_paper", "total_frames=60"]), tmp_path)
    trainer.close()
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "EGL renders in software" in line]
    assert len(lines) == 1 and "`graphics` is missing" in lines[0] and "'compute,utility'" in lines[0], out
