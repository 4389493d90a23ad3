"""envs/: EnvPool batches give exactly the observations, rewards and episode flags we train on."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from envs import ConfigError, EnvSettings, make_env
from envs.egl import import_envpool
from envs.render_profiles import base_path
from tests.conftest import DRQV2, PAPER, ROOT, STATE, tiny


def random_actions(env, rng):
    return rng.uniform(-1, 1, size=(env.spec.num_envs, env.spec.action_dim))


def raw_pool(s: EnvSettings, frame_stack: int = 1):
    """EnvPool with one render per step and no repeat: the ground truth to compare against."""
    envpool = import_envpool()
    standard = envpool.make_spec(s.task_id).config.base_path
    kw = dict(num_envs=s.num_envs, batch_size=s.num_envs, seed=s.seed, max_episode_steps=s.max_episode_steps)
    if s.pixels:
        kw.update(from_pixels=True, render_width=s.image_size, render_height=s.image_size,
                  render_camera_id=s.camera_id, frame_stack=frame_stack, base_path=base_path(s.render, standard))
    return envpool.make_gymnasium(s.task_id, **kw)


@pytest.mark.parametrize("base,shape,dtype", [
    (PAPER, (9, 16, 16), np.uint8),
    (DRQV2, (9, 16, 16), np.uint8),
    (STATE, (5,), np.float32),
])
def test_shapes_and_dtypes(base, shape, dtype):
    with make_env(tiny(base)) as env:
        assert env.spec.obs_shape == shape
        st = env.reset()
        assert st.obs.shape == (2, *shape) and st.obs.dtype == dtype
        st = env.step(np.zeros((2, 1)))
        assert st.obs.shape == (2, *shape) and st.obs.dtype == dtype
        assert st.reward.dtype == np.float32 and st.reward.shape == (2,)
        assert st.terminated.dtype == bool and st.truncated.dtype == bool and st.first.dtype == bool


def test_paper_channels_are_the_renders_after_each_substep_and_rewards_sum():
    s = tiny(PAPER, episode_sim_steps=30)
    rng = np.random.default_rng(1)
    with make_env(s) as env:
        raw = raw_pool(s)
        raw.reset()
        env.reset()
        for _ in range(4):
            a = random_actions(env, rng)
            st = env.step(a)
            renders, rewards = [], np.zeros(2, np.float32)
            for _ in range(3):
                o, r, *_ = raw.step(a)
                renders.append(o)
                rewards += r
            np.testing.assert_array_equal(st.obs, np.concatenate(renders, axis=1))
            np.testing.assert_allclose(st.reward, rewards, rtol=1e-6)
        raw.close()


def test_state_rewards_sum_over_the_repeat():
    s = tiny(STATE, action_repeat=4, episode_sim_steps=40)
    rng = np.random.default_rng(2)
    with make_env(s) as env:
        raw = raw_pool(s)
        raw.reset()
        env.reset()
        for _ in range(3):
            a = random_actions(env, rng)
            st = env.step(a)
            total = sum(raw.step(a)[1] for _ in range(4))
            np.testing.assert_allclose(st.reward, total, rtol=1e-6)


def test_drqv2_stack_rolls_and_restarts_at_episode_start():
    s = tiny(DRQV2)  # 5 agent steps per episode
    rng = np.random.default_rng(3)
    with make_env(s) as env:
        prev = env.reset()
        assert (prev.obs[:, :3] == prev.obs[:, 3:6]).all() and (prev.obs[:, 3:6] == prev.obs[:, 6:]).all()
        restarts = 0
        for _ in range(12):
            st = env.step(random_actions(env, rng))
            for i in range(2):
                if st.first[i]:
                    restarts += 1
                    f = st.obs[i, -3:]
                    assert (st.obs[i] == np.concatenate([f, f, f])).all()
                else:
                    np.testing.assert_array_equal(st.obs[i, :-3], prev.obs[i, 3:])
            prev = st
        assert restarts >= 2


def test_same_seed_same_bytes_and_other_seed_differs():
    rng_actions = np.random.default_rng(4).uniform(-1, 1, size=(5, 2, 1))
    runs = []
    for seed in (7, 7, 8):
        with make_env(tiny(PAPER, seed=seed)) as env:
            obs = [env.reset().obs] + [env.step(a).obs for a in rng_actions]
            runs.append(np.stack(obs))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("base", [PAPER, STATE])
def test_episode_ends_by_truncation_then_autoreset_is_flagged(base):
    s = tiny(base)
    n = s.episode_agent_steps
    with make_env(s) as env:
        env.reset()
        for t in range(1, 3 * (n + 1)):
            st = env.step(np.full((2, 1), 0.5))
            assert not st.terminated.any()  # dm_control ends by time limit only
            in_episode = t % (n + 1)
            if in_episode == 0:  # the step after the last: EnvPool's auto-reset
                assert st.first.all() and (st.reward == 0).all() and not st.truncated.any()
            else:
                assert not st.first.any()
                assert st.truncated.all() == (in_episode == n)


def test_episode_length_is_a_multiple_of_the_repeat():
    s = tiny(PAPER, episode_sim_steps=1000)
    assert s.max_episode_steps == 999 and s.episode_agent_steps == 333


def test_fast_profile_patches_a_copy_of_the_assets():
    envpool = import_envpool()
    standard = envpool.make_spec("CheetahRun-v1").config.base_path
    fast = Path(base_path("fast", standard)) / "mujoco" / "assets_dmc"
    assert 'shadowsize="0"' in (fast / "common" / "visual.xml").read_text()
    assert 'reflectance="0"' in (fast / "common" / "materials.xml").read_text()
    assert 'shadowsize="0"' not in (Path(standard) / "mujoco/assets_dmc/common/visual.xml").read_text()
    assert base_path("standard", standard) == standard


@pytest.mark.parametrize("over,needle", [
    (dict(image_size=0), "obs.image_size=0"),
    (dict(image_size=-4), "obs.image_size=-4"),
    (dict(action_repeat=0), "obs.action_repeat=0"),
    (dict(num_envs=0), "num_envs=0"),
    (dict(obs_type="rgb"), "['pixels', 'state']"),
    (dict(render="pretty"), "['standard', 'fast']"),
    (dict(frame_stack=0), "obs.frame_stack=0"),
    (dict(num_threads=-1), "num_threads=-1"),
    (dict(num_threads="many"), "num_threads='many'"),
])
def test_bad_settings_are_named(over, needle):
    with pytest.raises(ConfigError, match=None) as err:
        tiny(PAPER, **over)
    assert needle in str(err.value)


@pytest.mark.parametrize("base,software,threads,cores,expected", [
    (PAPER, True, "auto", 64, 1),    # software rasterizer: one render at a time, however many cores
    (PAPER, False, "auto", 64, 2),   # a GPU's EGL: one thread per env (tiny() has 2 envs)
    (PAPER, False, "auto", 1, 1),    # ... but no more than the cores this process may use
    (STATE, True, "auto", 8, 2),     # nothing rendered
    (STATE, True, "auto", 1, 1),
    (PAPER, True, 3, 1, 3),          # an explicit number is kept (with a warning, below)
    (PAPER, True, 0, 1, 0),
])
def test_envpool_threads(base, software, threads, cores, expected):
    assert tiny(base, num_threads=threads).envpool_threads(software, cores=cores) == expected


def test_several_render_threads_on_a_software_rasterizer_warn(monkeypatch):
    import envs.pool

    monkeypatch.setattr(envs.pool, "software_rendering", lambda: True)
    with pytest.warns(RuntimeWarning, match="software rasterizer"):
        make_env(tiny(PAPER, num_threads=2)).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_env(tiny(PAPER)).close()
        make_env(tiny(STATE, num_threads=2)).close()


def test_without_a_gpu_egl_is_a_software_rasterizer():
    import torch

    from envs.egl import software_rendering

    if torch.cuda.is_available():
        pytest.skip("a GPU machine: its EGL device may be hardware")
    assert software_rendering() is True


STRESS = """
import sys, time, numpy as np
from envs import make_env
s = tiny(PAPER, num_envs=16, episode_sim_steps=300)
rng, t0 = np.random.default_rng(0), time.time()
with make_env(s) as env:
    env.reset()
    while time.time() - t0 < float(sys.argv[1]):
        env.step(env.spec.random_actions(rng))
