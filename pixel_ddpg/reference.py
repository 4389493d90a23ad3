"""Returns of policies that learned nothing: the floor a learning curve must clear.

A curve means little without them: doing nothing scores 757 on cartpole_balance, and a random
policy scores differently at every action repeat. ``noise`` is the learner's exploration process
alone (``agent.noise`` at its first frame, around a zero action): on a sparse task it says how
often exploration will put a reward into the replay at all. No policy looks at the observation, so
the envs step without rendering (``obs.type`` state), with the same task, episode length and
action repeat as the training run the overrides describe.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from envs import EnvSettings, make_env
from pixel_ddpg.config import cli
from pixel_ddpg.errors import UserError
from pixel_ddpg.learner import NoiseSettings
from pixel_ddpg.noise import make_noise
from pixel_ddpg.rollout import EpisodeResults, run_episodes

POLICIES = ("random", "zero", "noise")


def _noise_policy(spec: Any, noise_cfg: Any, seed: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The exploration process around a zero action, scaled and clipped to the bounds as the agent does."""
    generator = torch.Generator().manual_seed(seed)
    noise = make_noise(NoiseSettings.from_config(noise_cfg), spec.action_dim, torch.device("cpu"), generator)
    low, high = spec.action_low, spec.action_high
    center, scale = (high + low) / 2, (high - low) / 2

    def policy(obs: np.ndarray, first: np.ndarray) -> np.ndarray:
        eps = noise.sample(spec.num_envs, torch.as_tensor(first), frame=0).numpy()
        return np.clip(center + scale * eps, low, high).astype(np.float32)

    return policy


def reference_returns(settings: EnvSettings, policies: Sequence[str], episodes: int, seed: int = 0,
                      noise_cfg: Any = None) -> dict[str, EpisodeResults]:
    """Each named policy's episode returns on ``settings``' task, action repeat and episode length
    (``noise`` needs the learner's ``agent.noise`` config)."""
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise UserError(f"policies={list(policies)}: {unknown} not known; choose from {list(POLICIES)}")
    if "noise" in policies and noise_cfg is None:
        raise UserError("policies: noise needs the learner's agent.noise config")
    blind = dataclasses.replace(settings, obs_type="state", image_size=0, frame_stack=1, render_substeps=False)
    out: dict[str, EpisodeResults] = {}
    with make_env(blind) as env:
        n, dim = env.spec.num_envs, env.spec.action_dim
        for name in policies:
            rng = np.random.default_rng(seed)
            zeros = np.zeros((n, dim), np.float32)
            if name == "noise":
                policy = _noise_policy(env.spec, noise_cfg, seed)
            elif name == "random":
                policy = lambda obs, first: env.spec.random_actions(rng)  # noqa: E731
            else:
                policy = lambda obs, first: zeros  # noqa: E731
            out[name] = run_episodes(env, policy, episodes)
    return out


def run(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    episodes = int(cfg.episodes)
    if episodes < 1:
        raise UserError(f"episodes={cfg.episodes} must be at least 1")
    settings = EnvSettings.from_config(cfg, seed=int(cfg.seed))
    settings = dataclasses.replace(settings, num_envs=min(episodes, int(cfg.eval.num_envs)))
    results = reference_returns(settings, list(cfg.policies), episodes, seed=int(cfg.seed), noise_cfg=cfg.agent.noise)
    table = {name: {"return_mean": r.mean, "return_std": r.std, "episodes": len(r.returns),
                    "length_mean": float(np.mean(r.lengths)),
                    "rewarded_share": r.rewarded_share,
                    # per episode, in the order evaluate's eval.json lists them for the same seed and num_envs:
                    # which starts a policy that learned nothing already wins (ball_in_cup's floor catches)
                    "returns": r.returns} for name, r in results.items()}
    for name, row in table.items():
        print(f"{cfg.env.name} {name:>6}: {row['return_mean']:.1f} ± {row['return_std']:.1f} over "
              f"{row['episodes']} episodes (action repeat {settings.action_repeat}, "
              f"{row['length_mean']:.0f} agent steps; {row['rewarded_share']:.0%} with any reward)", flush=True)
    if cfg.out:
        doc = {"task_id": settings.task_id, "action_repeat": settings.action_repeat,
               "episode_sim_steps": settings.episode_sim_steps, "seed": int(cfg.seed), "policies": table}
        Path(str(cfg.out)).write_text(json.dumps(doc, indent=2) + "\n")
    return table


def main() -> None:
    cli(run, config_name="reference")()


if __name__ == "__main__":
    main()
