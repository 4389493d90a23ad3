"""The critic's estimate against the return that followed: the DDPG paper's Figure 3.

``evaluate`` wraps its policy and step hook with a :class:`QRecorder`: for every step of every
evaluation episode it keeps Q1(s_t, a_t) of the agent's online critic for the action actually
taken (one batched forward over the eval envs, no gradient, running batch-norm statistics) and
the reward that followed. :func:`summarize` compares Q with the discounted return observed from
that step, G_t = Σ_{k < T−t} γ^k r_{t+k}, with γ the checkpoint's ``agent.gamma`` per agent
step (rewards are already summed over the action repeat).

**Truncation.** dm_control episodes end at the time limit (``truncated``), and the critic is
trained to bootstrap through it, so Q(s_t, a_t) includes the tail γ^{T−t} V(s_T) that the
observed G_t of a truncated episode lacks. Nothing is hidden: each step keeps its tail weight
γ^{T−t} (0 after a true termination, which has no tail) and the critic's Q1(s_T, μ(s_T)) at the
episode's last observation, and eval.json reports three comparisons:

- ``all_steps``: Q against the observed G_t at every step (the last steps of a truncated
  episode make Q look too high by construction);
- ``tail_negligible``: only steps whose missing tail weighs γ^{T−t} < ``q_tail_tolerance``
  (0.01: at least H = ⌈ln 0.01 / ln γ⌉ steps before the limit, 459 for γ = 0.99). Honest but
  empty when episodes are shorter than H agent steps (a 1000-step dm_control episode at action
  repeat 3 has 333);
- ``bootstrapped``: Q against G_t + γ^{T−t} Q1(s_T, μ(s_T)), the tail filled by the critic's
  own value of the last state (as its TD target does); it leans on the critic near the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs import EnvStep
from pixel_ddpg.errors import UserError
from pixel_ddpg.rundir import write_atomic
from pixel_ddpg.rollout import Policy, episode_quota

RECORD_FILE = "q_record.npz"
COMPARISONS = ("all_steps", "tail_negligible", "bootstrapped")
_ARRAYS = ("episode", "step", "q", "reward", "ret", "tail_weight", "tail_q")


def critic_q(agent: Any, obs: np.ndarray, action: np.ndarray, target: bool = False) -> np.ndarray:
    """Q1(s, a) of the agent's online (or target) encoder and critic for a batch, float64 on the host."""
    q = agent.q1(torch.as_tensor(obs), torch.as_tensor(action, dtype=torch.float32), target=target)
    return q.cpu().numpy().astype(np.float64).reshape(-1)


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = Σ_k γ^k r_{t+k} to the end of the episode, for every t."""
    out = np.empty(len(rewards), np.float64)
    acc = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = float(rewards[t]) + gamma * acc
        out[t] = acc
    return out


@dataclass
class QRecord:
    """Per-step arrays over all recorded episodes, in run_episodes' (round, env) episode order."""

    episode: np.ndarray  # int: episode index, as in eval.json's returns
    step: np.ndarray  # int: agent step t within its episode
    q: np.ndarray  # Q1(s_t, a_t)
    reward: np.ndarray  # r_{t+1}, summed over the action repeat
    ret: np.ndarray  # observed discounted return from t to the episode's end
    tail_weight: np.ndarray  # γ^{T−t}; 0 where the episode truly terminated
    tail_q: np.ndarray  # Q1(s_T, μ(s_T)) of the step's episode; 0 where it truly terminated
    gamma: float
    meta: dict[str, Any]  # checkpoint, frame, env: what the figure's legend says

    @property
    def bootstrapped(self) -> np.ndarray:
        return self.ret + self.tail_weight * self.tail_q

    def save(self, path: Path) -> Path:
        """Written whole or not at all (:func:`pixel_ddpg.rundir.write_atomic`)."""
        return write_atomic(path, lambda f: np.savez_compressed(
            f, **{k: getattr(self, k) for k in _ARRAYS}, gamma=np.float64(self.gamma),
            **{f"meta_{k}": np.asarray(v) for k, v in self.meta.items()}))


def load_record(path: Path | str) -> QRecord:
    """A q_record.npz, or an eval dir holding one; errors are one UserError line."""
    p = Path(path)
    if p.is_dir():
        p = p / RECORD_FILE
    if not p.is_file():
        raise UserError(f"{p} does not exist; give an eval dir holding {RECORD_FILE} (evaluate writes it, "
                        f"q_record=true) or the file")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _ARRAYS}
            gamma = float(z["gamma"])
            meta = {k[5:]: z[k].item() for k in z.files if k.startswith("meta_")}
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{p} is not a readable Q record ({type(exc).__name__}: {exc})") from None
    return QRecord(**arrays, gamma=gamma, meta=meta)


@dataclass
class _Episode:
    q: np.ndarray
    reward: np.ndarray
    terminated: bool
    tail_q: float


