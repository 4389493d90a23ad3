"""What only a CUDA machine can check (issue 27); skipped elsewhere. scripts/gpu_check.sh runs
these first. Their CPU counterparts: tests/test_hot_path.py, tests/test_cross_device.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixel_ddpg.device import Precision, resolve_precision
from pixel_ddpg.replay import ReplayBuffer
from pixel_ddpg.staging import HostStaging
from tests.conftest import agent, assert_async_loop_is_the_sync_loop, batch, make_spec, spec, steps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def on(b, device):
    return type(b)(*(t.to(device) for t in b))


def test_auto_compiles_with_cuda_graphs_and_bf16_on_cuda():
    p = resolve_precision("cuda", "auto", compile="auto")
    assert p.device.type == "cuda" and p.amp_dtype == torch.bfloat16, p.describe()
    assert p.compile and p.cuda_graphs, p.describe()  # else the line says what Triton lacks


def test_pinned_staging_and_one_upload_give_the_cpu_replays_batches():
    s = make_spec()
    cpu = ReplayBuffer(s, 400 * s.num_envs, "cpu", nstep=3, gamma=0.9, seed=4, verbose=False)
    gpu = ReplayBuffer(s, 400 * s.num_envs, CUDA, nstep=3, gamma=0.9, seed=4, verbose=False)
    assert gpu._staging is not None and gpu._staging.pin and gpu.flags.device.type == "cpu"
    for step, action in steps(s, 120, seed=4):
        cpu.add(step, action)
        gpu.add(step, None if action is None else torch.from_numpy(action).to(CUDA))  # the agent's own tensor
    for i, (c, g) in enumerate(zip(cpu.sample_many(32, 3), gpu.sample_many(32, 3))):
        assert field_differences(c, g) == [], f"batch {i}"


def field_differences(cpu_batch, gpu_batch) -> list[str]:
    """Which fields of a device batch differ from the CPU's, and by how much: the first GPU run
    failed a bare ``torch.equal`` over all of them and could not say which (a suspect: the n-step
    reward, a sum of products reduced on each device)."""
    out = []
    for name, x, y in zip(cpu_batch._fields, cpu_batch, gpu_batch):
        y = y.cpu()
        if x.shape != y.shape or x.dtype != y.dtype:
            out.append(f"{name}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
        elif not torch.equal(x, y):
            wrong = (x != y).sum().item()
            out.append(f"{name}: {wrong} of {x.numel()} differ, max |diff| {(x.double() - y.double()).abs().max().item():.3g}")
    return out


def test_staging_waits_for_its_copy_before_reuse():
    st = HostStaging(CUDA)
    outs = [st.upload("x", np.full(1 << 20, i, np.float32)) for i in range(8)]
    torch.cuda.synchronize()
    assert [float(o[0]) for o in outs] == [float(i) for i in range(8)] and st._buffers["x"].is_pinned()


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_the_cuda_graph_update_matches_eager_and_keeps_its_outputs(amp):
    eager = agent("agent.actor_delay=2", "agent.augment=true", seed=5, precision=Precision(CUDA, amp, False))
    graphs = agent("agent.actor_delay=2", "agent.augment=true", seed=5,
                   precision=Precision(CUDA, amp, True, cuda_graphs=True))
    b = on(batch(n=16), CUDA)
    kept = []
    for i in range(12):
        oe, og = eager.update(b), graphs.update(b)
        kept.append({k: v for k, v in og.items()})
        # compiled kernels sum in another order; bf16 rounds each order differently
        rtol, atol = (1e-2, 1e-3) if amp is None else (1e-1, 1e-2)
        for k in ("critic_loss", "q", "target_q"):
            assert torch.allclose(oe[k], og[k], rtol=rtol, atol=atol), (i, k, oe[k], og[k])
    # outputs of earlier updates are still readable and their own (a replay would overwrite them)
    values = [float(m["critic_loss"]) for m in kept]
    assert len(set(values)) > 1 and all(np.isfinite(values))


def test_compiled_acting_on_cuda_stays_within_bounds():
    a = agent(precision=Precision(CUDA, torch.bfloat16, True, cuda_graphs=True))
    obs = torch.randint(0, 256, (4, *spec().obs_shape), dtype=torch.uint8, device=CUDA)
    act = a.act(obs, explore=True)
    assert act.dtype == torch.float32 and act.abs().max() <= 1.0



def test_the_collector_stream_gives_the_synchronous_loops_numbers(tmp_path):
    """The collector steps, stores and samples on its own CUDA stream while the learner updates on
    the default one; the events between them must order every read after its write."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    assert_async_loop_is_the_sync_loop(tmp_path, "cuda")
