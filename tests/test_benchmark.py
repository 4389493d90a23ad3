"""`python -m pixel_ddpg.benchmark`: every stage measured, the baseline on the same task."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

TINY = ["quick=true", "setup=paper", "env=cartpole_balance", "env.episode_sim_steps=30", "render=fast", "obs.image_size=16",
        "num_envs=2", "replay_capacity=400", "naive_replay_capacity=100", "device=cpu", "compile=false"]


def bench(tmp_path: Path, *overrides: str) -> dict:
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.benchmark", *TINY, f"out={out}", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "speedup end_to_end" in proc.stdout
    if not any(o.startswith("stages=") for o in overrides):  # the peak stage runs by default
        assert "GFLOP per update" in proc.stdout and "% of this machine's conv peak" in proc.stdout, proc.stdout
    return json.loads(out.read_text())


def positive(r: dict) -> bool:
    return r["median"] > 0 and all(x > 0 for x in r["runs"])


def check_every_stage(res: dict, variants: list[str]) -> None:
    s = res["stages"]
    assert positive(s["env_state"]) and positive(s["act"]) and positive(s["end_to_end"])
    assert positive(s["env_pixels"]["standard"]) and positive(s["env_pixels"]["fast"])
    for k in ("add", "sample", "naive_sample"):
        assert positive(s["replay"][k])
    assert sorted(s["update"]) == sorted(variants) and all(positive(v) for v in s["update"].values())
    assert positive(s["baseline"]["end_to_end"])
    assert s["replay"]["bytes_per_transition"] < s["replay"]["naive_bytes_per_transition"]
    assert res["machine"]["cores"] >= 1 and res["machine"]["torch"] and res["machine"]["envpool"]
    assert set(res["speedup"]) >= {"end_to_end", "replay_sample", "replay_bytes", "update_best_vs_eager_fp32",
                                   "loop_vs_learner"}
    e2e = s["end_to_end"]
    assert positive(e2e["learner_alone"]) and e2e["frames_per_update"] == 3.0
    assert res["speedup"]["loop_vs_learner"] == pytest.approx(
        e2e["median"] / (e2e["learner_alone"]["median"] * e2e["frames_per_update"]))
    p = res["precision"]
    assert p["fastest"] in variants and p["auto"] in ("eager_fp32", "eager_bf16", "compiled_fp32", "compiled_bf16")
    assert p["end_to_end"] == e2e["variant"] and "amp=auto" in p["auto_why"]
    assert res["machine"]["usable_cores"] >= 1 and res["machine"]["torch_threads"] >= 1
    check_compute_share(res)


def check_compute_share(res: dict) -> None:
    """The peak stage's matmul and conv GFLOP/s, the counted FLOPs of an update and each variant's
    share of the peaks in its precision: fp32 always, bf16 where the chosen precision autocasts.
    A share far above 1 would mean the FLOP count or the timing is wrong."""
    pk, update = res["stages"]["peak"], res["stages"]["update"]
    assert pk["update_flops"]["gflop_per_update"] > 0 and pk["conv"]["weight_shape"][1] == 9
    assert pk["update_flops"]["batch_size"] == pk["conv"]["input_shape"][0] == update["eager_fp32"]["batch_size"]
    for k in ("matmul", "conv_forward", "conv_forward_backward"):
        assert positive(pk["fp32"][k]) and pk["fp32"][k]["unit"] == "GFLOP/s"
    with_share = {name for name, r in update.items() if "gflops" in r}
    assert with_share == {name for name in update if ("bf16" if "bf16" in name else "fp32") in pk}
    assert "eager_fp32" in with_share
    for name in with_share:
        r = update[name]
        for k in ("gflop_per_update", "gflops", "share_of_conv_peak", "share_of_matmul_peak"):
            assert math.isfinite(r[k]) and r[k] > 0, (name, k, r[k])
        assert r["gflops"] == pytest.approx(r["gflop_per_update"] * r["median"])
        assert r["share_of_conv_peak"] < 1.5 and r["share_of_matmul_peak"] < 1.5, (name, r)


@pytest.mark.slow  # 45 s (a benchmark subprocess through every stage), 2 shared cores
def test_quick_benchmark_measures_every_stage_against_the_baseline_on_the_same_task(tmp_path):
    res = bench(tmp_path, "update_variants=[eager_fp32,eager_bf16]", "sweep.num_envs=[1,2]")
    check_every_stage(res, ["eager_fp32", "eager_bf16"])
    s = res["stages"]
    assert s["baseline"]["end_to_end"]["task_id"] == s["end_to_end"]["task_id"] == "CartpoleBalance-v1"
    assert s["baseline"]["end_to_end"]["obs_shape"] == s["end_to_end"]["obs_shape"] == [9, 16, 16]
    assert set(res["sweep"]["num_envs"]) == {"1", "2"}
    assert Path(res["sweep_plot"]).stat().st_size > 0


@pytest.mark.slow
def test_quick_benchmark_with_compiled_updates(tmp_path):
    res = bench(tmp_path)
    check_every_stage(res, ["eager_fp32", "eager_bf16", "compiled_fp32", "compiled_bf16"])


def test_unknown_stage_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.benchmark", *TINY, "stages=[warp]", f"out={tmp_path}/r.json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown stage" in proc.stderr and "Traceback" not in proc.stderr


def test_without_a_cpp_compiler_compiled_variants_are_left_out_or_refused(tmp_path):
    """torch.compile on a CPU calls $CXX (else g++): without one the default run times the eager
    variants and says why; asking for a compiled variant is one clear line."""
    env = {**__import__("os").environ, "CXX": "no-such-compiler-here"}
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.benchmark", *TINY, "stages=[update]", f"out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no C++ compiler (no-such-compiler-here)" in proc.stdout
    assert sorted(json.loads(out.read_text())["stages"]["update"]) == ["eager_bf16", "eager_fp32"]
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.benchmark", *TINY, "stages=[update]",
                           "update_variants=[compiled_fp32]", f"out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "has compiled variants, but there is no C++ compiler" in proc.stderr
