"""Replay buffer: every sample is a real transition, n-step sums, memory planning, checkpoints.

The reference is a plain list of the steps the env produced; the expected transitions are
built from it directly (full env observations, no index tricks), then every sampled
(obs, action, reward, discount, next_obs) must equal one of them.
"""

from __future__ import annotations

import dataclasses
import io
import os

import envs  # noqa: F401  (loads EGL before anything imports envpool)
import numpy as np
import pytest
import torch

from envs import EnvSettings, EnvSpec, EnvStep, make_env
from pixel_ddpg.config import compose
from pixel_ddpg.errors import UserError
from pixel_ddpg.replay import ReplayBuffer, make_replay
from pixel_ddpg.replay_memory import (bytes_per_transition, estimate_bytes, plan_capacity, reserved_by_others,
                                     run_transitions)
from pixel_ddpg.errors import ConfigError
from tests.conftest import check_batch, GAMMA, Reference


def check_dtypes(batch, spec: EnvSpec, batch_size: int) -> None:
    obs_dtype = torch.uint8 if spec.pixels else torch.float32
    assert batch.obs.dtype == batch.next_obs.dtype == obs_dtype
    assert batch.obs.shape == batch.next_obs.shape == (batch_size, *spec.obs_shape)
    assert batch.action.shape == (batch_size, spec.action_dim) and batch.action.dtype == torch.float32
    assert batch.reward.shape == batch.discount.shape == (batch_size,)
    assert batch.reward.dtype == batch.discount.dtype == torch.float32


# ---------------------------------------------------------------------------- real envs
PAPER = dict(image_size=16, action_repeat=3, render_substeps=True, frame_stack=1, episode_sim_steps=15)
DRQV2 = dict(image_size=16, action_repeat=2, render_substeps=False, frame_stack=3, episode_sim_steps=10)
STATE = dict(obs_type="state", image_size=0, action_repeat=1, render_substeps=False, frame_stack=1, episode_sim_steps=5)


def settings(**kw) -> EnvSettings:
    base = dict(name="cartpole_balance", task_id="CartpoleBalance-v1", camera_id=0, obs_type="pixels", render="fast", num_envs=2, seed=0)
    return EnvSettings(**{**base, **kw})


@pytest.mark.parametrize(
    "setup,nstep",
    [(PAPER, 1), (DRQV2, 3), (DRQV2, 1), (STATE, 3)],
    ids=["paper-n1", "drqv2-n3", "drqv2-n1", "state-n3"],
)
def test_samples_are_real_transitions(setup: dict, nstep: int) -> None:
    """Across several episode ends (5 agent steps each) and ring wrap-around (8 slots per env)."""
    rng = np.random.default_rng(1)
    with make_env(settings(**setup)) as env:
        spec = env.spec
        replay = ReplayBuffer(spec, capacity=8 * spec.num_envs, nstep=nstep, gamma=GAMMA, seed=3)
        ref = Reference(spec.num_envs)
        step = env.reset()
        replay.add(step, None)
        ref.add(step, None)
        seen: set[bytes] = set()
        for t in range(26):
            action = rng.uniform(-1, 1, (spec.num_envs, spec.action_dim)).astype(np.float32)
            step = env.step(action)
            replay.add(step, action)
            ref.add(step, action)
            expected = ref.expected(replay.slots, spec.frame_stack, nstep, GAMMA)
            assert replay.num_valid() == len(expected)
            if not expected:
                with pytest.raises(ValueError):
                    replay.sample(4)
                continue
            batch = replay.sample(64)
            check_dtypes(batch, spec, 64)
            seen = check_batch(batch, expected)
        assert sum(s["first"] for s in ref.steps[0][1:]) >= 3, "fewer than 3 auto-resets happened"
        assert replay.num_added > replay.slots, "the ring never wrapped"
        # uniform over exactly the valid set: everything shows up, roughly equally often
        counts: dict[bytes, int] = {}
        for _ in range(10):
            for a in replay.sample(256).action.numpy():
                counts[a.tobytes()] = counts.get(a.tobytes(), 0) + 1
        assert set(counts) == set(expected) and seen <= set(expected)
        mean = 2560 / len(expected)
        assert all(0.6 * mean < c < 1.4 * mean for c in counts.values()), counts.values()


