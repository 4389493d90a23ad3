"""The unit of data between replay and agent."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    """Sampled transitions, all on the training device.

    obs/next_obs: uint8 (B, C, H, W) for pixels (full stacks), float32 (B, D) for state.
    action: float32 (B, A). reward: float32 (B,), the n-step discounted sum.
    discount: float32 (B,), gamma**n, or 0 after a true termination.
    """

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    next_obs: torch.Tensor
