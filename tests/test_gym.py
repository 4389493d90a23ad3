"""`env=gym env.id=<id>`: a custom Gymnasium env, defined and registered here, trained end to end."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from envs import EnvSettings, make_env
from envs.errors import ConfigError
from envs.gym_registry import find_spec
from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg.config import compose
from pixel_ddpg.replay import ReplayBuffer
from tests.conftest import check_batch, GAMMA, Reference

MAX_STEPS = 8


class PointReach(gym.Env):
    """A point that must reach a target, drawn with NumPy: it terminates on the target, and
    Gymnasium's TimeLimit truncates it after MAX_STEPS steps."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, render_mode: str | None = None, size: int = 16) -> None:
        self.render_mode, self.size = render_mode, size
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.pos, self.goal]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos, self.goal = self.np_random.uniform(-1, 1, (2, 2))
        self.last = None
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.pos = np.clip(self.pos + 0.5 * np.asarray(action, np.float64), -1, 1)
        dist = float(np.linalg.norm(self.pos - self.goal))
        self.last = (-dist, dist < 0.25)  # what it returned, for the test to compare
        return self._obs(), -dist, dist < 0.25, False, {}

    def render(self) -> np.ndarray:
        img = np.full((self.size, self.size, 3), 40, np.uint8)
        for (x, y), color in ((self.goal, (0, 255, 0)), (self.pos, (255, 0, 0))):
            i, j = (int(round((v + 1) / 2 * (self.size - 1))) for v in (y, x))
            img[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2] = color
        return img


if "PointReach-v0" not in gym.registry:  # imported twice when a test asks for tests.test_gym:PointReach-v0
    gym.register("PointReach-v0", entry_point=PointReach, max_episode_steps=MAX_STEPS)

GYM = ["env=gym", "env.id=PointReach-v0", "+env.kwargs.size=16", "obs.image_size=16", "num_envs=2", "compile=false",
       "amp=false", "device=cpu", "warmup_frames=16", "eval.every_frames=40", "eval.episodes=2", "eval.num_envs=2",
       "log.every_frames=20", "checkpoint.every_frames=40", "agent.batch_size=8", "replay.capacity=2000"]


def settings(**over: object) -> EnvSettings:
    base = dict(name="PointReach-v0", task_id="PointReach-v0", camera_id=-1, obs_type="pixels", image_size=16,
                action_repeat=1, render_substeps=False, frame_stack=2, render="fast", num_envs=2, seed=0,
                episode_sim_steps=MAX_STEPS, backend="gym", gym_kwargs={"size": 16})
    return EnvSettings(**{**base, **over})


def test_replay_holds_what_the_env_returned_and_bootstraps_only_through_truncation():
    rng = np.random.default_rng(0)
    with make_env(settings()) as env:
        spec = env.spec
        assert spec.obs_shape == (6, 16, 16) and spec.action_dim == 2 and (spec.action_high == 1).all()
        inner = [e.unwrapped for e in env._vec.envs]
        replay = ReplayBuffer(spec, capacity=64 * spec.num_envs, nstep=1, gamma=GAMMA, seed=1, verbose=False)
        ref = Reference(spec.num_envs)
        step = env.reset()
        replay.add(step, None)
        ref.add(step, None)
        kinds = {"terminated": [], "truncated": []}
        for _ in range(30):
            # env 0 heads for its target (terminates), env 1 drifts (truncated); every action unique
            toward = np.clip((inner[0].goal - inner[0].pos) / 0.5, -0.99, 0.99)
            action = np.stack([toward, np.zeros(2)]) + rng.uniform(-0.01, 0.01, (2, 2))
            action = action.astype(np.float32)
            step = env.step(action)
            for i, e in enumerate(inner):  # the EnvStep is what the env returned and drew
                np.testing.assert_array_equal(step.obs[i, -3:], e.render().transpose(2, 0, 1))
                if step.first[i]:
                    assert step.reward[i] == 0 and not step.last[i] and e.last is None
                    continue
                reward, terminated = e.last
                assert step.reward[i] == np.float32(reward) and step.terminated[i] == terminated
                if step.terminated[i]:
                    kinds["terminated"].append(action[i].tobytes())
                if step.truncated[i]:
                    kinds["truncated"].append(action[i].tobytes())
            replay.add(step, action)
            ref.add(step, action)
        assert kinds["terminated"] and kinds["truncated"], kinds
        expected = ref.expected(replay.slots, spec.frame_stack, 1, GAMMA)
        batch = replay.sample(512)
        seen = check_batch(batch, expected)  # every sample is a transition the env made
        assert seen == set(expected)
        discount = {a.tobytes(): d for a, d in zip(batch.action.numpy(), batch.discount.numpy())}
        assert all(discount[k] == 0.0 for k in kinds["terminated"])  # termination stops the bootstrap
        assert all(discount[k] == pytest.approx(GAMMA) for k in kinds["truncated"])  # truncation does not


def test_a_tiny_run_trains_checkpoints_resumes_and_evaluates_with_video(tmp_path):
    from pixel_ddpg.evaluate import evaluate
    from pixel_ddpg.trainer import Trainer

    run = tmp_path / "run"
    run.mkdir()
    cfg = compose([*GYM, "total_frames=40"])
    assert cfg.env.name == "PointReach-v0" and cfg.env.kwargs.size == 16
    result = Trainer(cfg, run).train()
    assert result["frame"] == 40 and any(r["critic_loss"] for r in _rows(run / "train.csv"))
    ckpt = ckpt_io.load(run)
    assert ckpt["env_signature"]["task_id"] == "PointReach-v0" and ckpt["env_signature"]["obs_shape"] == [9, 16, 16]
    resumed = ckpt_io.checkpoint_config(ckpt)
    resumed.total_frames = 80
    assert Trainer(resumed, run, resume=ckpt).train()["frame"] == 80
    assert [int(r["frame"]) for r in _rows(run / "eval.csv")] == [0, 40, 80]
    summary = evaluate(compose([f"checkpoint={run}", "episodes=2", f"out_dir={tmp_path / 'ev'}", "video_size=32"],
                               config_name="evaluate"))
    assert len(summary["returns"]) == 2 and all(1 <= n <= MAX_STEPS for n in summary["lengths"])
    assert (tmp_path / "ev" / "episode_000.mp4").stat().st_size > 0


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bad_envs_are_refused_in_one_line():
    assert find_spec("tests.test_gym:PointReach-v0").max_episode_steps == MAX_STEPS  # module:Id imports it
    with pytest.raises(ConfigError, match="is not a registered Gymnasium env.*PointReach-v0"):
        find_spec("PointRaech-v0")
    with pytest.raises(ConfigError, match="action space Discrete.*1-D Box"):
        make_env(settings(task_id="CartPole-v1", gym_kwargs={}))
    with pytest.raises(ConfigError, match="env=gym needs env.id="):
        compose(["env=gym"])
    with pytest.raises(ConfigError, match="obs=pixels_paper"):
        make_env(settings(render_substeps=True, action_repeat=2, frame_stack=1))