# ---------------------------------------------------------------------------- synthetic streams
def synth_spec(*, pixels: bool, num_envs: int, frame_stack: int = 1, channels: int = 3, dim: int = 2, action_dim: int = 2) -> EnvSpec:
    frame_shape = (channels, 2, 2) if pixels else (dim,)
    obs_shape = (channels * frame_stack, 2, 2) if pixels else (dim,)
    return EnvSpec(
        obs_shape=obs_shape,
        obs_dtype=np.dtype(np.uint8 if pixels else np.float32),
        frame_shape=frame_shape,
        frame_stack=frame_stack,
        action_dim=action_dim,
        action_low=-np.ones(action_dim, np.float32),
        action_high=np.ones(action_dim, np.float32),
        num_envs=num_envs,
        action_repeat=1,
        episode_agent_steps=5,
    )


class SynthEnv:
    """Mimics VecEnv's EnvStep stream with random frames, chosen episode lengths and endings."""

    def __init__(self, spec: EnvSpec, lengths: list[int], terminate: list[bool], seed: int = 0) -> None:
        self.spec, self.lengths, self.terminate = spec, lengths, terminate
        self.rng = np.random.default_rng(seed)
        n = spec.num_envs
        self.obs = np.zeros((n, *spec.obs_shape), spec.obs_dtype)
        self.t = np.zeros(n, int)
        self.needs_reset = np.zeros(n, bool)

    def _frame(self) -> np.ndarray:
        if self.spec.pixels:
            return self.rng.integers(0, 256, self.spec.frame_shape, dtype=np.uint8)
        return self.rng.standard_normal(self.spec.frame_shape).astype(np.float32)

    def _write(self, i: int, first: bool) -> None:
        f, k = self._frame(), self.spec.frame_stack
        if k == 1:
            self.obs[i] = f
        elif first:
            self.obs[i] = np.tile(f, (k, 1, 1))
        else:
            c = f.shape[0]
            self.obs[i, :-c] = self.obs[i, c:]
            self.obs[i, -c:] = f

    def reset(self) -> EnvStep:
        n = self.spec.num_envs
        for i in range(n):
            self._write(i, True)
        self.t[:] = 0
        self.needs_reset[:] = False
        z = np.zeros(n, bool)
        return EnvStep(obs=self.obs.copy(), reward=np.zeros(n, np.float32), terminated=z, truncated=z.copy(), first=~z)

    def step(self) -> EnvStep:
        n = self.spec.num_envs
        first = self.needs_reset.copy()
        reward = np.zeros(n, np.float32)
        term, trunc = np.zeros(n, bool), np.zeros(n, bool)
        for i in range(n):
            if first[i]:
                self._write(i, True)
                self.t[i] = 0
                continue
            self._write(i, False)
            self.t[i] += 1
            reward[i] = self.rng.uniform(-1, 1)
            if self.t[i] == self.lengths[i]:
                term[i], trunc[i] = self.terminate[i], not self.terminate[i]
        self.needs_reset = term | trunc
        return EnvStep(obs=self.obs.copy(), reward=reward, terminated=term, truncated=trunc, first=first)


def run_synth(replay: ReplayBuffer, env: SynthEnv, ref: Reference | None, steps: int, rng: np.random.Generator) -> None:
    step = env.reset()
    replay.add(step, None)
    if ref is not None:
        ref.add(step, None)
    for _ in range(steps):
        action = rng.uniform(-1, 1, (env.spec.num_envs, env.spec.action_dim)).astype(np.float32)
        step = env.step()
        replay.add(step, action)
        if ref is not None:
            ref.add(step, action)


@pytest.mark.parametrize("pixels,frame_stack,nstep", [(True, 3, 3), (True, 3, 1), (True, 1, 2), (False, 1, 3)])
def test_synthetic_terminations_wraparound(pixels: bool, frame_stack: int, nstep: int) -> None:
    """Mixed episode lengths, true terminations, truncations, a mid-episode reset, ring wraps, 3 envs."""
    spec = synth_spec(pixels=pixels, num_envs=3, frame_stack=frame_stack)
    replay = ReplayBuffer(spec, capacity=3 * 7, nstep=nstep, gamma=GAMMA, seed=0, verbose=False)
    env = SynthEnv(spec, lengths=[2, 4, 6], terminate=[True, False, True])
    ref, rng = Reference(3), np.random.default_rng(0)
    step = env.reset()
    replay.add(step, None)
    ref.add(step, None)
    for t in range(40):
        if t == 17:  # a reset mid-episode (e.g. after evaluation): bootstrap stops, as at truncation
            action, step = None, env.reset()
        else:
            action = rng.uniform(-1, 1, (3, spec.action_dim)).astype(np.float32)
            step = env.step()
        replay.add(step, action)
        ref.add(step, action)
        expected = ref.expected(replay.slots, frame_stack, nstep, GAMMA)
        assert replay.num_valid() == len(expected)
        if expected:
            check_batch(replay.sample(32), expected)
    seen: set[bytes] = set()
    for _ in range(10):
        seen |= check_batch(replay.sample(128), expected)
    assert seen == set(expected)


