"""The learner's networks: a conv encoder shared by actor and critic, the actor, the critic.

Shapes follow Lillicrap et al. 2016 by default: 3 conv layers of 32 filters, no pooling,
flattened; 200-200 heads for pixels, 400-300 for state; actions join the critic after its
first layer; final layers uniform ±3e-4 (pixels) / ±3e-3 (state), every other layer uniform
±1/sqrt(fan_in). DrQ-v2's shapes come from config (``encoder.type: drqv2``: its convs; with
``encoder.trunk: true``, in each head a Linear→LayerNorm→tanh trunk to ``feature_dim``, as in
DrQ-v2: the trunk belongs to the head, so the actor's trunk learns from the actor's loss; the
twin critics share theirs). The trunk also goes on the paper's convs: it bounds the features
each head sees whatever scale the critic drives the conv features to.

Batch norm (the paper's option): on the state input (pixels: after each conv), after every
hidden layer of the actor, and on the critic's layers before the action joins.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pixel_ddpg.errors import ConfigError

if TYPE_CHECKING:
    from pixel_ddpg.learner import LearnerSettings


def fan_in_uniform_(layer: nn.Module, bound: float | None = None) -> None:
    """The paper's init: weights and biases U(±1/sqrt(fan_in)), or U(±bound) for final layers."""
    weight = layer.weight  # type: ignore[union-attr]
    if bound is None:
        bound = 1.0 / math.sqrt(weight[0].numel())
    with torch.no_grad():
        weight.uniform_(-bound, bound)
        if layer.bias is not None:  # type: ignore[union-attr]
            layer.bias.uniform_(-bound, bound)  # type: ignore[union-attr]