print("survived")
"""


@pytest.mark.slow
def test_many_pixel_envs_render_without_crashing():
    # Regression: with one EnvPool thread per env, Mesa 22.3's llvmpipe killed this process
    # (SIGSEGV in swrast_dri.so) after 30, 52 and 83 s in three tries; num_threads=auto survives.
    proc = subprocess.run([sys.executable, "-c", STRESS, "120"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_bad_action_batches_are_refused():
    with make_env(tiny(STATE)) as env:
        env.reset()
        with pytest.raises(ValueError, match=r"shape \(3, 1\); expected \(2, 1\)"):
            env.step(np.zeros((3, 1)))
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.array([[0.0], [np.nan]]))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["env=nope"], "env='nope' is not known; choose one of ['ball_in_cup'"),
    (["obs=rgb"], "obs='rgb' is not known; choose one of ['pixels', 'pixels_drqv2', 'pixels_paper', 'state']"),
    (["render=pretty"], "render='pretty' is not a render profile; choose one of ['auto', 'standard', 'fast']"),
    (["obs.image_size=0"], "obs.image_size=0"),
    (["obs.action_repeat=0"], "obs.action_repeat=0"),
    (["num_envs=0"], "num_envs=0"),
])
def test_cli_config_errors_are_one_line(args, needle, tmp_path):
    proc = run_cli("pixel_ddpg.preview", f"out={tmp_path}/p.png", *args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.png").exists()


def test_missing_egl_is_a_clear_error(tmp_path):
    proc = run_cli("pixel_ddpg.preview", f"out={tmp_path}/p.png", env={"PIXEL_DDPG_EGL_LIBRARY": "libEGL_missing.so.1"})
    assert proc.returncode == 2
    assert "libegl1 libegl-mesa0 libgl1-mesa-dri" in proc.stderr and "Traceback" not in proc.stderr


def test_preview_writes_every_frame_enlarged(tmp_path):
    from PIL import Image

    out = tmp_path / "p.png"
    proc = run_cli("pixel_ddpg.preview", "env=cartpole_balance", "obs=pixels", "render=fast", "obs.image_size=16",
                   "scale=2", "steps=2", f"out={out}")
    assert proc.returncode == 0, proc.stderr
    w, h = Image.open(out).size
    pad = 2 * 2
    assert (w, h) == (3 * 32 + 4 * pad, 32 + 2 * pad)
