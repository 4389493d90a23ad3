"""`python -m pixel_ddpg.evaluate checkpoint=<file or run dir> episodes=N out_dir=DIR`.

``checkpoint=`` may also be a policy written by ``python -m pixel_ddpg.export`` (``policy.pt2``):
it then runs that file as it is, in the env its metadata names (no Q record: it has no critic).

Rebuilds env, obs pipeline, render profile and networks from the checkpoint's own config,
runs N episodes with deterministic actions on a batch of envs, prints the returns and writes
``eval.json`` and an MP4 per recorded episode (the agent's view beside a larger render);
``strip_frames=N`` adds a PNG of N renders spread over the first episode. ``networks=target`` acts
with the target (Polyak-averaged) encoder and actor instead of the online ones (default: what the
run's own evaluations used, ``eval.networks``) and writes to ``frame_<N>_target``. With
``q_record=true`` (the default) it also records the critic's Q against the discounted return
that followed, step by step (``q_record.npz``; bias and correlation in eval.json's ``q``;
:mod:`pixel_ddpg.qestimate` says how time-limit truncation is handled).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from envs import EnvSettings, EnvStep, make_env
from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg import provenance, rundir
from pixel_ddpg.config import cli, ensure_writable_dir
from pixel_ddpg.errors import UserError
from pixel_ddpg.device import resolve_precision, set_cpu_threads
from pixel_ddpg.qestimate import COMPARISONS, RECORD_FILE, QRecorder, check_tolerance, summarize
from pixel_ddpg.rollout import agent_policy, chosen_networks, run_episodes, uses_target


class EpisodeRecorder:
    """Writes the first ``count`` episodes (in the (round, env) order of run_episodes) as MP4s.

    ``strip_at``: frame indexes of the first episode whose renders also go into a PNG strip,
    side by side (a still of the policy for a README or a paper)."""

    def __init__(self, env: Any, out_dir: Path, count: int, size: int, fps: int,
                 strip_at: frozenset[int] = frozenset(), strip_height: int = 128) -> None:
        from pixel_ddpg.video import VideoWriter

        self._writer_cls = VideoWriter
        self.env, self.out_dir, self.count, self.size, self.fps = env, out_dir, count, size, fps
        n = env.spec.num_envs
        self.round = np.zeros(n, dtype=int)  # episode index of each env
        self.frame = np.zeros(n, dtype=int)
        self.writers: dict[int, Any] = {}
        self.paths: list[Path] = []
        self.strip_at, self.strip_height = strip_at, strip_height
        self.strip: list[np.ndarray] = []

    def _episode_id(self, i: int) -> int:
        return int(self.round[i]) * self.env.spec.num_envs + i

    def __call__(self, step: EnvStep, returns: np.ndarray) -> None:
        from pixel_ddpg.video import compose_frame

        n = self.env.spec.num_envs
        for i in range(n):
            eid = self._episode_id(i)
            video = eid < self.count
            still = eid == 0 and int(self.frame[i]) in self.strip_at
            if not (video or still):
                continue
            render = self.env.render([i], self.size)[0]
            if still:
                self.strip.append(render)
            if not video:
                continue
            if i not in self.writers:
                path = self.out_dir / f"episode_{eid:03d}.mp4"
                self.writers[i] = self._writer_cls(path, fps=self.fps).__enter__()
                self.paths.append(path)
            obs = step.obs[i] if self.env.spec.pixels else None
            self.writers[i].write(compose_frame(obs, render, int(self.frame[i]), float(returns[i])))
        self.frame += 1
        for i in np.flatnonzero(step.last):
            if i in self.writers:
                self.writers.pop(i).__exit__(None, None, None)
            self.round[i] += 1
            self.frame[i] = 0  # the auto-reset step that follows is the next episode's frame 0

    def close(self) -> None:
        for w in self.writers.values():
            w.__exit__(None, None, None)
        self.writers.clear()

    def write_strip(self) -> Path | None:
        """``episode_000_strip.png``: the first episode's chosen renders, left to right."""
        if not self.strip:
            return None
        from PIL import Image

        h = self.strip_height
        tiles = [Image.fromarray(f).resize((round(f.shape[1] * h / f.shape[0]), h), Image.LANCZOS) for f in self.strip]
        canvas = Image.new("RGB", (sum(t.width for t in tiles), h))
        x = 0
        for t in tiles:
            canvas.paste(t, (x, 0))
            x += t.width
        path = self.out_dir / "episode_000_strip.png"
        canvas.save(path, optimize=True)
        return path


