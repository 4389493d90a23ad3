"""The hot path without host waits (issue 27), checked on a CPU: the staged (pinned on CUDA)
copies, one upload for an iteration's batches, actions stored from the device, CUDA graphs' output
handling; every one gives the CPU path's exact numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixel_ddpg.device import Precision, resolve_precision
from pixel_ddpg.replay import ReplayBuffer
from pixel_ddpg.staging import HostStaging
from pixel_ddpg.errors import ConfigError
from tests.conftest import agent, assert_async_loop_is_the_sync_loop, batch, make_spec, steps


def filled(spec, staging: bool | None, seed: int = 0, *, tensors: bool = False) -> ReplayBuffer:
    r = ReplayBuffer(spec, 400 * spec.num_envs, "cpu", nstep=3, gamma=0.9, seed=seed, verbose=False, staging=staging)
    for step, action in steps(spec, 120, seed):
        r.add(step, torch.from_numpy(action) if tensors and action is not None else action)
    return r


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("pixels", [True, False])
def test_staged_adds_and_device_actions_store_the_same_bytes(pixels):
    spec = make_spec(pixels)
    plain = filled(spec, staging=False)
    for other in (filled(spec, staging=True), filled(spec, staging=False, tensors=True),
                  filled(spec, staging=True, tensors=True)):
        written = plain.num_added  # the storage is torch.empty: compare the slots written
        assert all(torch.equal(plain.tensors()[k][:written], other.tensors()[k][:written])
                   for k in ("frames", "actions", "rewards", "flags"))


def test_an_iterations_batches_are_the_batches_sample_draws_in_turn():
    """One call, one upload, and the same random stream: the CPU numbers do not change."""
    spec = make_spec()
    one, many = filled(spec, staging=False, seed=3), filled(spec, staging=True, seed=3)
    expected = [one.sample(16) for _ in range(5)]
    got = many.sample_many(16, 3) + many.sample_many(16, 0) + many.sample_many(16, 2)
    assert len(got) == 5
    for e, g in zip(expected, got):
        assert same(e, g) and all(t.dtype == u.dtype and t.shape == u.shape for t, u in zip(e, g))
    assert one.rng.bit_generator.state == many.rng.bit_generator.state


def test_sample_many_uploads_once(monkeypatch):
    spec = make_spec()
    r = filled(spec, staging=True)
    calls = []
    upload = HostStaging.upload
    monkeypatch.setattr(HostStaging, "upload", lambda self, name, a: calls.append(name) or upload(self, name, a))
    r.sample_many(8, 4)
    assert calls == ["indices"]


def test_staging_reuses_its_buffer_and_hands_out_copies():
    st = HostStaging(torch.device("cpu"))
    assert not st.pin  # pinning needs CUDA; the same code runs with an ordinary buffer
    a = st.upload("x", np.arange(6, dtype=np.int64))
    buf = st._buffers["x"]
    b = st.upload("x", np.arange(4, dtype=np.float32))  # smaller: the same bytes, viewed as another dtype
    assert st._buffers["x"] is buf
    assert torch.equal(a, torch.arange(6)) and torch.equal(b, torch.arange(4, dtype=torch.float32))
    dst = torch.zeros(3)
    st.copy_into("y", dst, np.ones(3, np.float32))
    assert torch.equal(dst, torch.ones(3))


def test_cuda_graphs_only_with_compile_on_cuda():
    p = resolve_precision("cpu", "false", compile="true")
    assert p.compile and not p.cuda_graphs  # auto: never on a CPU
    with pytest.raises(ConfigError, match="cuda_graphs=true needs compile on CUDA"):
        resolve_precision("cpu", "false", compile="true", cuda_graphs="true")


def test_the_cuda_graph_update_path_gives_the_eager_numbers_on_cpu():
    """With graphs on, the update marks each step and clones the outputs it keeps; eager on a CPU
    that path must change nothing (CUDA graphs themselves: tests/test_gpu.py)."""
    graphs = Precision(torch.device("cpu"), None, False, cuda_graphs=True)
    a, g = agent("agent.actor_delay=2", seed=2), agent("agent.actor_delay=2", seed=2, precision=graphs)
    b = batch()
    kept = []
    for _ in range(4):
        oa, og = a.update(b), g.update(b)
        kept.append(og)
        for k in oa:
            assert torch.equal(oa[k], og[k]) or (oa[k].isnan() and og[k].isnan())
    assert kept[0]["critic_loss"].data_ptr() != kept[1]["critic_loss"].data_ptr()  # each update's own copy


def test_the_collector_thread_gives_the_synchronous_loops_numbers(tmp_path):
    assert_async_loop_is_the_sync_loop(tmp_path, "cpu")
