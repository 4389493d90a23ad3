"""Running whole episodes with a fixed policy: evaluation during training and the evaluate command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from envs import EnvStep, VecEnv
from pixel_ddpg.errors import UserError

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (obs, first) -> actions


@dataclass
class EpisodeResults:
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # agent steps
    stopped: bool = False  # ``should_stop`` ended the run early: the returns are incomplete

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def std(self) -> float:
        return float(np.std(self.returns)) if self.returns else float("nan")

    @property
    def max(self) -> float:
        return float(np.max(self.returns)) if self.returns else float("nan")

    @property
    def rewarded_share(self) -> float:
        """The share with a positive return: any reward at all, where rewards are never negative (as
        dm_control's). On a sparse task, how often a policy or its exploration finds the reward."""
        return float(np.mean(np.asarray(self.returns) > 0)) if self.returns else float("nan")


# Which encoder and actor evaluation acts with: the online ones, or the target (Polyak-averaged) copies.
NETWORKS = ("online", "target")


def uses_target(networks: object, key: str = "eval.networks") -> bool:
    """True for ``target``; ``online`` (or None: a config from before the key existed) is False.
    Anything else is refused here, before an env or a checkpoint is touched."""
    if networks is None:
        return False
    if networks not in NETWORKS:
        raise UserError(f"{key}={networks!r}: must be one of {', '.join(NETWORKS)}")
    return networks == "target"


def chosen_networks(override: object, train_cfg: Any) -> tuple[str, bool]:
    """(name, target) of the networks evaluate and export act with: ``networks=`` when given, else
    the run's own ``eval.networks``, so the file a user ships is the policy its evaluations scored."""
    if override is not None:
        return str(override), uses_target(override, "networks")
    networks = train_cfg.eval.get("networks") or "online"
    return str(networks), uses_target(networks, "the checkpoint's eval.networks")


def agent_policy(agent: object, device: torch.device, target: bool = False) -> Policy:
    """Deterministic actions from the agent (no noise, batch-norm running statistics); ``target``
    acts with the Polyak-averaged encoder and actor."""

    def act(obs: np.ndarray, first: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            action = agent.act(torch.as_tensor(obs, device=device), explore=False,  # type: ignore[attr-defined]
                               target=target)
        return action.float().cpu().numpy()

    return act


def episode_quota(num_envs: int, episodes: int) -> np.ndarray:
    """How many of the ``episodes`` each env runs: env i takes one more while they do not divide."""
    return np.array([episodes // num_envs + (i < episodes % num_envs) for i in range(num_envs)])


def run_episodes(env: VecEnv, policy: Policy, episodes: int,
                 on_step: Callable[[EnvStep, np.ndarray], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> EpisodeResults:
    """Run ``episodes`` whole episodes over the env batch (env i runs its share in turn).

    Returns are in (round, env) order, so they do not favour short episodes. ``on_step``
    sees every step and the running returns (for videos). ``should_stop`` is asked before
    each step (a Ctrl-C during an evaluation): when true, the episodes finished so far come
    back with ``stopped`` set.
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes} must be at least 1")
    n = env.spec.num_envs
    quota = episode_quota(n, episodes)
    per_env: list[list[tuple[float, int]]] = [[] for _ in range(n)]
    ep_return = np.zeros(n, np.float64)
    ep_length = np.zeros(n, np.int64)
    step = env.reset()
    if on_step is not None:
        on_step(step, ep_return)
    stopped = False
    while any(len(per_env[i]) < quota[i] for i in range(n)):
        if should_stop is not None and should_stop():
            stopped = True
            break
        step = env.step(policy(step.obs, step.first))
        live = ~step.first
        ep_return[live] += step.reward[live]
        ep_length[live] += 1
        if on_step is not None:
            on_step(step, ep_return)
        for i in np.flatnonzero(step.last):
            if len(per_env[i]) < quota[i]:
                per_env[i].append((float(ep_return[i]), int(ep_length[i])))
        ep_return[step.last] = 0.0
        ep_length[step.last] = 0
    results = EpisodeResults(stopped=stopped)
    for r in range(int(quota.max())):
        for i in range(n):
            if r < len(per_env[i]):
                results.returns.append(per_env[i][r][0])
                results.lengths.append(per_env[i][r][1])
    return results