def strip_frames(count: int, episode_steps: int) -> frozenset[int]:
    """``count`` frame indexes spread evenly over an episode (frame 0 is the reset, the last the end)."""
    if count <= 0:
        return frozenset()
    return frozenset(int(round(x)) for x in np.linspace(0, episode_steps, count)) if count > 1 else frozenset({0})


def _chain(hooks: list[Callable[[EnvStep, np.ndarray], None]]) -> Callable[[EnvStep, np.ndarray], None] | None:
    if not hooks:
        return None

    def on_step(step: EnvStep, returns: np.ndarray) -> None:
        for hook in hooks:
            hook(step, returns)

    return on_step


def _write_q_record(qrec: QRecorder, lengths: list[int], summary: dict[str, Any], out: Path,
                    tolerance: float | None) -> dict[str, Any]:
    """q_record.npz beside eval.json, and eval.json's ``q`` entry (see :mod:`pixel_ddpg.qestimate`)."""
    meta = {"checkpoint": summary["checkpoint"], "checkpoint_frame": summary["checkpoint_frame"],
            "env": summary["env"], "obs": summary["obs"]}
    record = qrec.record(summary["episodes"], lengths, meta)
    q = summarize(record, tolerance)
    record.save(out / RECORD_FILE)
    for name in COMPARISONS:
        c = q[name]
        if c["steps"]:
            corr = "n/a" if c["correlation"] is None else f"{c['correlation']:.3f}"
            print(f"Q vs return ({name}, {c['steps']} steps): bias {c['bias']:+.2f}, correlation {corr}")
        else:
            print(f"Q vs return ({name}): no steps (the tail after the time limit weighs gamma^k >= {tolerance} "
                  f"at every step: episodes are shorter than {q['horizon_steps']} agent steps)")
    return q