def test_nstep_sums_by_hand() -> None:
    """State obs = the timestep number; rewards, discounts and next obs worked out by hand."""
    spec = synth_spec(pixels=False, num_envs=1, dim=1, action_dim=1)
    replay = ReplayBuffer(spec, capacity=64, nstep=3, gamma=0.5, seed=0, verbose=False)
    z = np.zeros(1, bool)

    def put(t: int, reward: float, *, first=False, term=False, trunc=False) -> None:
        s = EnvStep(
            obs=np.array([[t]], np.float32),
            reward=np.array([reward], np.float32),
            terminated=np.array([term]),
            truncated=np.array([trunc]),
            first=np.array([first]),
        )
        replay.add(s, None if (first and t == 0) else np.array([[t / 100]], np.float32))

    put(0, 0, first=True)
    put(1, 1)
    put(2, 2)
    assert replay.num_valid() == 0  # tau=0 needs steps 1..3
    with pytest.raises(ValueError, match="no sampleable transition"):
        replay.sample(8)
    put(3, 3)
    assert replay.num_valid() == 1
    b = replay.sample(16)
    assert (b.obs[:, 0] == 0).all() and (b.next_obs[:, 0] == 3).all()
    assert torch.allclose(b.reward, torch.tensor(2.75)) and torch.allclose(b.discount, torch.tensor(0.125))
    put(4, 4, term=True)  # true termination: no bootstrap
    put(5, 99, first=True)  # auto-reset step: not a transition (reward is zeroed, action ignored)
    put(6, 10)
    put(7, 20, trunc=True)  # time limit: bootstrap with gamma**k
    put(8, 0, first=True)
    want = {  # obs t -> (reward, discount, next obs t)
        0: (1 + 0.5 * 2 + 0.25 * 3, 0.125, 3),
        1: (2 + 0.5 * 3 + 0.25 * 4, 0.0, 4),
        2: (3 + 0.5 * 4, 0.0, 4),
        3: (4, 0.0, 4),
        5: (10 + 0.5 * 20, 0.25, 7),
        6: (20, 0.5, 7),
    }
    assert replay.num_valid() == len(want)
    b = replay.sample(512)
    got = set()
    for o, r, d, n, a in zip(b.obs[:, 0].tolist(), b.reward.tolist(), b.discount.tolist(), b.next_obs[:, 0].tolist(), b.action[:, 0].tolist()):
        t = int(o)
        assert t in want, f"sampled a transition from t={t}"
        assert r == pytest.approx(want[t][0]) and d == pytest.approx(want[t][1]) and n == want[t][2]
        assert a == pytest.approx((t + 1) / 100)  # a_t is what produced step t+1
        got.add(t)
    assert got == set(want)


def test_an_episode_end_at_the_write_head_never_reads_unwritten_reward_slots() -> None:
    """A transition whose n-step chain stops at an episode's end just stored has slots past the
    end that the buffer has never written: their memory is garbage (here NaN), and the reward
    is still the finite sum of the steps before the end (NaN * 0 would be NaN)."""
    spec = synth_spec(pixels=False, num_envs=1, dim=1, action_dim=1)
    replay = ReplayBuffer(spec, capacity=64, nstep=3, gamma=0.5, seed=0, verbose=False)
    replay.rewards.fill_(float("nan"))  # what torch.empty may hold
    steps = [(0, 0.0, True, False), (1, 1.0, False, False), (2, 2.0, False, True)]  # t, reward, first, term
    for t, r, first, term in steps:
        replay.add(EnvStep(obs=np.array([[t]], np.float32), reward=np.array([r], np.float32),
                           terminated=np.array([term]), truncated=np.array([False]), first=np.array([first])),
                   None if t == 0 else np.array([[0.0]], np.float32))
    assert replay.num_valid() == 2  # t=0 (1 + 0.5 * 2) and t=1 (2), both ending at the termination
    b = replay.sample(64)
    assert torch.isfinite(b.reward).all()
    want = {0: 2.0, 1: 2.0}
    assert all(r == pytest.approx(want[int(o)]) for o, r in zip(b.obs[:, 0].tolist(), b.reward.tolist()))


