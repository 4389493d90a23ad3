"""`python -m pixel_ddpg.export`: the encoder and actor as one torch.export program that runs without pixel_ddpg."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg.config import compose
from pixel_ddpg.errors import UserError
from tests.conftest import TINY

# Runs in a fresh interpreter: torch and NumPy only, and it proves it never imported pixel_ddpg.
LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    extra = {"pixel_ddpg.json": ""}
    policy = torch.export.load(sys.argv[1], extra_files=extra).module()
    meta = json.loads(extra["pixel_ddpg.json"])
    rec = np.load(sys.argv[2])
    obs = torch.as_tensor(rec["obs"])
    assert list(obs.shape[1:]) == meta["observation"]["shape"] and str(obs.dtype) == "torch.uint8"
    with torch.no_grad():
        out = {"batch": policy(obs).numpy(), "one": policy(obs[:1]).numpy()}
        if torch.cuda.is_available():
            out["cuda"] = policy.to("cuda")(obs.cuda()).cpu().numpy()
    onnx_path = sys.argv[1][:-4] + ".onnx"
    try:
        import onnx
        from onnx.reference import ReferenceEvaluator
    except ImportError:
        pass
    else:
        model = onnx.load(onnx_path)
        onnx.checker.check_model(model)
        out["onnx"] = ReferenceEvaluator(model).run(None, {"obs": rec["obs"]})[0]
    np.savez(sys.argv[3], low=np.array(meta["action"]["low"]), high=np.array(meta["action"]["high"]), **out)
    assert not any(m.startswith(("pixel_ddpg", "envs")) for m in sys.modules), "the loader imported the package"
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A tiny trained run (the paper's learner: batch norm, so running statistics matter), its
    export, and the agent's deterministic actions on observations recorded from its env."""
    from envs import EnvSettings, make_env
    from pixel_ddpg.agent import make_agent
    from pixel_ddpg.device import resolve_precision
    from pixel_ddpg.export import export
    from pixel_ddpg.trainer import Trainer

    root = tmp_path_factory.mktemp("export")
    run = root / "run"
    run.mkdir()
    Trainer(compose([*TINY, "obs=pixels", "total_frames=120", "eval.every_frames=1000"]), run).train()
    out = root / "policy.pt2"
    export(compose([f"checkpoint={run}", f"out={out}"], config_name="export"))
    ckpt = ckpt_io.load(run)
    cfg = ckpt_io.checkpoint_config(ckpt)
    with make_env(EnvSettings.from_config(cfg, num_envs=2, seed=7)) as env:
        agent = make_agent(cfg.agent, env.spec, resolve_precision("cpu", "false", "bfloat16", "false"), 0)
        agent.load_state_dict(ckpt["agent"])
        step, obs, actions = env.reset(), [], []
        rng = np.random.default_rng(0)
        for _ in range(6):
            obs.append(step.obs)
            actions.append(agent.act(torch.as_tensor(step.obs), explore=False).numpy())
            step = env.step(env.spec.random_actions(rng))
    np.savez(root / "recorded.npz", obs=np.concatenate(obs), actions=np.concatenate(actions))
    return {"run": run, "out": out, "root": root, "spec": env.spec}


def test_the_exported_policy_runs_without_pixel_ddpg_and_matches_the_agent(exported):
    root = exported["root"]
    (root / "loader.py").write_text(LOADER)
    proc = subprocess.run([sys.executable, str(root / "loader.py"), str(exported["out"]), str(root / "recorded.npz"),
                           str(root / "actions.npz")], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})  # no PYTHONPATH: the package is not on its path
    assert proc.returncode == 0, proc.stdout + proc.stderr
    want = np.load(root / "recorded.npz")["actions"]
    got = np.load(root / "actions.npz")
    np.testing.assert_allclose(got["batch"], want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["one"], want[:1], atol=1e-5, rtol=0)
    assert (got["batch"] >= got["low"]).all() and (got["batch"] <= got["high"]).all()
    from pixel_ddpg.export import onnx_available

    assert ("onnx" in got) == onnx_available()
    for name in ("cuda", "onnx"):
        if name in got:
            np.testing.assert_allclose(got[name], want, atol=1e-4, rtol=0)