def _exported_policy(module: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """An exported policy (:mod:`pixel_ddpg.export`) as :func:`run_episodes` calls a policy."""
    import torch

    def act(obs: np.ndarray, first: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(obs)).float().numpy()

    return act


def _source(path: str) -> dict[str, Any]:
    """What ``checkpoint=`` points at, as evaluate needs it: a checkpoint (networks rebuilt from its
    config), or a policy written by ``python -m pixel_ddpg.export`` (run as it is, so a user checks
    the very file they ship: no critic, so no Q record)."""
    from pixel_ddpg.export import is_exported, load_exported

    if is_exported(path):
        module, meta = load_exported(path)
        p = Path(path).expanduser().resolve()
        return {"exported": module, "path": p, "config": OmegaConf.create(meta["config"]),
                "networks": meta.get("networks", "online"),
                "frame": int(meta["checkpoint_frame"]), "provenance": meta.get("provenance"),
                "env_signature": meta["env_signature"], "run_dir": None, "out": p.parent / rundir.EVAL_DIR / p.stem}
    ckpt = ckpt_io.load(path)
    run_dir = rundir.run_dir_of(ckpt["path"])
    return {"checkpoint": ckpt, "path": ckpt["path"], "config": ckpt_io.checkpoint_config(ckpt),
            "frame": int(ckpt["counters"]["frame"]), "provenance": ckpt.get("provenance"),
            "env_signature": ckpt["env_signature"], "run_dir": run_dir,
            "out": run_dir / rundir.EVAL_DIR / f"frame_{ckpt['counters']['frame']}"}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from pixel_ddpg.agent import make_agent
    from pixel_ddpg.trainer import EVAL_SEED_OFFSET

    episodes = int(cfg.episodes)
    if episodes < 1:
        raise UserError(f"episodes={episodes} must be at least 1")
    if int(cfg.strip_frames) < 0:
        raise UserError(f"strip_frames={cfg.strip_frames} must be zero or a positive whole number")
    if cfg.networks is not None:
        uses_target(cfg.networks, "networks")  # a bad value fails before the checkpoint loads
    src = _source(str(cfg.checkpoint))
    exported = "exported" in src
    if exported and cfg.plot:
        raise UserError(f"plot=true needs a run's eval.csv; {src['path']} is an exported policy: "
                        "point checkpoint= at the run dir to plot")
    train_cfg = src["config"]
    if exported:
        if cfg.networks is not None:
            raise UserError(f"networks={cfg.networks}: {src['path']} is an exported policy, which holds the one set "
                            "of networks chosen at export; point checkpoint= at the run's checkpoint to choose")
        networks, target = src["networks"], False  # the file runs as it is
    else:
        networks, target = chosen_networks(cfg.networks, train_cfg)
    q_record = bool(cfg.q_record) and not exported  # an exported policy has no critic
    tolerance = check_tolerance(cfg.q_tail_tolerance) if q_record else None
    warning = provenance.mismatch_warning(src["provenance"], str(src["path"]))
    if warning:
        print(warning, file=sys.stderr)
    run_dir = src["run_dir"]
    if cfg.plot:
        from pixel_ddpg.plot import load_run

        load_run(run_dir)  # no eval.csv to plot: say so before any episode runs
    default_out = src["out"].with_name(src["out"].name + "_target") if target else src["out"]
    out = ensure_writable_dir(Path(str(cfg.out_dir)) if cfg.out_dir else default_out, "out_dir")
    precision = resolve_precision("cpu" if exported else cfg.device, "false", "bfloat16", "false")
    set_cpu_threads(precision.device, train_cfg.get("torch_threads", "auto"))
    seed = int(cfg.seed) if cfg.seed is not None else (int(train_cfg.seed) + EVAL_SEED_OFFSET) % 2**31
    num_envs = int(cfg.num_envs) if cfg.num_envs is not None else min(episodes, int(train_cfg.eval.num_envs))
    settings = EnvSettings.from_config(train_cfg, num_envs=num_envs, seed=seed)
    with make_env(settings) as env:
        env_sig = ckpt_io.env_signature(settings, env.spec)
        qrec = None
        if exported:
            ckpt_io.check_signature("env", src["env_signature"], env_sig, src["path"])
            policy = _exported_policy(src["exported"])
        else:
            agent = make_agent(train_cfg.agent, env.spec, precision, seed)
            ckpt_io.restore_agent(agent, src["checkpoint"], env_sig, generator=False)  # deterministic actions draw nothing
            policy = agent_policy(agent, precision.device, target=target)
            qrec = QRecorder(agent, num_envs, gamma=agent.settings.sampling.gamma, target=target) if q_record else None
        recorder = None
        strip_at = strip_frames(int(cfg.strip_frames), settings.episode_agent_steps)
        if (cfg.video and int(cfg.video_episodes) > 0) or strip_at:
            recorder = EpisodeRecorder(env, out, min(int(cfg.video_episodes), episodes) if cfg.video else 0,
                                       int(cfg.video_size), int(cfg.video_fps), strip_at, int(cfg.strip_height))
        hooks = [h for h in (recorder, qrec.on_step if qrec else None) if h is not None]
        try:
            res = run_episodes(env, qrec.wrap(policy) if qrec else policy, episodes, on_step=_chain(hooks))
        finally:
            if recorder is not None:
                recorder.close()
    for i, (ret, length) in enumerate(zip(res.returns, res.lengths)):
        print(f"episode {i:3d}: return {ret:8.2f}  ({length} steps)")
    print(f"{settings.task_id} {settings.obs_type}: return {res.mean:.2f} ± {res.std:.2f} over {episodes} episodes")
    summary = {
        "env": settings.name, "task_id": settings.task_id, "obs": settings.obs_type, "render": settings.render,
        "checkpoint": str(src["path"]), "checkpoint_frame": src["frame"], "seed": seed,
        "policy": "exported" if exported else "checkpoint",
        "networks": networks,
        "episodes": episodes, "returns": res.returns, "lengths": res.lengths, "mean": res.mean, "std": res.std,
        "videos": [p.name for p in (recorder.paths if recorder else [])],
    }
    strip = recorder.write_strip() if recorder is not None else None
    if strip is not None:
        summary["strip"] = strip.name
    if qrec is not None:
        summary["q"] = _write_q_record(qrec, res.lengths, summary, out, tolerance)
    if cfg.plot:
        from pixel_ddpg.plot import plot_runs

        summary["plot"] = str(plot_runs([run_dir], out / "curve.png"))
    path = rundir.write_bytes_atomic(json.dumps(summary, indent=2).encode(), out / rundir.EVAL_JSON)
    print(f"wrote {path}" + (f" and {len(summary['videos'])} video(s)" if summary["videos"] else ""))
    return summary


main = cli(evaluate, config_name="evaluate")

if __name__ == "__main__":
    main()
