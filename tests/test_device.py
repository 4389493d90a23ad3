"""amp/compile/threads=auto: what each machine gets, by mocked CPU flags and core counts."""

from __future__ import annotations

import pytest
import torch

from pixel_ddpg.errors import ConfigError
from pixel_ddpg.errors import UserError
from pixel_ddpg import device
from pixel_ddpg.device import plan_threads, resolve_precision, set_cpu_threads

XEON_AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
SAPPHIRE_NO_AMX = frozenset({"avx2", "avx512f", "avx512_bf16"})
EPYC_AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("flags,bf16", [(XEON_AMX, True), (SAPPHIRE_NO_AMX, True), (EPYC_AVX2, False),
                                        (frozenset({"avx512f"}), False), (frozenset(), False)])
def test_amp_auto_is_bf16_only_where_the_cpu_has_native_bf16(flags, bf16):
    p = resolve_precision("cpu", "auto", "bfloat16", "false", flags=flags)
    assert p.amp_dtype == (torch.bfloat16 if bf16 else None)
    assert ("amp=auto" in p.why) and (("lacks" in p.why) != bf16)


def test_explicit_amp_wins_over_the_flags():
    assert resolve_precision("cpu", "true", flags=EPYC_AVX2, compile="false").amp_dtype == torch.bfloat16
    assert resolve_precision("cpu", "false", flags=XEON_AMX, compile="false").amp_dtype is None
    assert resolve_precision("cpu", "auto", "float16", "false", flags=XEON_AMX).amp_dtype is None  # no native fp16 CPU path


@pytest.mark.parametrize("planned,compiled", [(200, False), (9_999, False), (10_000, True), (330_000, True),
                                              (None, True)])
def test_compile_auto_on_cpu_only_when_the_run_repays_compiling(planned, compiled):
    p = resolve_precision("cpu", "false", compile="auto", planned_updates=planned, compile_min_updates=10_000,
                          flags=XEON_AMX)
    assert p.compile is compiled and "compile=auto" in p.why
    if not compiled:
        assert "repay ~30 s of compiling" in p.why


def test_compile_auto_says_when_the_planned_count_is_only_a_floor():
    """frames_per_update=auto plans with its cheapest choice until the start-up timing picks one,
    so the start-up line must not state that count as the run's."""
    kwargs = dict(compile="auto", planned_updates=12_000, compile_min_updates=10_000, flags=XEON_AMX)
    if device.cpu_compiler() is None:
        pytest.skip("no C++ compiler: compile=auto stays eager before it counts updates")
    assert "compile=auto: at least 12,000 updates planned, " in resolve_precision("cpu", "false", planned_is_floor=True, **kwargs).why
    assert "compile=auto: 12,000 updates planned, " in resolve_precision("cpu", "false", **kwargs).why


def test_compile_auto_says_a_run_inside_its_warm_up_makes_no_updates():
    if device.cpu_compiler() is None:
        pytest.skip("no C++ compiler: compile=auto stays eager before it counts updates")
    p = resolve_precision("cpu", "false", compile="auto", planned_updates=0, compile_min_updates=10_000, flags=XEON_AMX)
    assert not p.compile and "compile=auto: no updates planned (the run ends inside its warm-up, or has none left)" in p.why


def test_compile_auto_stays_eager_on_a_cpu_without_a_cpp_compiler(monkeypatch):
    """torch.compile's CPU backend calls $CXX or g++: a machine without one would fail at the first update."""
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    p = resolve_precision("cpu", "false", compile="auto", planned_updates=330_000, compile_min_updates=10_000,
                          flags=XEON_AMX)
    assert not p.compile and "no C++ compiler (no-such-compiler-here)" in p.why
    monkeypatch.delenv("CXX")
    if device.cpu_compiler() is not None:  # g++ here: the same run compiles
        assert resolve_precision("cpu", "false", compile="auto", planned_updates=330_000,
                                 compile_min_updates=10_000, flags=XEON_AMX).compile


def test_compile_true_without_a_cpp_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(UserError, match="compile=true needs a C\\+\\+ compiler"):
        resolve_precision("cpu", "false", compile="true")


