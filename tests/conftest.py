"""Shared test helpers, imported by the test modules that use them (``from tests.conftest import
...``): tiny env settings (small images, fast render profile), the tiny training run and its CSV
rows, the evaluate command, agents and batches of made-up specs, synthetic env steps, the replay's
reference transitions, and made-up run dirs for the figures."""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import envs  # noqa: F401  (loads libEGL before anything imports envpool)
from envs import EnvSettings
from envs.pool import EnvSpec, EnvStep
from pixel_ddpg.agent import DDPGAgent, make_agent
from pixel_ddpg.batch import Batch
from pixel_ddpg.config import compose
from pixel_ddpg.device import Precision, usable_cores

ROOT = Path(__file__).resolve().parent.parent

PAPER = dict(
    name="cartpole_balance", task_id="CartpoleBalance-v1", camera_id=0, obs_type="pixels",
    image_size=16, action_repeat=3, render_substeps=True, frame_stack=1, render="fast",
    num_envs=2, seed=0, num_threads="auto", episode_sim_steps=15,
)
DRQV2 = dict(PAPER, image_size=16, action_repeat=2, render_substeps=False, frame_stack=3, episode_sim_steps=10)
STATE = dict(PAPER, obs_type="state", image_size=0, action_repeat=1, render_substeps=False, frame_stack=1)


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` (README's commands) N workers share the cores: each worker's own torch
    ops get its share of them, so that the workers do not oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, usable_cores() // workers))


def tiny(base: dict = PAPER, **over: object) -> EnvSettings:
    return EnvSettings(**{**base, **over})


@pytest.fixture(autouse=True)
def private_replay_registry(tmp_path_factory, monkeypatch):
    """Each test plans CPU replays against its own registry: training runs elsewhere on the
    machine (their replays are recorded for side-by-side planning) must not change a test's plan."""
    registry = tmp_path_factory.mktemp("replay-registry")
    monkeypatch.setattr("pixel_ddpg.replay_memory._registry", lambda: registry)


@pytest.fixture
def settings_factory():
    return tiny


def replace(s: EnvSettings, **over: object) -> EnvSettings:
    return dataclasses.replace(s, **over)


# ---------------------------------------------------------------------------- tiny training runs
# The DDPG paper's setup (setup=paper), which these plumbing tests were written for; the default
# learner's own smoke run: tests/test_defaults.py.
TINY = [
    "setup=paper", "env=cartpole_balance", "env.episode_sim_steps=30", "num_envs=2", "render=fast", "obs.image_size=16",
    "compile=false", "amp=false", "device=cpu", "warmup_frames=30", "eval.every_frames=120", "eval.episodes=2",
    "eval.num_envs=2", "log.every_frames=30", "checkpoint.every_frames=60", "agent.batch_size=8",
    "agent.state_batch_size=16", "replay.capacity=5000",
]


def train(run_dir: Path, *overrides: str, check: bool = True, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.train", *TINY, f"hydra.run.dir={run_dir}", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def frames(path: Path) -> list[int]:
    return [int(r["frame"]) for r in rows(path)]


# ---------------------------------------------------------------------------- evaluate
def evaluate(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """evaluate on the CPU the test runs trained on, unless a test names the device: with the
    config's ``device: auto`` a GPU machine would evaluate elsewhere (tests/test_cross_device.py)."""
    pin = [] if any(a.startswith("device=") for a in args) else ["device=cpu"]
    return subprocess.run([sys.executable, "-m", "pixel_ddpg.evaluate", *args, *pin], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------- agents and batches of made-up specs
CPU = Precision(torch.device("cpu"), None, False)
PIX = (9, 32, 32)


@functools.lru_cache(maxsize=None)
def _cfg(overrides: tuple[str, ...]):
    # The paper's setup with the base learner (agent=ddpg: no batch norm, no L2), which these tests
    # were written for; the paper's own (agent=ddpg_paper) has its tests in tests/test_published.py.
    return compose(["setup=paper", "agent=ddpg", *overrides])


def spec(obs_shape=PIX, action_dim=3, low=None, high=None, num_envs=4) -> EnvSpec:
    low = -np.ones(action_dim, np.float32) if low is None else np.asarray(low, np.float32)
    high = np.ones(action_dim, np.float32) if high is None else np.asarray(high, np.float32)
    dtype = np.dtype(np.uint8) if len(obs_shape) == 3 else np.dtype(np.float32)
    return EnvSpec(tuple(obs_shape), dtype, tuple(obs_shape), 1, action_dim, low, high, num_envs, 1, 100)


def agent(*overrides: str, s: EnvSpec | None = None, precision: Precision = CPU, seed: int = 0) -> DDPGAgent:
    return make_agent(_cfg(tuple(overrides)).agent, s or spec(), precision, seed)


def obs_batch(s: EnvSpec, n: int, g: torch.Generator) -> torch.Tensor:
    if s.pixels:
        return torch.randint(0, 256, (n, *s.obs_shape), dtype=torch.uint8, generator=g)
    return torch.randn(n, *s.obs_shape, generator=g)


def batch(s: EnvSpec | None = None, n: int = 8, seed: int = 0) -> Batch:
    s = s or spec()
    g = torch.Generator().manual_seed(seed)
    action = torch.rand(n, s.action_dim, generator=g) * 2 - 1
    return Batch(obs_batch(s, n, g), action, torch.rand(n, generator=g), torch.full((n,), 0.99), obs_batch(s, n, g))


# ---------------------------------------------------------------------------- synthetic env steps
def make_spec(pixels: bool = True) -> EnvSpec:
    """3 envs; pixels: stacks of 3 frames of 3x8x8 (the DrQ-v2 layout), else 5 floats."""
    obs, frame, stack = ((9, 8, 8), (3, 8, 8), 3) if pixels else ((5,), (5,), 1)
    dtype = np.dtype(np.uint8) if pixels else np.dtype(np.float32)
    return EnvSpec(obs, dtype, frame, stack, 2, -np.ones(2, np.float32), np.ones(2, np.float32), 3, 1, 100)


def steps(spec, count: int, seed: int = 0):
    """A reset and ``count`` steps with random frames, actions, rewards and some episode ends."""
    rng = np.random.default_rng(seed)
    n = spec.num_envs
    first = np.ones(n, bool)
    for t in range(count + 1):
        obs = (rng.integers(0, 256, (n, *spec.obs_shape), dtype=np.uint8) if spec.pixels
               else rng.standard_normal((n, *spec.obs_shape)).astype(np.float32))
        last = rng.random(n) < 0.1 if t else np.zeros(n, bool)
        term = last & (rng.random(n) < 0.5)
        step = EnvStep(obs=obs, reward=rng.random(n).astype(np.float32), terminated=term, truncated=last & ~term,
                       first=first.copy())
        yield step, None if t == 0 else rng.uniform(-1, 1, (n, spec.action_dim)).astype(np.float32)
        first = last


# ---------------------------------------------------------------------------- the replay's reference transitions
GAMMA = 0.9


class Reference:
    """The steps as the env produced them; expected transitions computed the obvious way."""

    def __init__(self, num_envs: int) -> None:
        self.steps: list[list[dict]] = [[] for _ in range(num_envs)]

    def add(self, step: EnvStep, action: np.ndarray | None) -> None:
        for i, s in enumerate(self.steps):
            s.append(
                dict(
                    obs=step.obs[i].copy(),
                    action=None if action is None else np.asarray(action[i], np.float32).copy(),
                    reward=float(step.reward[i]),
                    first=bool(step.first[i]),
                    term=bool(step.terminated[i]),
                    last=bool(step.terminated[i] or step.truncated[i]),
                )
            )

    def expected(self, slots: int, frame_stack: int, nstep: int, gamma: float) -> dict[bytes, dict]:
        """Sampleable transitions keyed by the action bytes of a_t (actions are unique)."""
        out = {}
        for steps in self.steps:
            T = len(steps)
            lo = max(0, T - slots)
            for tau in range(lo, T - 1):
                if steps[tau + 1]["first"]:
                    continue  # the step into an auto-reset is not a transition
                ep_start = max(t for t in range(tau + 1) if steps[t]["first"])
                if max(tau - frame_stack + 1, ep_start) < lo:
                    continue  # frame history overwritten by the ring
                reward, k, ended = 0.0, 0, False
                for j in range(1, nstep + 1):
                    if tau + j > T - 1:
                        break
                    if steps[tau + j]["first"]:
                        ended = True
                        break
                    reward += gamma ** (j - 1) * steps[tau + j]["reward"]
                    k = j
                    if steps[tau + j]["last"]:
                        ended = True
                        break
                if k < nstep and not ended:
                    continue  # its n future steps are not written yet
                nxt = steps[tau + k]
                out[steps[tau + 1]["action"].tobytes()] = dict(
                    obs=steps[tau]["obs"],
                    action=steps[tau + 1]["action"],
                    reward=reward,
                    discount=0.0 if nxt["term"] else gamma**k,
                    next_obs=nxt["obs"],
                )
        return out


def check_batch(batch, expected: dict[bytes, dict]) -> set[bytes]:
    """Every sample equals one expected transition; returns the keys seen."""
    obs, act, rew, disc, nxt = (t.cpu().numpy() for t in batch)
    seen = set()
    for b in range(len(act)):
        key = act[b].tobytes()
        assert key in expected, "sampled a transition the env never produced (or one not sampleable)"
        e = expected[key]
        np.testing.assert_array_equal(obs[b], e["obs"])
        np.testing.assert_array_equal(nxt[b], e["next_obs"])
        np.testing.assert_allclose(rew[b], e["reward"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(disc[b], e["discount"], rtol=1e-6, atol=0)
        seen.add(key)
    return seen


# ---------------------------------------------------------------------------- made-up run dirs for the figures
HEADER = "frame,step,return_mean,return_std,episodes,length_mean,wall_s\n"


def make_run(path: Path, frames: list[int], returns: list[float], *, env: str = "cheetah", obs: str = "pixels",
             seed: int | None = 0, lr: float = 1e-3, std: str = "5", agent: str = "ddpg", nstep: int = 1) -> Path:
    """A run dir as the trainer leaves it: eval.csv and (when seed is given) .hydra/config.yaml."""
    path.mkdir(parents=True)
    rows = "".join(f"{f},{f // 3},{r},{std},10,333,{f / 1000}\n" for f, r in zip(frames, returns))
    (path / "eval.csv").write_text(HEADER + rows)
    if seed is not None:
        (path / ".hydra").mkdir()
        (path / ".hydra" / "config.yaml").write_text(
            f"env:\n  name: {env}\n  task_id: X-v1\nobs:\n  type: {obs}\n  image_size: 64\n"
            f"agent:\n  name: {agent}\n  lr: {lr}\n  nstep: {nstep}\nseed: {seed}\ndevice: auto\n"
            f"total_frames: {frames[-1]}\n"
        )
    return path


def assert_async_loop_is_the_sync_loop(tmp_path, device: str) -> None:
    """40 agent steps with updates, once with the collector thread (and on CUDA its own stream) and
    once without: the same replay contents and the same weights, bit for bit."""
    from pixel_ddpg.trainer import AGENT_MODULES, Trainer

    base = ["env=cartpole_balance", "env.episode_sim_steps=64", "obs.image_size=16", "num_envs=2", "render=fast",
            "agent.batch_size=8", "warmup_frames=32", f"device={device}", "compile=false", "amp=false",
            "replay.capacity=400", "log.tensorboard=false", "log.progress=false"]
    runs = []
    for mode in ("true", "false"):
        (tmp_path / mode).mkdir()
        trainer = Trainer(compose([*base, f"async_env={mode}"]), tmp_path / mode)
        try:
            trainer.start()
            assert (trainer._collect_stream is not None) == (mode == "true" and device == "cuda")
            for _ in range(40):
                trainer.iteration()
            assert trainer.agent.updates > 10
            written = trainer.replay.num_added
            stored = {k: v[:written].cpu() for k, v in trainer.replay.tensors().items()}
            weights = {f"{m}.{n}": p.detach().cpu() for m in AGENT_MODULES
                       for n, p in getattr(trainer.agent, m).named_parameters()}
            runs.append((stored, weights))
        finally:
            trainer.close()
    (stored_a, weights_a), (stored_s, weights_s) = runs
    for k in stored_s:
        assert torch.equal(stored_a[k], stored_s[k]), k
    for k in weights_s:
        assert torch.equal(weights_a[k], weights_s[k]), k