class QRecorder:
    """Wraps the evaluation policy and step hook of :func:`~pixel_ddpg.rollout.run_episodes`.

    ``wrap(policy)`` evaluates Q1 for the actions the policy returns, on the same batch;
    ``on_step`` pairs them with the rewards that follow and closes episodes at ``last``. The
    Q computed on an episode's last observation is dropped (its action is ignored by the
    auto-reset); the tail value Q1(s_T, μ(s_T)) is computed at ``last`` instead, because
    run_episodes stops without acting on the final episode's last observation.
    """

    def __init__(self, agent: Any, num_envs: int, gamma: float, target: bool = False) -> None:
        # target: the policy acts with the target networks, so the target critic judges its actions
        self.agent, self.num_envs, self.gamma, self.target = agent, num_envs, float(gamma), target
        self._policy: Policy | None = None
        self._pending: np.ndarray | None = None
        self._open: list[list[tuple[float, float]]] = [[] for _ in range(num_envs)]
        self._done: list[list[_Episode]] = [[] for _ in range(num_envs)]

    def wrap(self, policy: Policy) -> Policy:
        self._policy = policy

        def act(obs: np.ndarray, first: np.ndarray) -> np.ndarray:
            action = policy(obs, first)
            self._pending = critic_q(self.agent, obs, action, self.target)
            return action

        return act

    def on_step(self, step: EnvStep, returns: np.ndarray) -> None:
        if self._pending is None:  # the reset: no action taken yet
            return
        for i in np.flatnonzero(~step.first):
            self._open[i].append((float(self._pending[i]), float(step.reward[i])))
        last = np.flatnonzero(step.last)
        if last.size:
            assert self._policy is not None
            tail = critic_q(self.agent, step.obs, self._policy(step.obs, step.first), self.target)  # whole batch: one shape
            for i in last:
                qs, rs = zip(*self._open[i]) if self._open[i] else ((), ())
                terminated = bool(step.terminated[i])
                self._done[i].append(_Episode(np.array(qs, np.float64), np.array(rs, np.float64), terminated,
                                              0.0 if terminated else float(tail[i])))
                self._open[i] = []
        self._pending = None

    def record(self, episodes: int, lengths: list[int], meta: dict[str, Any]) -> QRecord:
        """The first ``episodes`` in run_episodes' order; ``lengths`` are its episode lengths (checked)."""
        quota = episode_quota(self.num_envs, episodes)
        ordered = [self._done[i][r] for r in range(int(quota.max())) for i in range(self.num_envs)
                   if r < min(quota[i], len(self._done[i]))]
        if [len(e.q) for e in ordered] != list(lengths):
            got = [len(e.q) for e in ordered]
            raise RuntimeError(f"Q record episode lengths {got} differ from the rollout's {lengths}")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAYS}
        for n, e in enumerate(ordered):
            t = np.arange(len(e.q))
            parts["episode"].append(np.full(len(e.q), n))
            parts["step"].append(t)
            parts["q"].append(e.q)
            parts["reward"].append(e.reward)
            parts["ret"].append(discounted_returns(e.reward, self.gamma))
            weight = np.zeros(len(e.q)) if e.terminated else self.gamma ** (len(e.q) - t).astype(np.float64)
            parts["tail_weight"].append(weight)
            parts["tail_q"].append(np.full(len(e.q), e.tail_q))
        arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        arrays["episode"] = arrays["episode"].astype(np.int64)
        arrays["step"] = arrays["step"].astype(np.int64)
        return QRecord(**arrays, gamma=self.gamma, meta=meta)


def compare(q: np.ndarray, ret: np.ndarray) -> dict[str, Any]:
    """Mean bias E[Q − G], Pearson correlation (None when undefined) and the step count."""
    n = int(len(q))
    bias = float(np.mean(q - ret)) if n else None
    corr = None
    if n >= 2 and np.std(q) > 0 and np.std(ret) > 0:
        corr = float(np.corrcoef(q, ret)[0, 1])
    return {"steps": n, "bias": bias, "correlation": corr,
            "q_mean": float(np.mean(q)) if n else None, "return_mean": float(np.mean(ret)) if n else None}


def horizon(gamma: float, tolerance: float) -> int | None:
    """Steps before the time limit from which the unobserved tail weighs γ^k < tolerance."""
    if not 0.0 < gamma < 1.0:
        return None
    return math.floor(math.log(tolerance) / math.log(gamma)) + 1


def negligible_tail(record: QRecord, tolerance: float) -> np.ndarray:
    return record.tail_weight < tolerance


def check_tolerance(value: object) -> float:
    """``q_tail_tolerance`` as a number in (0, 1), checked before any episode runs."""
    try:
        tolerance = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        tolerance = math.nan
    if not 0.0 < tolerance < 1.0:
        raise UserError(f"q_tail_tolerance={value} must be a number between 0 and 1")
    return tolerance


def summarize(record: QRecord, tolerance: float) -> dict[str, Any]:
    """eval.json's ``q`` entry: the three comparisons and how truncation is handled."""
    tolerance = check_tolerance(tolerance)
    mask = negligible_tail(record, tolerance)
    return {
        "record": RECORD_FILE, "gamma": record.gamma, "head": "Q1 of the online critic, action taken",
        "tail_tolerance": tolerance, "horizon_steps": horizon(record.gamma, tolerance),
        "truncation": ("dm_control episodes end at the time limit; the observed return of a truncated episode "
                       "lacks the tail gamma^(T-t) V(s_T) that Q includes. all_steps: observed return, every step; "
                       "tail_negligible: only steps with gamma^(T-t) < tail_tolerance; bootstrapped: observed return "
                       "+ gamma^(T-t) Q1(s_T, mu(s_T)), the critic's own value of the last state"),
        "all_steps": compare(record.q, record.ret),
        "tail_negligible": compare(record.q[mask], record.ret[mask]),
        "bootstrapped": compare(record.q, record.bootstrapped),
    }
