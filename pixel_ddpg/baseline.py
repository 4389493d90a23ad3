"""The naive pixel DDPG pipeline the benchmark compares against (SpinningUp's DDPG structure).

One env at a time; observations kept as float32 NumPy arrays, with separate obs and next_obs
copies in a host replay; one update per env step, eager fp32. It uses the same env and agent
code as the real pipeline, so the difference measured is the data path, not the maths.
"""

from __future__ import annotations

import numpy as np
import torch

from envs import EnvSpec, VecEnv
from pixel_ddpg.batch import Batch


class NaiveReplay:
    """SpinningUp-style host replay: float32 obs and next_obs stored side by side."""

    def __init__(self, spec: EnvSpec, capacity: int, seed: int = 0) -> None:
        self.obs = np.zeros((capacity, *spec.obs_shape), np.float32)
        self.next_obs = np.zeros((capacity, *spec.obs_shape), np.float32)
        self.action = np.zeros((capacity, spec.action_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.done = np.zeros(capacity, np.float32)
        self.capacity, self.ptr, self.size = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def bytes_per_transition(spec: EnvSpec) -> int:
        return 2 * 4 * int(np.prod(spec.obs_shape)) + 4 * spec.action_dim + 4 + 4

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, done: bool) -> None:
        i = self.ptr
        self.obs[i] = obs
        self.next_obs[i] = next_obs
        self.action[i] = action
        self.reward[i] = reward
        self.done[i] = done
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, device: torch.device, gamma: float) -> Batch:
        idx = self.rng.integers(0, self.size, size=batch_size)

        def dev(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a[idx], device=device)

        obs, next_obs = dev(self.obs), dev(self.next_obs)
        if obs.dim() == 4:  # the shared agent takes pixels as uint8; the naive path pays the float copies
            obs, next_obs = obs.to(torch.uint8), next_obs.to(torch.uint8)
        return Batch(obs, dev(self.action), dev(self.reward), gamma * (1.0 - dev(self.done)), next_obs)


class NaiveLoop:
    """act → step one env → store float32 copies → one update, in that order, nothing overlapped."""

    def __init__(self, env: VecEnv, agent: object, replay: NaiveReplay, batch_size: int, gamma: float,
                 device: torch.device, seed: int = 0) -> None:
        if env.spec.num_envs != 1:
            raise ValueError("the naive baseline steps one env at a time")
        self.env, self.agent, self.replay = env, agent, replay
        self.batch_size, self.gamma, self.device = batch_size, gamma, device
        self.rng = np.random.default_rng(seed)
        self.obs = env.reset().obs[0].astype(np.float32)

    def step(self, explore_random: bool = False) -> None:
        spec = self.env.spec
        if explore_random:
            action = spec.random_actions(self.rng)
        else:
            obs = torch.as_tensor(self.obs[None], device=self.device)
            if obs.dim() == 4:
                obs = obs.to(torch.uint8)
            with torch.no_grad():
                action = self.agent.act(obs, explore=True).cpu().numpy()  # type: ignore[attr-defined]
        st = self.env.step(action)
        next_obs = st.obs[0].astype(np.float32)
        if not st.first[0]:
            self.replay.add(self.obs, action[0], float(st.reward[0]), next_obs, bool(st.terminated[0]))
        self.obs = next_obs
        if self.replay.size >= self.batch_size and not explore_random:
            self.agent.update(self.replay.sample(self.batch_size, self.device, self.gamma))  # type: ignore[attr-defined]
