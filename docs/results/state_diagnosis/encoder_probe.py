"""What a pixel checkpoint's encoder knows about the simulator's state: a linear read-out (probe).

The state learner with the pixel learner's heads scores far above the pixel learner on some tasks
(ball_in_cup_catch 620 against 220 over 20 starts at the same batch and updates): the difference is
what the conv encoder passes on. This script rolls the checkpoint's own policy (with its exploration
noise at the end of its schedule, so the states are near the ones its replay holds) in the run's pixel
env and, step for step, in the same task's state env with the same seed and actions (MuJoCo is
deterministic: the two simulate the same states, which the script checks through the rewards, which
must agree at every step). Then it fits ridge regressions from features to each state variable and
reports their R^2 on episodes they were not fitted on (4 folds of whole envs, the ridge chosen by
cross-validation inside each):

- ``conv``: the encoder's flattened conv output (what the heads' trunks read);
- ``critic trunk`` / ``actor trunk``: the 50 features after Linear -> LayerNorm -> tanh;
- ``conv, untrained``: the same encoder freshly initialised (the run's seed): what the architecture
  passes on before any learning, the baseline for "the training threw it away".

    python docs/results/state_diagnosis/encoder_probe.py <run dir or checkpoint> [--steps 250] [--envs 32] [--cache F.npz]

Prints a markdown table: one row per feature set, one column per state variable (walker: per group of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs import EnvSettings, make_env
from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg.agent import make_agent
from pixel_ddpg.device import resolve_precision

STATE_NAMES = {  # dm_control's observation order (the state env's vector)
    "ball_in_cup": ["cup x", "cup z", "ball x", "ball z", "cup vx", "cup vz", "ball vx", "ball vz"],
}
# Tasks with many state variables: one column per group, the mean of its variables' R^2 (column slices).
STATE_GROUPS = {
    "walker": {"orientations (14)": slice(0, 14), "torso height": slice(14, 15),
               "torso velocity (z, x, angle)": slice(15, 18), "joint velocities (6)": slice(18, 24)},
}
RIDGE = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # chosen per state variable by cross-validation on the training envs


def rollout(path: str, steps: int, num_envs: int) -> dict[str, Any]:
    """State vectors and feature sets of ``steps`` agent steps in each of ``num_envs`` envs (rows step-major)."""
    ckpt = ckpt_io.load(ckpt_io.find_checkpoint(path))
    cfg = ckpt_io.checkpoint_config(ckpt)
    precision = resolve_precision("cpu", "false", "bfloat16", "false")
    torch.set_num_threads(1)
    seed = 4242
    pix = EnvSettings.from_config(cfg, num_envs=num_envs, seed=seed)
    state = dataclasses.replace(pix, obs_type="state", frame_stack=1, render_substeps=False)
    obs_px, obs_st, rew_diff, rew_sum = [], [], 0.0, 0.0
    with make_env(pix) as env_px, make_env(state) as env_st:
        agent = make_agent(cfg.agent, env_px.spec, precision, seed)
        ckpt_io.restore_agent(agent, ckpt, ckpt_io.env_signature(pix, env_px.spec), generator=False)
        fresh = make_agent(cfg.agent, env_px.spec, precision, int(cfg.seed))
        a, b = env_px.reset(), env_st.reset()
        first = np.ones(num_envs, dtype=bool)
        for _ in range(steps):
            obs_px.append(np.asarray(a.obs).copy())
            obs_st.append(np.asarray(b.obs, dtype=np.float32).copy())
            with torch.no_grad():
                act = agent.act(torch.as_tensor(a.obs), explore=True, first=torch.as_tensor(first),
                                frame=int(cfg.total_frames)).numpy()
            a, b = env_px.step(act), env_st.step(act)
            rew_diff = max(rew_diff, float(np.abs(a.reward - b.reward).max()))
            rew_sum += float(np.asarray(b.reward).sum())
            first = np.asarray(a.first)
    px = np.concatenate(obs_px)
    feats = {}
    with torch.no_grad():
        for name, ag in (("conv", agent), ("conv, untrained", fresh)):
            feats[name] = torch.cat([ag.encoder(torch.as_tensor(px[i:i + 256])) for i in range(0, len(px), 256)]).numpy()
        conv = torch.as_tensor(feats["conv"])
        feats["critic trunk"] = agent.critic.trunk(conv).numpy()
        feats["actor trunk"] = agent.actor.trunk(conv).numpy()
    print(f"checkpoint frame {int(ckpt['counters']['frame'])}, {len(px)} steps; largest |reward difference| "
          f"between the paired envs: {rew_diff:.2e} (reward summed over all steps: {rew_sum:.1f})", file=sys.stderr)
    return {"state": np.concatenate(obs_st), "feats": feats, "task": str(cfg.env.name)}


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    return np.linalg.solve(x.T @ x + lam * len(x) * np.eye(x.shape[1]), x.T @ y)


def _r2(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def _fit_predict(x: np.ndarray, y: np.ndarray, train: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Predictions for ``~train`` from a ridge fitted on ``train``, its strength chosen per column by
    3-fold cross-validation over the training envs (``groups``)."""
    keep = x[train].std(0) > 1e-6  # features constant over the training steps (dead channels) say nothing
    mu, sd = x[train][:, keep].mean(0), x[train][:, keep].std(0)
    sd = sd + 0.1 * sd.mean()  # a feature nearly constant in training is not blown up to unit variance
    xs = (x[:, keep] - mu) / sd
    y_mean = y[train].mean(0)  # centred features and targets: the ridge never shrinks the mean
    xt, yt, folds = xs[train], y[train] - y_mean, groups[train] % 3
    cv = np.array([[_r2(xt[folds == f] @ _ridge(xt[folds != f], yt[folds != f], lam), yt[folds == f])
                    for f in range(3)] for lam in RIDGE]).mean(1)  # (ridges, columns)
    pred = np.empty((int((~train).sum()), y.shape[1]))
    for j in range(y.shape[1]):
        pred[:, j] = xs[~train] @ _ridge(xt, yt[:, j], RIDGE[int(cv[:, j].argmax())]) + y_mean[j]
    return pred


