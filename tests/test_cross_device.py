"""Checkpoints that move between devices (issue 27): a CUDA-written checkpoint loads, evaluates
and resumes on a CPU, and a CPU run never touches the GPUs' RNGs.

A checkpoint is crafted as a CUDA machine writes it: a 16-byte generator state (a CPU one is
5,056 bytes) and CUDA RNG entries, in the per-device form and in the older list form.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg import rundir
from pixel_ddpg.trainer import cuda_rng_entries, rng_state, set_rng_state
from tests.conftest import agent, batch, evaluate, train

CUDA_GENERATOR_STATE = torch.arange(16, dtype=torch.uint8)  # philox seed + offset: 16 bytes
CPU = torch.device("cpu")


def as_cuda_wrote_it(state: dict, *, recorded: bool) -> dict:
    """An agent state with a CUDA generator; ``recorded=False``: written before the device kind was."""
    state = dict(state, generator=CUDA_GENERATOR_STATE.clone())
    if recorded:
        state["generator_device"] = "cuda"
    else:
        state.pop("generator_device", None)
    return state


def round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("recorded", [True, False])
def test_a_cuda_generator_state_reseeds_on_cpu_deterministically_with_one_warning(recorded, capsys):
    trained = agent("agent.augment=true", "agent.target_policy_noise=0.2", seed=3)
    b = batch()
    for _ in range(3):
        trained.update(b)
    state = as_cuda_wrote_it(trained.state_dict(), recorded=recorded)
    first, second = agent("agent.augment=true", "agent.target_policy_noise=0.2", seed=3), \
        agent("agent.augment=true", "agent.target_policy_noise=0.2", seed=3)
    first.load_state_dict(round_trip(state))  # each its own copy: Adam's load keeps the tensors it is given
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "saved on cuda" in err[0] and "reseeded from (seed 3, update 3)" in err[0], err
    second.load_state_dict(round_trip(state))
    assert first.updates == 3
    # the same draws after each load of the same checkpoint: resumes repeat themselves
    assert torch.equal(first.generator.get_state(), second.generator.get_state())
    one, two = first.update(b), second.update(b)
    assert all(torch.equal(one[k], two[k]) or (one[k].isnan() and two[k].isnan()) for k in one)
    # and not the seed's own stream from update 0
    fresh = agent(seed=3)
    assert not torch.equal(fresh.generator.get_state(), first.generator.get_state())


def test_a_same_device_checkpoint_restores_its_generator_silently(capsys):
    trained = agent(seed=1)
    trained.update(batch())
    restored = agent(seed=9)
    restored.load_state_dict(round_trip(trained.state_dict()))
    assert capsys.readouterr().err == ""
    assert torch.equal(restored.generator.get_state(), trained.generator.get_state())


def test_evaluation_does_not_touch_the_generator(capsys):
    state = as_cuda_wrote_it(agent(seed=1).state_dict(), recorded=True)
    evaluator = agent(seed=5)
    before = evaluator.generator.get_state()
    evaluator.load_state_dict(state, generator=False)
    assert capsys.readouterr().err == "" and torch.equal(evaluator.generator.get_state(), before)


def test_a_cpu_run_saves_and_restores_no_cuda_rng(monkeypatch):
    """A CPU run on a GPU machine must not initialise CUDA on every GPU to save or restore RNGs."""
    def touched(*args, **kwargs):
        raise AssertionError("a CPU run touched the CUDA RNG")

    for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all", "current_device"):
        monkeypatch.setattr(torch.cuda, name, touched)
    state = rng_state(CPU)
    assert "cuda" not in state
    state["cuda"] = [CUDA_GENERATOR_STATE] * 8  # a checkpoint from an 8-GPU machine
    assert set_rng_state(state, CPU) == []


@pytest.mark.parametrize("saved,run_on,expected", [
    ({0: CUDA_GENERATOR_STATE, 3: CUDA_GENERATOR_STATE}, 0, [0]),  # per device (now)
    ([CUDA_GENERATOR_STATE] * 4, 1, [1]),  # get_rng_state_all's list (before issue 27), from 4 GPUs
    ({3: CUDA_GENERATOR_STATE}, 0, []),  # saved on cuda:3 of a bigger machine
    ([CUDA_GENERATOR_STATE] * 4, 5, []),  # a GPU index this machine lacks
])
def test_cuda_rng_states_are_restored_where_they_fit(saved, run_on, expected, monkeypatch):
    """Another GPU count is no error; only the run's own GPU's state is set (no other GPU starts)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, index: calls.append((index, s.numel())))
    state = {**rng_state(CPU), "cuda": saved}
    assert set_rng_state(state, torch.device("cuda", run_on)) == expected
    assert calls == [(i, 16) for i in expected] and len(cuda_rng_entries(saved)) == len(saved)


def test_cuda_rng_is_saved_for_the_runs_own_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("saved every GPU's RNG"))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda index: CUDA_GENERATOR_STATE + index)
    state = rng_state(torch.device("cuda", 1))
    assert list(state["cuda"]) == [1] and torch.equal(state["cuda"][1], CUDA_GENERATOR_STATE + 1)


@pytest.fixture(scope="module")
def cuda_written(tmp_path_factory) -> Path:
    """A tiny CPU run whose checkpoint is rewritten as a 2-GPU CUDA machine writes it."""
    run = tmp_path_factory.mktemp("xdev") / "run"
    train(run, "obs=state", "total_frames=120", "replay.save_in_checkpoint=true")
    path = run / rundir.CKPT_DIR / rundir.LAST
    ckpt = torch.load(path, weights_only=True)
    ckpt["agent"] = as_cuda_wrote_it(ckpt["agent"], recorded=False)  # as main wrote before issue 27
    ckpt["rng"]["cuda"] = [CUDA_GENERATOR_STATE.clone(), CUDA_GENERATOR_STATE.clone()]
    ckpt["config"]["device"] = "cuda"
    ckpt_io.save_atomic(ckpt, path)
    return run


def test_a_cuda_checkpoint_evaluates_on_cpu_without_warnings(cuda_written, tmp_path):
    proc = evaluate(f"checkpoint={cuda_written}", "episodes=2", f"out_dir={tmp_path / 'ev'}", "video=false",
                    "device=cpu")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["checkpoint_frame"] == 120


def test_a_cuda_checkpoint_resumes_on_cpu_with_one_warning_line(cuda_written, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(cuda_written, resumed)
    proc = train(tmp_path / "ignored", f"resume={resumed}", "total_frames=180", "device=cpu")
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "saved on cuda, this run is on cpu: reseeded" in warnings[0], proc.stderr
    ckpt = ckpt_io.load(resumed)
    assert ckpt["counters"]["frame"] == 180 and ckpt["agent"]["generator_device"] == "cpu"
    assert "cuda" not in ckpt["rng"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the reverse direction needs a GPU")
def test_a_cpu_checkpoint_evaluates_and_resumes_on_cuda(tmp_path):
    run = tmp_path / "run"
    train(run, "obs=state", "total_frames=120")
    proc = evaluate(f"checkpoint={run}", "episodes=2", f"out_dir={tmp_path / 'ev'}", "video=false", "device=cuda")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stdout + proc.stderr
    proc = train(tmp_path / "ignored", f"resume={run}", "total_frames=180", "device=cuda")
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "saved on cpu, this run is on cuda: reseeded" in warnings[0], proc.stderr
    ckpt = ckpt_io.load(run)
    assert ckpt["agent"]["generator_device"] == "cuda" and list(ckpt["rng"]["cuda"]) == [0]
