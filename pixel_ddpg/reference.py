"""Returns of policies that learned nothing: the floor a learning curve must clear.

A curve means little without them: doing nothing scores 757 on cartpole_balance, and a random
policy scores differently at every action repeat. Neither policy looks at the observation, so
the envs step without rendering (``obs.type`` state), with the same task, episode length and
action repeat as the training run the overrides describe.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from envs import EnvSettings, make_env
from pixel_ddpg.config import UserError, cli
from pixel_ddpg.rollout import EpisodeResults, run_episodes

POLICIES = ("random", "zero")


def reference_returns(settings: EnvSettings, policies: Sequence[str], episodes: int,
                      seed: int = 0) -> dict[str, EpisodeResults]:
    """Each named policy's episode returns on ``settings``' task, action repeat and episode length."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise UserError(f"policies={list(policies)}: {unknown} not known; choose from {list(POLICIES)}")
    blind = dataclasses.replace(settings, obs_type="state", image_size=0, frame_stack=1, render_substeps=False)
    out: dict[str, EpisodeResults] = {}
    with make_env(blind) as env:
        n, dim = env.spec.num_envs, env.spec.action_dim
        for name in policies:
            rng = np.random.default_rng(seed)
            zeros = np.zeros((n, dim), np.float32)
            policy = (lambda obs, first: env.spec.random_actions(rng)) if name == "random" else (
                lambda obs, first: zeros)
            out[name] = run_episodes(env, policy, episodes)
    return out


def run(cfg: DictConfig) -> dict[str, dict[str, float]]:
    episodes = int(cfg.episodes)
    if episodes < 1:
        raise UserError(f"episodes={cfg.episodes} must be at least 1")
    settings = EnvSettings.from_config(cfg, seed=int(cfg.seed))
    settings = dataclasses.replace(settings, num_envs=min(episodes, int(cfg.eval.num_envs)))
    results = reference_returns(settings, list(cfg.policies), episodes, seed=int(cfg.seed))
    table = {name: {"return_mean": r.mean, "return_std": r.std, "episodes": len(r.returns),
                    "length_mean": float(np.mean(r.lengths))} for name, r in results.items()}
    for name, row in table.items():
        print(f"{cfg.env.name} {name:>6}: {row['return_mean']:.1f} ± {row['return_std']:.1f} over "
              f"{row['episodes']} episodes (action repeat {settings.action_repeat}, "
              f"{row['length_mean']:.0f} agent steps)", flush=True)
    if cfg.out:
        doc = {"task_id": settings.task_id, "action_repeat": settings.action_repeat,
               "episode_sim_steps": settings.episode_sim_steps, "seed": int(cfg.seed), "policies": table}
        Path(str(cfg.out)).write_text(json.dumps(doc, indent=2) + "\n")
    return table


def main() -> None:
    cli(run, config_name="reference")()


if __name__ == "__main__":
    main()