def orthogonal_init_(module: nn.Module) -> None:
    """DrQ-v2's init (its ``utils.weight_init``): orthogonal weights (ReLU gain on convs), zero
    biases, final layers included; LayerNorm keeps PyTorch's ones and zeros."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            gain = nn.init.calculate_gain("relu") if isinstance(m, nn.Conv2d) else 1.0
            with torch.no_grad():
                w = torch.empty(m.weight.shape)  # contiguous: orthogonal_ views it as a matrix (the convs are NHWC)
                nn.init.orthogonal_(w, gain)
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.zero_()


def _linear(in_dim: int, out_dim: int, bound: float | None = None) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    fan_in_uniform_(layer, bound)
    return layer


def _mlp(in_dim: int, widths: list[int], batch_norm: bool, layer_norm: bool = False) -> tuple[list[nn.Module], int]:
    """Linear → (BatchNorm1d or LayerNorm) → ReLU per width; returns the layers and the output width."""
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(_linear(in_dim, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        elif layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(nn.ReLU())
        in_dim = width
    return layers, in_dim


def _trunk(in_dim: int, feature_dim: int) -> nn.Sequential:
    """DrQ-v2's projection of the conv features: Linear → LayerNorm → tanh."""
    return nn.Sequential(_linear(in_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


class Encoder(nn.Module):
    """uint8 pixels → flattened conv features, scaled to [0, 1] as float here so that replay and
    host→device copies stay uint8. State observations: identity (or the input batch norm).

    ``center``: scale to [-0.5, 0.5] instead (DrQ-v2's input). With inputs that are all positive,
    a conv weight's gradient has the sign of its channel's error for every weight of the channel,
    so Adam moves the whole channel's pre-activation one way at full rate and can switch the
    channel off for every image (dead ReLUs, docs/results.md); centred inputs mix the signs.

    ``flare``: the convs see one RGB frame at a time and the output is the newest frame's features
    followed by its difference to each older frame's (Flare: Shang et al., NeurIPS 2021, "Reinforcement
    Learning with Latent Flow"). A stacked encoder mixes the frames in its first layer and, on walker and
    cup, passes little of the motion on (docs/results.md, the linear probe); the differences were to hand
    the trunk the motion directly. Screened and not adopted: 1.9-2.6x the update time on an AVX2 CPU
    (layers 2 and up run once per frame) and, on cup, less motion in its features than the stacked
    first layer computes (docs/results.md, "Motion in the features")."""

    def __init__(self, obs_shape: tuple[int, ...], channels: list[int], kernels: list[int], strides: list[int],
                 batch_norm: bool, center: bool = False, flare: bool = False) -> None:
        super().__init__()
        self.pixels = len(obs_shape) == 3
        self.center = bool(center) and self.pixels
        self.frames = 1
        if flare and self.pixels:
            if obs_shape[0] % 3 or obs_shape[0] < 6:
                raise ConfigError(f"agent.encoder.flare=true needs a stack of at least 2 RGB frames; the observation has "
                                 f"{obs_shape[0]} channels")
            self.frames = obs_shape[0] // 3
        if self.pixels:
            layers: list[nn.Module] = []
            in_ch = obs_shape[0] // self.frames
            for ch, k, s in zip(channels, kernels, strides, strict=True):
                conv = nn.Conv2d(in_ch, ch, k, stride=s)
                fan_in_uniform_(conv)
                layers.append(conv)
                if batch_norm:
                    layers.append(nn.BatchNorm2d(ch))
                layers.append(nn.ReLU())
                in_ch = ch
            # NHWC: eager updates ran 1.27-1.38x faster on an AVX2 CPU (oneDNN's layout; compiled ones
            # choose their own and were level); cuDNN's preferred layout for bf16 too.
            self.convs = nn.Sequential(*layers).to(memory_format=torch.channels_last)
            self.norm: nn.Module = nn.Identity()
        else:
            self.convs = nn.Sequential()
            self.norm = nn.BatchNorm1d(obs_shape[0]) if batch_norm else nn.Identity()
        with torch.no_grad():
            dummy = torch.zeros(2, *obs_shape, dtype=torch.uint8 if self.pixels else torch.float32)
            self.out_dim = int(self.forward(dummy).shape[1])

    def _scaled(self, obs: torch.Tensor) -> torch.Tensor:
        if self.frames > 1:  # (B, F*3, H, W) -> (B*F, 3, H, W): each frame an image of its own
            obs = obs.reshape(obs.shape[0] * self.frames, obs.shape[1] // self.frames, *obs.shape[2:])
        x = obs.float() / 255.0 if obs.dtype == torch.uint8 else obs
        x = x - 0.5 if self.center else x
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.pixels:
            return self.norm(obs.float())
        feat = self.convs(self._scaled(obs)).flatten(1)
        if self.frames == 1:
            return feat
        per_frame = feat.reshape(obs.shape[0], self.frames, -1)  # oldest first
        newest = per_frame[:, -1:]
        return torch.cat([newest, newest - per_frame[:, :-1]], dim=1).flatten(1)

    @torch.no_grad()
    def dead_channels(self, obs: torch.Tensor) -> torch.Tensor:
        """Share of each conv layer's channels that no image of ``obs`` switches on, (layers,).

        A dead ReLU gets no gradient back, so channels die one by one long before every feature
        is 0 (``feat_norm``); this shows the encoder losing capacity while it still works.
        Running statistics, not batch statistics, so a batch-norm encoder's state is untouched."""
        if not self.pixels:
            return torch.zeros(0)
        was_training = self.training
        self.eval()
        try:
            x, shares = self._scaled(obs), []
            for layer in self.convs:
                x = layer(x)
                if isinstance(layer, nn.ReLU):
                    shares.append((x.amax(dim=(0, 2, 3)) <= 0).float().mean())
            return torch.stack(shares)
        finally:
            self.train(was_training)


class Actor(nn.Module):
    """μ(s): features → (trunk) → hidden layers → tanh, scaled to the action bounds."""

    def __init__(self, feature_in: int, action_dim: int, hidden: list[int], trunk_dim: int | None, batch_norm: bool,
                 final_init: float, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        self.trunk = _trunk(feature_in, trunk_dim) if trunk_dim else None
        layers, width = _mlp(trunk_dim or feature_in, hidden, batch_norm)
        self.net = nn.Sequential(*layers, _linear(width, action_dim, final_init))
        low_t, high_t = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        # Bounds come from the env spec, not from a checkpoint: non-persistent.
        self.register_buffer("center", (high_t + low_t) / 2, persistent=False)
        self.register_buffer("scale", (high_t - low_t) / 2, persistent=False)

    def pre_tanh(self, feat: torch.Tensor) -> torch.Tensor:
        """The output before the squashing tanh: where saturation shows (|u| > 2.65 gives |a| > 0.99 of the bound)."""
        x = self.trunk(feat) if self.trunk is not None else feat
        return self.net(x).float()

    def squash(self, pre: torch.Tensor) -> torch.Tensor:
        return self.center + self.scale * torch.tanh(pre)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.squash(self.pre_tanh(feat))


class QHead(nn.Module):
    """One Q function. ``pre``: the layers before the action joins (the paper's first FC layer;
    none after a DrQ-v2 trunk, whose every hidden layer sees the action). ``post``: the rest.
    ``layer_norm``: a LayerNorm after every hidden Linear (``agent.critic_norm: layer``), the
    normalised critic of recent sample-efficient actor-critics (e.g. Nauman et al. 2024, "BRO")."""

    def __init__(self, feature_in: int, action_dim: int, hidden: list[int], has_trunk: bool, batch_norm: bool,
                 final_init: float, out_dim: int = 1, layer_norm: bool = False) -> None:
        super().__init__()
        self.out_dim = out_dim
        if has_trunk:
            self.pre: nn.Module | None = None
            dim, rest = feature_in, hidden
        else:
            layers, dim = _mlp(feature_in, hidden[:1], batch_norm, layer_norm)
            self.pre = nn.Sequential(*layers)
            rest = hidden[1:]
        layers, width = _mlp(dim + action_dim, rest, False, layer_norm)
        self.post = nn.Sequential(*layers, _linear(width, out_dim, final_init))

    def forward(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q, (B,); a categorical head's logits, (B, out_dim)."""
        x = self.pre(feat) if self.pre is not None else feat
        out = self.post(torch.cat([x, action.to(x.dtype)], dim=1))
        return out.squeeze(1) if self.out_dim == 1 else out


class Critic(nn.Module):
    """Q(s, a); with ``twin_q`` two heads (TD3), sharing only a DrQ-v2 trunk if there is one.

    ``support`` (a categorical critic, ``agent.critic_loss: hlgauss``): the bin edges of Q; each
    head then outputs one logit per bin and Q is the softmax's mean over the bin centres."""

    def __init__(self, feature_in: int, action_dim: int, hidden: list[int], trunk_dim: int | None, batch_norm: bool,
                 final_init: float, twin: bool, support: torch.Tensor | None = None,
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.trunk = _trunk(feature_in, trunk_dim) if trunk_dim else None
        dim = trunk_dim or feature_in
        out_dim = 1 if support is None else int(support.numel()) - 1
        self.heads = nn.ModuleList(QHead(dim, action_dim, hidden, self.trunk is not None, batch_norm, final_init,
                                         out_dim, layer_norm) for _ in range(2 if twin else 1))
        self.categorical = support is not None
        # From the config and the env, not from a checkpoint (whose signature must match): non-persistent.
        # A scalar critic has none.
        edges = None if support is None else support.float()
        self.register_buffer("edges", edges, persistent=False)
        self.register_buffer("centres", None if edges is None else (edges[1:] + edges[:-1]) / 2, persistent=False)

    def outputs(self, feat: torch.Tensor, action: torch.Tensor) -> list[torch.Tensor]:
        """Each head's raw output: Q, (B,), or a categorical head's logits, (B, bins)."""
        x = self.trunk(feat) if self.trunk is not None else feat
        return [head(x, action) for head in self.heads]

    def expectation(self, logits: torch.Tensor) -> torch.Tensor:
        """A categorical head's Q: the mean of its softmax over the bin centres, (B,)."""
        return torch.softmax(logits.float(), dim=1) @ self.centres

    def forward(self, feat: torch.Tensor, action: torch.Tensor) -> list[torch.Tensor]:
        """Each head's Q, (B,) apiece; the first is Q1 (the one the actor climbs)."""
        outs = self.outputs(feat, action)
        return [self.expectation(o) for o in outs] if self.categorical else outs


def build_networks(settings: LearnerSettings, obs_shape: tuple[int, ...], action_low: np.ndarray,
                   action_high: np.ndarray, q_range: tuple[float, float] | None = None) -> tuple[Encoder, Actor, Critic]:
    """Encoder, actor and critic the learner settings describe, on the CPU, initialised from the
    global RNG (the agent seeds it inside ``fork_rng``). ``q_range``: a categorical critic's
    support (``settings.hlgauss`` resolved for the env); required with it."""
    enc = settings.encoder
    hidden, trunk_dim, batch_norm = list(settings.hidden), enc.feature_dim, settings.batch_norm
    action_dim = int(np.asarray(action_low).shape[0])
    encoder = Encoder(tuple(obs_shape), list(enc.channels), list(enc.kernels), list(enc.strides), batch_norm, enc.center,
                      enc.flare)
    actor = Actor(encoder.out_dim, action_dim, hidden, trunk_dim, batch_norm, settings.final_init, action_low, action_high)
    support = None
    if settings.hlgauss is not None:
        if q_range is None:
            raise ValueError("a categorical critic (critic_loss hlgauss) needs q_range, its support")
        support = torch.linspace(q_range[0], q_range[1], settings.hlgauss.bins + 1)
    critic = Critic(encoder.out_dim, action_dim, hidden, trunk_dim, batch_norm, settings.final_init, settings.twin_q,
                    support, settings.critic_norm == "layer")
    if settings.init == "orthogonal":
        for net in (encoder, actor, critic):
            orthogonal_init_(net)
    return encoder, actor, critic


__all__ = ["Actor", "Critic", "Encoder", "QHead", "build_networks", "fan_in_uniform_", "orthogonal_init_"]