def test_stack_never_crosses_episode_start() -> None:
    """DrQ-v2 layout by hand: frame value = timestep; at an episode start the stack repeats it."""
    spec = synth_spec(pixels=True, num_envs=1, frame_stack=3, channels=1)
    replay = ReplayBuffer(spec, capacity=64, nstep=1, gamma=GAMMA, seed=0, verbose=False)
    firsts = {0, 4}  # episode 0..3 (3 truncated), episode 4..9
    for t in range(10):
        frame = np.full((1, 1, 2, 2), t, np.uint8)
        stack = np.concatenate([frame] * 3, axis=1) if t in firsts else np.concatenate([prev[:, 1:], frame], axis=1)
        prev = stack
        replay.add(
            EnvStep(stack, np.ones(1, np.float32), np.zeros(1, bool), np.array([t == 3]), np.array([t in firsts])),
            None if t == 0 else np.full((1, 2), t / 10, np.float32),
        )
    b = replay.sample(256)
    for o, n in zip(b.obs[:, :, 0, 0].tolist(), b.next_obs[:, :, 0, 0].tolist()):
        t = o[-1]
        start = 4 if t >= 4 else 0
        assert o == [max(t - 2, start), max(t - 1, start), t]
        assert n == [max(t - 1, start), t, t + 1]
        assert t not in (3, 9)  # from a last step / nothing written after


def test_auto_reset_step_never_sampled() -> None:
    """Even with a junk reward and action on the reset step, neither appears in any sample."""
    spec = synth_spec(pixels=True, num_envs=2, frame_stack=3)
    replay = ReplayBuffer(spec, capacity=2 * 16, nstep=3, gamma=GAMMA, seed=0, verbose=False)
    env = SynthEnv(spec, lengths=[3, 4], terminate=[False, True])
    replay.add(env.reset(), None)
    for _ in range(12):
        step = env.step()
        action = np.full((2, spec.action_dim), 0.5, np.float32)
        action[step.first] = 123.0  # what the env ignored on the reset step
        step.reward[step.first] = 777.0  # EnvPool's raw reward there repeats the previous one
        replay.add(step, action)
    b = replay.sample(1024)
    assert not (b.action == 123.0).any()
    assert (b.reward.abs() < 3).all()


# ---------------------------------------------------------------------------- memory
@pytest.mark.parametrize("pixels,frame_stack,capacity", [(True, 1, 37), (True, 3, 64), (False, 1, 50)])
def test_estimate_equals_allocated_bytes(pixels: bool, frame_stack: int, capacity: int) -> None:
    spec = synth_spec(pixels=pixels, num_envs=4, frame_stack=frame_stack, channels=9 if frame_stack == 1 else 3)
    planned, nbytes = plan_capacity(capacity, spec, "cpu", max_transitions=10**6, memory_fraction=0.5)
    assert planned == capacity // 4 * 4
    replay = ReplayBuffer(spec, planned, verbose=False)
    assert replay.capacity == planned
    actual = sum(t.numel() * t.element_size() for t in replay.tensors().values())
    assert actual == replay.nbytes() == estimate_bytes(spec, planned) == nbytes
    assert estimate_bytes(spec, capacity) == nbytes  # rounding to whole slots happens in both


def test_bytes_per_transition_close_to_new_frames() -> None:
    paper = synth_spec(pixels=True, num_envs=1, channels=9)
    assert bytes_per_transition(paper) == 9 * 2 * 2 + 4 * 2 + 4 + 1


def test_capacity_that_cannot_fit_fails_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = synth_spec(pixels=True, num_envs=2, channels=9)
    with pytest.raises(UserError, match=r"replay\.capacity=\d+"):
        plan_capacity(10**13, spec, "cpu", max_transitions=10**6, memory_fraction=0.5)

    def no_alloc(*a, **k):
        raise AssertionError("allocated before checking the memory")

    monkeypatch.setattr(torch, "empty", no_alloc)
    with pytest.raises(UserError, match=r"use replay\.capacity=\d+"):
        ReplayBuffer(spec, 10**13)


def test_auto_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = synth_spec(pixels=True, num_envs=3, channels=9)
    cap, nbytes = plan_capacity("auto", spec, "cpu", max_transitions=1000, memory_fraction=0.5)
    assert cap == 999 and nbytes == estimate_bytes(spec, 999)
    per = bytes_per_transition(spec)
    monkeypatch.setattr("pixel_ddpg.replay_memory.free_bytes", lambda device: 200 * per)
    cap, _ = plan_capacity("auto", spec, "cpu", max_transitions=10**6, memory_fraction=0.5)
    assert cap == 99  # half of 200 transitions, rounded down to whole slots of 3 envs
    with pytest.raises(UserError, match=r"replay\.capacity=600 needs .* use replay\.capacity=99"):
        plan_capacity(600, spec, "cpu", max_transitions=10**6, memory_fraction=0.5)
    with pytest.raises(ConfigError):
        plan_capacity("lots", spec, "cpu")
    with pytest.raises(ConfigError, match="too small"):
        plan_capacity(2, spec, "cpu")


