"""Checkpoints are data: loading one never runs code from it, and it says what code made it."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg import provenance
from pixel_ddpg.errors import UserError
from pixel_ddpg.trainer import rng_state, set_rng_state
from tests.conftest import evaluate, ROOT, train


class Payload:
    """Unpickling this creates ``marker``: what a malicious shared checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted(path: Path, marker: Path, kind: str = "archive") -> Path:
    """A file that looks like a checkpoint (format tag, version) and carries the payload."""
    bait = {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "agent": Payload(marker)}
    if kind == "archive":
        torch.save(bait, path)
    else:
        path.write_bytes(pickle.dumps(bait))
    return path


def one_line_refusal(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run whose checkpoint also holds the replay (the largest state there is)."""
    run = tmp_path_factory.mktemp("safe") / "run"
    train(run, "obs=state", "total_frames=120", "replay.save_in_checkpoint=true")
    return run


def test_the_payload_does_run_when_unpickled_unsafely(tmp_path):
    marker = tmp_path / "ran"
    torch.load(crafted(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()  # so the refusals below are refusals of code that would have run


@pytest.mark.parametrize("kind", ["archive", "pickle"])
def test_load_refuses_a_crafted_file_without_running_it(tmp_path, kind):
    marker = tmp_path / "ran"
    with pytest.raises(UserError, match="is not trusted data: loading it would import posix.system"):
        ckpt_io.load(crafted(tmp_path / "evil.pt", marker, kind))
    assert not marker.exists()


def test_evaluate_refuses_a_crafted_checkpoint(tmp_path):
    marker = tmp_path / "ran"
    proc = evaluate(f"checkpoint={crafted(tmp_path / 'evil.pt', marker)}", "episodes=1",
                    f"out_dir={tmp_path / 'ev'}")
    one_line_refusal(proc, "is not trusted data")
    assert not marker.exists() and not (tmp_path / "ev").exists()


def test_resume_refuses_a_crafted_checkpoint(tmp_path):
    marker = tmp_path / "ran"
    evil = crafted(tmp_path / "evil.pt", marker)
    proc = train(tmp_path / "new", "obs=state", f"resume={evil}", check=False)
    one_line_refusal(proc, "is not trusted data")
    assert not marker.exists() and not (tmp_path / "train.csv").exists()


def test_round_trip_train_load_as_data_resume_evaluate(run, tmp_path):
    path = run / "checkpoints" / "last.pt"
    raw = torch.load(path, weights_only=True)  # plain data: no allow-list, no code
    assert raw["version"] == ckpt_io.VERSION == 2 and raw["replay"] is not None
    assert raw["provenance"] == provenance.current()
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    proc = train(tmp_path / "ignored", f"resume={resumed}", "total_frames=180")
    assert "warning" not in proc.stderr
    ckpt = ckpt_io.load(resumed)
    assert ckpt["counters"]["frame"] == 180 and ckpt["counters"]["updates"] > raw["counters"]["updates"]
    proc = evaluate(f"checkpoint={resumed}", "episodes=2", f"out_dir={tmp_path / 'ev'}", "video=false")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["checkpoint_frame"] == 180


def test_rng_states_restore_as_plain_data():
    np.random.seed(5)
    random.seed(5)
    state = rng_state()
    expected = (np.random.random(3), random.random(), torch.rand(2))
    np.random.seed(0)
    random.seed(0)
    set_rng_state(state)
    got = (np.random.random(3), random.random(), torch.rand(2))
    assert np.array_equal(expected[0], got[0]) and expected[1] == got[1] and torch.equal(expected[2], got[2])


def version_1(ckpt: dict, path: Path) -> Path:
    """The layout format version 1 wrote: NumPy's legacy RNG tuple (an ndarray), a TorchVersion."""
    old = {k: v for k, v in ckpt.items() if k not in ("path", "provenance")}
    np.random.set_state(ckpt_io.numpy_rng_from_data(ckpt["rng"]["numpy"]))
    old.update(version=1, rng={**ckpt["rng"], "numpy": np.random.get_state()}, torch_version=torch.__version__)
    torch.save(old, path)
    return path


def test_version_1_is_refused_with_the_convert_command_which_works(run, tmp_path):
    ckpt = ckpt_io.load(run)
    old = version_1(ckpt, tmp_path / "v1.pt")
    with pytest.raises(UserError, match=r"format version 1.*python -m pixel_ddpg.checkpoint convert"):
        ckpt_io.load(old)
    new = tmp_path / "v2.pt"
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.checkpoint", "convert", str(old), str(new)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    converted = ckpt_io.load(new)
    assert converted["version"] == 2 and converted["provenance"] == {"torch": torch.__version__}
    assert converted["rng"]["numpy"] == ckpt["rng"]["numpy"]
    assert torch.equal(converted["agent"]["actor_opt"]["state"][0]["exp_avg"], ckpt["agent"]["actor_opt"]["state"][0]["exp_avg"])


def test_convert_refuses_a_crafted_file_too(tmp_path):
    marker = tmp_path / "ran"
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.checkpoint", "convert",
                           str(crafted(tmp_path / "evil.pt", marker)), str(tmp_path / "out.pt")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    one_line_refusal(proc, "is not trusted data")
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_config_yaml_and_checkpoint_record_the_same_provenance(run):
    saved = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))["provenance"]
    assert saved == ckpt_io.load(run)["provenance"] == provenance.current()
    assert saved["pixel_ddpg"] == __import__("pixel_ddpg").__version__ and saved["torch"] == torch.__version__
    assert saved["envpool"] and saved["mujoco"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not run from a git clone")
    assert saved["git_commit"] == head.stdout.strip()


def test_evaluate_warns_once_when_installed_versions_differ(run, tmp_path):
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt["provenance"] = {**ckpt["provenance"], "torch": "0.0.1", "mujoco": "0.0.2"}
    torch.save(ckpt, tmp_path / "other.pt")
    proc = evaluate(f"checkpoint={tmp_path / 'other.pt'}", "episodes=1", f"out_dir={tmp_path / 'ev'}", "video=false")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, proc.stderr
    assert f"torch 0.0.1 -> {torch.__version__}" in warnings[0] and "mujoco 0.0.2 ->" in warnings[0]


def test_version_mismatches_name_only_recorded_differences():
    now = {"pixel_ddpg": "0.1.0", "git_commit": "abc", "torch": "2.5.0", "envpool": "1.2.5", "mujoco": "3.2.0"}
    assert provenance.version_mismatches({**now, "git_commit": "other"}, now) == []  # commits change every run
    assert provenance.version_mismatches({"torch": "2.4.0"}, now) == ["torch 2.4.0 -> 2.5.0"]
    assert provenance.version_mismatches(None, now) == []