def r2_probe(x: np.ndarray, y: np.ndarray, num_envs: int, folds: int = 4) -> np.ndarray:
    """Out-of-fold R^2 of a ridge read-out of each column of ``y`` from ``x``.

    Folds are whole envs (episodes), since the steps of one episode are near copies of each other:
    each quarter of the envs is predicted by a ridge fitted on the other three quarters (its strength
    chosen by cross-validation among those), and R^2 is taken over all the predictions."""
    env = np.arange(len(x)) % num_envs
    pred = np.empty_like(y, dtype=np.float64)
    for f in range(folds):
        test = env % folds == f
        pred[test] = _fit_predict(x, y, ~test, env // folds)
    return _r2(pred, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a pixel run dir or checkpoint file")
    parser.add_argument("--steps", type=int, default=250, help="agent steps per env (250: one episode at repeat 4)")
    parser.add_argument("--envs", type=int, default=32,
                        help="envs (episodes), split into 4 folds; at least 12, so each fold's ridge has 3 to choose by")
    parser.add_argument("--cache", help="an .npz of the rollout's features and states: read if it exists, else written")
    args = parser.parse_args()
    if args.envs < 12:
        parser.error(f"--envs={args.envs}: at least 12 (4 folds of whole envs, 3 more inside each to choose the ridge)")
    source = str(ckpt_io.find_checkpoint(args.checkpoint).resolve())
    if args.cache and Path(args.cache).exists():
        z = np.load(args.cache, allow_pickle=False)
        if str(z["checkpoint"]) != source or z["state"].shape[0] != args.steps * args.envs:
            parser.error(f"--cache {args.cache} holds {z['state'].shape[0]} steps of {z['checkpoint']}, "
                         f"not {args.steps} x {args.envs} of {source}: name another file")
        r = {"state": z["state"], "task": str(z["task"]), "feats": {k[2:]: z[k] for k in z.files if k.startswith("f:")}}
    else:
        r = rollout(args.checkpoint, args.steps, args.envs)
        if args.cache:
            np.savez_compressed(args.cache, checkpoint=source, state=r["state"], task=r["task"],
                                **{f"f:{k}": v for k, v in r["feats"].items()})
    names = STATE_NAMES.get(r["task"], [f"s{i}" for i in range(r["state"].shape[1])])
    y = r["state"]
    if r["task"] == "ball_in_cup":  # the catch is decided by where the ball is against the cup
        y = np.concatenate([y, y[:, 2:4] - y[:, 0:2]], 1)
        names = names + ["ball - cup x", "ball - cup z"]
    groups = STATE_GROUPS.get(r["task"], {n: slice(i, i + 1) for i, n in enumerate(names)})
    print("| features | dims | " + " | ".join(groups) + " |")
    print("|---|---|" + "---|" * len(groups))
    for name, x in r["feats"].items():
        r2 = r2_probe(x, y, args.envs)
        print(f"| {name} | {x.shape[1]} | " + " | ".join(f"{r2[g].mean():.2f}" for g in groups.values()) + " |")


if __name__ == "__main__":
    main()