def test_make_replay_from_config() -> None:
    cfg = compose(["obs=pixels_drqv2", "agent=drqv2", "replay.capacity=300", "seed=5"])
    spec = synth_spec(pixels=True, num_envs=3, frame_stack=3)
    replay = make_replay(cfg, spec, "cpu")
    assert (replay.capacity, replay.nstep, replay.gamma) == (300, 3, 0.99)


def test_auto_capacity_is_sized_to_the_run() -> None:
    """A 600-frame paper run (4 envs, repeat 3) stores 50 agent steps + the reset: 204 transitions."""
    spec = dataclasses.replace(synth_spec(pixels=True, num_envs=4, channels=9), action_repeat=3)
    assert run_transitions(600, spec) == (50 + 1) * 4
    assert run_transitions(601, spec) == (51 + 1) * 4  # a partial last step still runs
    cap, nbytes = plan_capacity("auto", spec, "cpu", max_transitions=10**6, run_transitions=run_transitions(600, spec))
    assert cap == 204 and nbytes < 64 * 1024
    cap, _ = plan_capacity("auto", spec, "cpu", max_transitions=100, run_transitions=10**9)
    assert cap == 100  # max_transitions still caps a long run
    cap, _ = plan_capacity("auto", spec, "cpu", nstep=3, run_transitions=1)
    assert cap == (1 + 3) * 4  # never below what can hold one transition
    cap, _ = plan_capacity(1000, spec, "cpu", run_transitions=8)
    assert cap == 1000  # an explicit capacity is kept


def test_make_replay_auto_follows_total_frames() -> None:
    cfg = compose(["setup=paper", "total_frames=600", "num_envs=4"])
    spec = dataclasses.replace(synth_spec(pixels=True, num_envs=4, channels=9), action_repeat=3)
    replay = make_replay(cfg, spec, "cpu")
    assert replay.capacity == 204 and replay.nbytes() < 64 * 1024


def test_a_second_run_plans_on_memory_the_first_has_not_touched_yet(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Replay pages are claimed lazily: planning subtracts other live runs' recorded buffers."""
    monkeypatch.setattr("pixel_ddpg.replay_memory._registry", lambda: tmp_path)
    spec = synth_spec(pixels=True, num_envs=1, channels=9)
    per = bytes_per_transition(spec)
    monkeypatch.setattr("pixel_ddpg.replay_memory.free_bytes", lambda device: 1000 * per)
    parent = os.getppid()  # a live process standing in for a run started earlier
    (tmp_path / f"{parent}.bytes").write_text(str(600 * per))
    (tmp_path / "999999999.bytes").write_text(str(10**12))  # a dead run's record is ignored and removed
    assert reserved_by_others("cpu") == 600 * per
    assert not (tmp_path / "999999999.bytes").exists()
    cap, _ = plan_capacity("auto", spec, "cpu", max_transitions=10**6, memory_fraction=0.5)
    assert cap == 200  # half of the 400 transitions left
    replay = ReplayBuffer(spec, 100, verbose=False)
    assert int((tmp_path / f"{os.getpid()}.bytes").read_text()) >= replay.nbytes()


# ---------------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_gives_identical_samples() -> None:
    spec = synth_spec(pixels=True, num_envs=2, frame_stack=3)
    a = ReplayBuffer(spec, capacity=2 * 10, nstep=3, gamma=GAMMA, seed=7, verbose=False)
    run_synth(a, SynthEnv(spec, [4, 5], [False, True]), None, 23, np.random.default_rng(0))
    a.sample(32)  # move the generator and acceptance estimate off their initial values
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ReplayBuffer(spec, capacity=2 * 10, nstep=3, gamma=GAMMA, seed=99, verbose=False)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.num_added == a.num_added
    for _ in range(3):
        for x, y in zip(a.sample(64), b.sample(64)):
            assert torch.equal(x, y)
    c = ReplayBuffer(spec, capacity=2 * 12, nstep=3, gamma=GAMMA, verbose=False)
    with pytest.raises(UserError, match="slots"):
        c.load_state_dict(a.state_dict())