def test_explicit_compile_is_kept_and_the_reason_says_so():
    p = resolve_precision("cpu", "false", compile="true", planned_updates=10, compile_min_updates=10_000)
    assert p.compile and p.why == "set explicitly"
    assert "eager" in resolve_precision("cpu", "false", compile="false").describe()


def test_bad_switches_are_config_errors():
    with pytest.raises(ConfigError, match="amp="):
        resolve_precision("cpu", "maybe")
    with pytest.raises(ConfigError, match="torch_threads="):
        set_cpu_threads(torch.device("cpu"), 0)


@pytest.mark.parametrize("cores,env_threads,expected", [
    (1, 1, 1),     # taskset -c 0: learner and renderer share the one core
    (2, 1, 1),     # this machine: one core for the learner, one for EnvPool (software renderer: 1 thread)
    (2, 4, 1),     # state envs, one thread per env: still at least one for the learner
    (8, 1, 7),     # a workstation rendering on one thread
    (8, 4, 4),     # ... or stepping 4 envs on 4 threads
    (16, 1, 15),
    (64, 1, 16),   # capped (a guard; a batch-16 update's ops are small)
    (64, 16, 16),
])
def test_torch_threads_auto_takes_the_cores_envpool_leaves(cores, env_threads, expected):
    assert plan_threads(cores, env_threads) == expected