def test_metadata_names_observation_bounds_and_provenance(exported):
    from pixel_ddpg.export import load_exported

    _, meta = load_exported(exported["out"])
    spec = exported["spec"]
    assert meta["observation"]["shape"] == list(spec.obs_shape) and meta["observation"]["dtype"] == "uint8"
    assert meta["action"]["low"] == [float(x) for x in spec.action_low] and meta["action"]["dim"] == spec.action_dim
    assert meta["env"]["task_id"] == "CartpoleBalance-v1" and meta["checkpoint_frame"] == ckpt_io.load(exported["run"])["counters"]["frame"]
    assert meta["provenance"]["torch"] and meta["exported_with"]["pixel_ddpg"]


def test_evaluate_on_the_exported_file_reproduces_the_checkpoints_returns(exported, tmp_path):
    from pixel_ddpg.evaluate import evaluate

    common = ["episodes=3", "video_size=32"]
    a = evaluate(compose([f"checkpoint={exported['run']}", f"out_dir={tmp_path / 'a'}", *common],
                         config_name="evaluate"))
    b = evaluate(compose([f"checkpoint={exported['out']}", f"out_dir={tmp_path / 'b'}", *common],
                         config_name="evaluate"))
    assert b["policy"] == "exported" and "q" not in b and b["videos"] == ["episode_000.mp4"]
    np.testing.assert_allclose(b["returns"], a["returns"], atol=1e-4)
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["checkpoint"] == str(exported["out"])


def test_networks_target_exports_the_polyak_averaged_encoder_and_actor(exported, tmp_path):
    from envs import EnvSettings, make_env
    from pixel_ddpg.agent import make_agent
    from pixel_ddpg.device import resolve_precision
    from pixel_ddpg.export import export, load_exported

    out = tmp_path / "target.pt2"
    export(compose([f"checkpoint={exported['run']}", f"out={out}", "networks=target", "onnx=false"],
                   config_name="export"))
    module, meta = load_exported(out)
    assert meta["networks"] == "target" and load_exported(exported["out"])[1]["networks"] == "online"
    ckpt = ckpt_io.load(exported["run"])
    cfg = ckpt_io.checkpoint_config(ckpt)
    obs = np.load(exported["root"] / "recorded.npz")["obs"]
    with make_env(EnvSettings.from_config(cfg, num_envs=2, seed=7)) as env:
        agent = make_agent(cfg.agent, env.spec, resolve_precision("cpu", "false", "bfloat16", "false"), 0)
    agent.load_state_dict(ckpt["agent"])
    want = agent.act(torch.as_tensor(obs), explore=False, target=True).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.as_tensor(obs)).numpy(), want, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="networks='ema': must be one of online, target"):
        export(compose([f"checkpoint={exported['run']}", f"out={tmp_path / 'x.pt2'}", "networks=ema"],
                       config_name="export"))
    assert not (tmp_path / "x.pt2").exists()
    from pixel_ddpg.evaluate import evaluate

    with pytest.raises(UserError, match="exported policy, which holds the one set of networks chosen at export"):
        evaluate(compose([f"checkpoint={out}", "networks=online", f"out_dir={tmp_path / 'ev'}"], config_name="evaluate"))
    assert not (tmp_path / "ev").exists()


def test_bad_requests_are_one_line(tmp_path, exported):
    from pixel_ddpg.export import export, load_exported

    with pytest.raises(UserError, match="must end in .pt2"):
        export(compose([f"checkpoint={exported['run']}", f"out={tmp_path / 'p.onnx'}"], config_name="export"))
    with pytest.raises(UserError, match="not a pixel_ddpg checkpoint|not a readable"):
        export(compose([f"checkpoint={exported['out']}", f"out={tmp_path / 'p.pt2'}"], config_name="export"))
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable exported"):
        load_exported(junk)
