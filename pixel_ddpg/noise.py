"""Exploration noise, as tensors on the training device drawn from the agent's own generator.

Both processes return unit-scale noise of shape (N, A); the agent scales it by the action
half-range, adds it to μ(s) and clips to the bounds. N is the batch of observations being acted
on: the OU state is (re)allocated when N changes (evaluation runs other batch sizes than
training, and a new batch means new episodes anyway).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from pixel_ddpg.errors import ConfigError

if TYPE_CHECKING:
    from pixel_ddpg.learner import NoiseSettings

NOISE_TYPES = ("ou", "gaussian")


def linear_schedule(start: float, end: float | None, frames: int, frame: int) -> float:
    """``start`` moving linearly to ``end`` over the first ``frames`` env frames (constant when
    ``end`` is None). Computed in Python from the frame counter: no device value is read."""
    if end is None:
        return start
    mix = min(max(frame, 0) / frames, 1.0) if frames > 0 else 1.0
    return start + (end - start) * mix


class OUNoise:
    """Ornstein–Uhlenbeck, one process per env (the paper: θ=0.15, σ=0.2), reset at episode starts.

    ``sigma_end``: σ moves linearly from ``sigma`` to it over ``sigma_frames`` env frames (None:
    constant). A large σ early explores far better than independent noise of any std: on
    finger_spin, OU σ=1.0 collects reward in 56% of episodes, Gaussian std 1.0 in 12% and the
    paper's σ=0.2 in 9% (docs/results.md, "Exploration")."""

    def __init__(self, action_dim: int, theta: float, sigma: float, dt: float, device: torch.device,
                 generator: torch.Generator, sigma_end: float | None = None, sigma_frames: int = 0) -> None:
        self.action_dim, self.theta, self.sigma, self.dt = action_dim, float(theta), float(sigma), float(dt)
        self.sigma_end = None if sigma_end is None else float(sigma_end)
        self.sigma_frames = int(sigma_frames)
        if self.sigma < 0 or (self.sigma_end is not None and self.sigma_end < 0):
            raise ConfigError(f"agent.noise.sigma={sigma} and sigma_end={sigma_end} must be >= 0")
        self.device, self.generator = device, generator
        self.state: torch.Tensor | None = None

    def sigma_at(self, frame: int) -> float:
        return linear_schedule(self.sigma, self.sigma_end, self.sigma_frames, frame)

    def scale_at(self, frame: int) -> float:
        """The schedule's value at ``frame`` (σ): what a learner that ties its target or actor
        noise to the exploration schedule draws with."""
        return self.sigma_at(frame)

    def sample(self, n: int, first: torch.Tensor | None = None, frame: int = 0) -> torch.Tensor:
        """Advance every env's process one step; envs where ``first`` is set restart from 0 first."""
        if self.state is None or self.state.shape[0] != n:
            self.state = torch.zeros(n, self.action_dim, device=self.device)
        x = self.state
        if first is not None:
            x = torch.where(first.to(self.device, torch.bool).reshape(n, 1), torch.zeros_like(x), x)
        eps = torch.randn(n, self.action_dim, device=self.device, generator=self.generator)
        x = x - self.theta * x * self.dt + (self.sigma_at(frame) * math.sqrt(self.dt)) * eps
        self.state = x
        return x

    def state_dict(self) -> dict[str, Any]:
        return {"state": None if self.state is None else self.state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = state.get("state")
        self.state = None if s is None else s.to(self.device).clone()


class GaussianNoise:
    """DrQ-v2 style: N(0, std²) clipped to ±clip, std linear from std_start to std_end over std_frames."""

    def __init__(self, action_dim: int, std_start: float, std_end: float, std_frames: int, clip: float | None,
                 device: torch.device, generator: torch.Generator) -> None:
        self.action_dim, self.device, self.generator = action_dim, device, generator
        self.std_start, self.std_end, self.std_frames = float(std_start), float(std_end), int(std_frames)
        self.clip = None if clip is None or float(clip) <= 0 else float(clip)

    def std(self, frame: int) -> float:
        return linear_schedule(self.std_start, self.std_end, self.std_frames, frame)

    def scale_at(self, frame: int) -> float:
        """The std at ``frame``: DrQ-v2 draws its target smoothing and its actor's sample with it."""
        return self.std(frame)

    def sample(self, n: int, first: torch.Tensor | None = None, frame: int = 0) -> torch.Tensor:
        eps = torch.randn(n, self.action_dim, device=self.device, generator=self.generator) * self.std(frame)
        return eps if self.clip is None else eps.clamp_(-self.clip, self.clip)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def make_noise(settings: NoiseSettings, action_dim: int, device: torch.device,
               generator: torch.Generator) -> OUNoise | GaussianNoise:
    """The process named by ``agent.noise.type``."""
    if settings.type == "ou":
        return OUNoise(action_dim, settings.theta, settings.sigma, settings.dt, device, generator,
                       settings.sigma_end, settings.sigma_frames)
    if settings.type == "gaussian":
        return GaussianNoise(action_dim, settings.std_start, settings.std_end, settings.std_frames,
                             settings.clip, device, generator)
    raise ConfigError(f"agent.noise.type={settings.type!r} is not known; choose one of {list(NOISE_TYPES)}")