def test_set_cpu_threads_auto_follows_the_affinity(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr("pixel_ddpg.device.usable_cores", lambda: 3)
        assert set_cpu_threads(torch.device("cpu"), "auto", env_threads=1) == 2 == torch.get_num_threads()
        assert set_cpu_threads(torch.device("cpu"), 1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_openmp_waits_passively_unless_the_user_chose():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import pixel_ddpg, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, cwd=root,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


# ------------------------------------------------------------------ compile=auto times both on a CPU
def test_compile_auto_on_a_long_cpu_run_is_decided_by_timing_on_this_machine():
    p = resolve_precision("cpu", "false", compile="auto", planned_updates=330_000, compile_min_updates=10_000,
                          flags=EPYC_AVX2)
    if device.cpu_compiler() is None:
        pytest.skip("no C++ compiler: compile=auto stays eager without timing")
    assert p.timed and p.compile and "timed at start-up" in p.why
    slower = p.after_timing(compiled_s=0.22, eager_s=0.20)   # the default learner on an AVX2 EPYC: 0.92x
    assert not slower.compile and not slower.timed
    assert "compiled 4.55, eager 5.00 updates/s, so eager" in slower.why and "amp=" not in slower.why
    faster = p.after_timing(compiled_s=0.10, eager_s=0.17)
    assert faster.compile and "so compiled" in faster.why
    assert not resolve_precision("cpu", "false", compile="true").timed   # explicit choices are kept
    assert not resolve_precision("cpu", "false", compile="auto", planned_updates=5, compile_min_updates=10).timed


def _small_agent(seed: int = 0):
    import numpy as np

    from envs.pool import EnvSpec
    from pixel_ddpg.agent import make_agent
    from pixel_ddpg.config import compose

    cfg = compose(["agent.batch_size=8", "agent.pixel_hidden=[32,32]", "agent.encoder.feature_dim=16"])
    spec = EnvSpec((9, 16, 16), np.dtype(np.uint8), (9, 16, 16), 1, 2, -np.ones(2, np.float32),
                   np.ones(2, np.float32), 2, 1, 100)
    return make_agent(cfg.agent, spec, device.Precision(torch.device("cpu"), None, False), seed)


def test_timing_leaves_the_agent_as_it_was():
    """The default learner (twin Q, delayed actor, shift, noise) timed, then trained: the same updates
    as a twin that was never timed, bit for bit."""
    from pixel_ddpg.batch import Batch

    timed, untouched = _small_agent(), _small_agent()
    compiled_s, eager_s = timed.time_compiled_and_eager(rounds=2)
    assert 0 < compiled_s < float("inf") and 0 < eager_s < float("inf")
    assert timed.updates == 0
    g = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (2, 8, 9, 16, 16), dtype=torch.uint8, generator=g)
    batch = Batch(obs[0], torch.rand(8, 2, generator=g) * 2 - 1, torch.rand(8, generator=g), torch.full((8,), 0.97), obs[1])
    for _ in range(3):
        a, b = timed.update(batch, frame=5000), untouched.update(batch, frame=5000)
        for k in a:
            assert torch.equal(a[k], b[k]) or (torch.isnan(a[k]) and torch.isnan(b[k])), k
    sa, sb = timed.state_dict(), untouched.state_dict()
    for name in ("encoder", "actor", "critic", "target_encoder", "target_actor", "target_critic"):
        assert all(torch.equal(sa[name][k], sb[name][k]) for k in sa[name]), name
    first = torch.zeros(8, dtype=torch.bool)
    assert torch.equal(timed.act(obs[0], explore=True, first=first, frame=7), untouched.act(obs[0], explore=True, first=first, frame=7))


def test_the_trainer_keeps_eager_when_compiled_updates_time_slower(tmp_path, monkeypatch):
    from pixel_ddpg.agent import DDPGAgent
    from pixel_ddpg.config import compose
    from pixel_ddpg.trainer import Trainer

    if device.cpu_compiler() is None:
        pytest.skip("no C++ compiler: compile=auto stays eager without timing")
    monkeypatch.setattr(DDPGAgent, "time_compiled_and_eager", lambda self: (0.25, 0.20))
    cfg = compose(["env=cartpole_balance", "env.episode_sim_steps=16", "obs.image_size=16", "num_envs=1",
                   "total_frames=16", "device=cpu", "compile=auto", "compile_min_updates=0", "amp=false",
                   "replay.capacity=100", "log.tensorboard=false"])
    trainer = Trainer(cfg, tmp_path)
    try:
        assert not trainer.precision.compile and not trainer.agent.precision.compile
        assert trainer.agent._critic_loss_fn == trainer.agent._critic_loss  # the eager method, not a compiled wrapper
        assert "compiled 4.00, eager 5.00 updates/s, so eager" in trainer.precision.describe()
    finally:
        trainer.close()


def test_a_cpu_run_flushes_denormals_to_zero():
    """Weights an L2 decay drives toward zero turn denormal, and x86 cores compute on denormals
    many times slower: every CPU run (trainer, benchmark, evaluate all set their threads here)
    computes with them flushed to zero."""
    before = torch.get_num_threads()
    try:
        torch.set_flush_denormal(False)
        tiny = torch.tensor([1e-39])  # below float32's smallest normal, 1.18e-38 (made with flushing off)
        assert (tiny * 1.0).item() != 0.0
        set_cpu_threads(torch.device("cpu"), 1)
        assert (tiny * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


def test_the_learners_worker_threads_flush_denormals_too():
    """The flag is per thread: in a fresh process (as a run starts) the intra-op workers, started
    after set_cpu_threads, inherit it, so a 2-thread op on denormals gives zeros in both halves."""
    import subprocess
    import sys

    code = ("import numpy as np, torch\n"
            "from pixel_ddpg.device import set_cpu_threads\n"
            "set_cpu_threads(torch.device('cpu'), 2)\n"
            "a = torch.from_numpy(np.full(4_000_000, 0x000AE398, np.int32).view(np.float32))  # denormal bits\n"
            "assert int((a.view(torch.int32) != 0).sum()) == a.numel()\n"
            "print(int(((a * 1.0) != 0).sum()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_a_cpu_run_hides_torchs_no_cuda_runtime_line_and_nothing_else(caplog, monkeypatch):
    """A CPU run on a machine with nvcc and no GPU printed "No CUDA runtime is found" at its first
    compile; the filter drops that line only."""
    import logging
    from dataclasses import replace

    from pixel_ddpg.device import quiet_cuda_home_warning
    from tests.conftest import CPU, agent

    log = logging.getLogger("torch.utils.cpp_extension")
    monkeypatch.setattr(log, "filters", [])  # another test in this process may have built a compiled agent
    agent(precision=replace(CPU, compile=True))  # the one place that compiles installs it
    assert len(log.filters) == 1
    quiet_cuda_home_warning()  # twice: still one filter
    assert len(log.filters) == 1
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        log.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        log.warning("Error checking compiler version for %s", "c++")
    assert [r.getMessage() for r in caplog.records] == ["Error checking compiler version for c++"]
