"""What a learner is made of, as typed settings read once from the ``agent`` config group.

:class:`LearnerSettings` is what :class:`~pixel_ddpg.agent.DDPGAgent` and
:func:`~pixel_ddpg.networks.build_networks` take: every value converted and checked here, and
every default a config saved before its key existed (an older checkpoint's) needs is here too,
so no other module reads the agent config or falls back on a key of its own. The resolved
settings depend on the observation (``pixels``): the pixel or state minibatch, hidden widths
and final-layer init, whether there is a trunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pixel_ddpg.errors import ConfigError
from pixel_ddpg.replay import Sampling

ENCODER_TYPES = ("paper", "drqv2")
INITS = ("paper", "orthogonal")
ACTOR_Q = ("q1", "min")
CRITIC_LOSSES = ("mse", "huber", "hlgauss")
CRITIC_NORMS = ("none", "layer")


def _ints(values: Any, key: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}={values!r} must be a list of whole numbers") from exc
    if not out or min(out) < 1:
        raise ConfigError(f"{key}={values!r} must be a non-empty list of positive whole numbers")
    return out


def _number(value: Any, key: str, positive: bool = False) -> float:
    """A scalar setting as a float, refused (null, text, out of range) with one ConfigError."""
    bound = "> 0" if positive else ">= 0"
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}={value!r} must be a number {bound}") from exc
    if not (out > 0 if positive else out >= 0):
        raise ConfigError(f"{key}={value!r} must be {bound}")
    return out


def _flag(value: Any, key: str) -> bool:
    if value not in (True, False):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return bool(value)


def has_trunk(enc: Any) -> bool:
    """``agent.encoder.trunk``; a config saved before the key existed (an older checkpoint's)
    had a trunk exactly when the encoder type was drqv2."""
    return _flag(enc.get("trunk", str(enc.get("type")) == "drqv2"), "agent.encoder.trunk")


@dataclass(frozen=True)
class EncoderSettings:
    """The conv encoder (``agent.encoder``)."""

    type: str  # paper | drqv2 (ENCODER_TYPES)
    channels: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    center: bool  # pixels scaled to [-0.5, 0.5] instead of [0, 1]
    feature_dim: int | None  # width of each head's LayerNorm trunk; None: no trunk (on state only with agent.state_trunk)
    flare: bool = False  # each RGB frame through the convs alone; newest frame's features and its differences (Flare)


@dataclass(frozen=True)
class NoiseSettings:
    """The exploration process (``agent.noise``); only the chosen type's values are read."""

    type: str  # ou | gaussian (pixel_ddpg.noise.NOISE_TYPES; checked where the process is made)
    theta: float = 0.0
    sigma: float = 0.0
    dt: float = 1.0
    sigma_end: float | None = None  # ou: sigma moves linearly to this over sigma_frames (None: constant)
    sigma_frames: int = 0
    std_start: float = 0.0
    std_end: float = 0.0
    std_frames: int = 0
    clip: float = 0.0

    @classmethod
    def from_config(cls, noise: Any) -> NoiseSettings:
        kind = str(noise.type)
        if kind == "ou":
            # configs saved before the schedule existed (older checkpoints): a constant sigma
            sigma_end = noise.get("sigma_end")
            return cls(kind, theta=float(noise.theta), sigma=float(noise.sigma), dt=float(noise.dt),
                       sigma_end=None if sigma_end is None else float(sigma_end),
                       sigma_frames=int(noise.get("sigma_frames", 0)))
        if kind == "gaussian":
            return cls(kind, std_start=float(noise.std_start), std_end=float(noise.std_end),
                       std_frames=int(noise.std_frames), clip=float(noise.clip) if noise.clip is not None else 0.0)
        return cls(kind)


@dataclass(frozen=True)
class HLGaussSettings:
    """The categorical critic (``agent.critic_loss: hlgauss``, ``agent.hlgauss``): Q as a softmax
    over ``bins`` bins spanning ``v_range`` (None: ±action_repeat/(1-gamma), set where the env is
    known), trained by cross-entropy to the TD target smeared by a Gaussian of ``sigma`` bin widths
    (Farebrother et al. 2024, "Stop Regressing")."""

    bins: int
    v_range: tuple[float, float] | None
    sigma: float

    @classmethod
    def from_config(cls, h: Any) -> HLGaussSettings:
        try:
            bins = int(h.bins)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"agent.hlgauss.bins={h.bins!r} must be a whole number >= 2") from exc
        if bins < 2:
            raise ConfigError(f"agent.hlgauss.bins={bins} must be >= 2")
        sigma = _number(h.sigma, "agent.hlgauss.sigma", positive=True)
        v_range = h.get("range")
        if v_range is not None:
            try:
                lo, hi = (float(v) for v in v_range)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"agent.hlgauss.range={v_range!r} must be null or [v_min, v_max]") from exc
            if not hi > lo:
                raise ConfigError(f"agent.hlgauss.range={[lo, hi]} must have v_max > v_min")
            v_range = (lo, hi)
        return cls(bins, v_range, sigma)

    def resolved_range(self, action_repeat: int, gamma: float) -> tuple[float, float]:
        """The support: the configured one, or ±action_repeat/(1-gamma), the largest discounted
        return of rewards of at most 1 a frame (dm_control's). Symmetric so that the near-uniform
        softmax of a fresh critic means Q = 0, where a sparse task's Q starts: a support that
        began at 0 would start every Q at half the bound and spend the run bootstrapping it down."""
        if self.v_range is not None:
            return self.v_range
        bound = float(action_repeat) / (1.0 - float(gamma))
        return (-bound, bound)


@dataclass(frozen=True)
class LearnerSettings:
    """The DDPG learner and its TD3 / DrQ-v2 options (conf/agent/*.yaml says what each one means)."""

    pixels: bool
    sampling: Sampling  # minibatch, n-step returns, discount: what the replay samples with
    tau: float
    actor_lr: float
    critic_lr: float
    critic_weight_decay: float
    encoder_lr: float | None  # None: the critic's rate
    adam_eps: float
    hidden: tuple[int, ...]  # agent.pixel_hidden or agent.state_hidden
    final_init: float  # agent.final_init_pixels or agent.final_init_state
    batch_norm: bool
    critic_norm: str  # none | layer (CRITIC_NORMS): a LayerNorm after each hidden layer of the Q heads
    init: str  # paper | orthogonal (INITS)
    twin_q: bool
    target_policy_noise: float
    target_noise_clip: float
    actor_delay: int
    target_noise_schedule: bool
    actor_noise: bool
    actor_q: str  # q1 | min (ACTOR_Q)
    critic_loss: str  # mse | huber | hlgauss (CRITIC_LOSSES)
    huber_delta: float
    hlgauss: HLGaussSettings | None  # the categorical critic's support, with critic_loss hlgauss only
    target_encoder: bool
    target_actor: bool
    actor_preact_penalty: float
    actor_preact_knee: float
    augment: bool  # DrQ's random shift; never on a state vector
    augment_pad: int
    encoder: EncoderSettings
    noise: NoiseSettings

    @classmethod
    def from_config(cls, c: Any, pixels: bool) -> LearnerSettings:
        """Read and check ``agent`` (a DictConfig or a checkpoint's saved config) for a pixel or
        state observation. Keys newer than some checkpoints are read with the default that those
        checkpoints' runs had, so they build the learner they trained."""
        sampling = Sampling.from_config(c, pixels)
        tau = float(c.tau)
        actor_delay = int(c.actor_delay)
        # Configs saved before the option existed meant no penalty...
        preact_penalty = _number(c.get("actor_preact_penalty", 0.0), "agent.actor_preact_penalty")
        # ... and configs saved before the knee existed penalised every pre-tanh value (knee 0).
        preact_knee = _number(c.get("actor_preact_knee", 0.0), "agent.actor_preact_knee")
        # Configs saved before the optimizer knobs existed trained with one rate and Adam's epsilon.
        encoder_lr = c.get("encoder_lr", None)
        encoder_lr = None if encoder_lr is None else _number(encoder_lr, "agent.encoder_lr")
        adam_eps = _number(c.get("adam_eps", 1e-8), "agent.adam_eps", positive=True)
        if actor_delay < 1:
            raise ConfigError(f"agent.actor_delay={c.actor_delay} must be a whole number >= 1")
        # DrQ-v2's options; configs saved before they existed meant the defaults.
        actor_q = str(c.get("actor_q", "q1"))
        if actor_q not in ACTOR_Q:
            raise ConfigError(f"agent.actor_q={actor_q!r} is not known; choose q1 or min")
        # Configs saved before the critic's loss was an option trained with MSE.
        critic_loss = str(c.get("critic_loss", "mse"))
        if critic_loss not in CRITIC_LOSSES:
            raise ConfigError(f"agent.critic_loss={critic_loss!r} is not known; choose one of {list(CRITIC_LOSSES)}")
        huber_delta = _number(c.get("huber_delta", 1.0), "agent.huber_delta", positive=True)
        if critic_loss == "hlgauss" and c.get("hlgauss") is None:
            raise ConfigError("agent.critic_loss=hlgauss needs agent.hlgauss (bins, range, sigma; conf/agent/ddpg.yaml)")
        hlgauss = HLGaussSettings.from_config(c.hlgauss) if critic_loss == "hlgauss" else None
        augment = bool(c.augment) and pixels
        pad = int(c.augment_pad)
        if augment and pad < 0:
            raise ConfigError(f"agent.augment_pad={pad} must be >= 0")
        enc = c.encoder
        kind = str(enc.type)
        if kind not in ENCODER_TYPES:
            raise ConfigError(f"agent.encoder.type={kind!r} is not known; choose one of {list(ENCODER_TYPES)}")
        channels = _ints(enc.channels, "agent.encoder.channels")
        kernels = _ints(enc.kernels, "agent.encoder.kernels")
        strides = _ints(enc.strides, "agent.encoder.strides")
        if not len(channels) == len(kernels) == len(strides):
            raise ConfigError("agent.encoder.channels, kernels and strides must be lists of the same length; "
                              f"got {list(channels)}, {list(kernels)}, {list(strides)}")
        hidden = _ints(c.pixel_hidden if pixels else c.state_hidden, "agent.pixel_hidden" if pixels else "agent.state_hidden")
        # On state the pixel heads' trunk is opt-in (agent.state_trunk): without it a state screen of a
        # head change (a LayerNorm critic) adds normalisation that the pixel critic already has.
        trunk = has_trunk(enc) if pixels else _flag(c.get("state_trunk", False), "agent.state_trunk")
        feature_dim = int(enc.feature_dim) if trunk else None
        if feature_dim is not None and feature_dim < 1:
            raise ConfigError(f"agent.encoder.feature_dim={feature_dim} must be positive")
        center = _flag(enc.get("center", False), "agent.encoder.center")  # older configs: [0, 1] input
        flare = _flag(enc.get("flare", False), "agent.encoder.flare") and pixels  # older configs: one stacked input
        critic_norm = str(c.get("critic_norm", "none"))  # older configs: no normalisation in the Q heads
        if critic_norm not in CRITIC_NORMS:
            raise ConfigError(f"agent.critic_norm={critic_norm!r} is not known; choose one of {list(CRITIC_NORMS)}")
        if critic_norm != "none" and bool(c.batch_norm):
            raise ConfigError("agent.critic_norm=layer and agent.batch_norm=true both normalise the critic's "
                              "hidden layers; choose one")
        init = str(c.get("init", "paper"))  # older configs: the paper's init
        if init not in INITS:
            raise ConfigError(f"agent.init={init!r} is not known; choose one of {list(INITS)}")
        return cls(
            pixels=pixels, sampling=sampling, tau=tau, actor_lr=float(c.actor_lr), critic_lr=float(c.critic_lr),
            critic_weight_decay=float(c.critic_weight_decay), encoder_lr=encoder_lr, adam_eps=adam_eps, hidden=hidden,
            final_init=float(c.final_init_pixels if pixels else c.final_init_state), batch_norm=bool(c.batch_norm),
            critic_norm=critic_norm, init=init, twin_q=bool(c.twin_q), target_policy_noise=float(c.target_policy_noise),
            target_noise_clip=float(c.target_noise_clip), actor_delay=actor_delay,
            target_noise_schedule=bool(c.get("target_noise_schedule", False)), actor_noise=bool(c.get("actor_noise", False)),
            actor_q=actor_q, critic_loss=critic_loss, huber_delta=huber_delta, hlgauss=hlgauss, target_encoder=bool(c.get("target_encoder", True)),
            target_actor=bool(c.get("target_actor", True)), actor_preact_penalty=preact_penalty,
            actor_preact_knee=preact_knee, augment=augment, augment_pad=pad,
            encoder=EncoderSettings(kind, channels, kernels, strides, center, feature_dim, flare),
            noise=NoiseSettings.from_config(c.noise))

    def signature(self, obs_shape: tuple[int, ...], action_dim: int,
                  q_range: tuple[float, float] | None = None) -> dict[str, Any]:
        """What the network shapes depend on, as plain values: a checkpoint must match it (==).
        Built exactly as checkpoints have recorded it, so theirs still match. ``q_range``: a
        categorical critic's support as resolved for the env (what its logits mean)."""
        sig: dict[str, Any] = {"obs_shape": [int(x) for x in obs_shape], "action_dim": int(action_dim),
                               "pixels": self.pixels, "batch_norm": self.batch_norm, "twin_q": self.twin_q}
        if self.pixels:
            enc = self.encoder
            sig["encoder"] = {"type": enc.type, "channels": list(enc.channels), "kernels": list(enc.kernels),
                              "strides": list(enc.strides), "feature_dim": enc.feature_dim}
            if enc.center:  # only when on: signatures of checkpoints from before the key still match
                sig["encoder"]["center"] = True
            if enc.flare:  # likewise
                sig["encoder"]["flare"] = True
        else:
            sig["encoder"] = None
            if self.encoder.feature_dim is not None:  # only when on: state checkpoints from before it still match
                sig["state_trunk"] = self.encoder.feature_dim
        sig["hidden"] = list(self.hidden)
        if self.critic_norm != "none":  # only when on: signatures of earlier checkpoints still match
            sig["critic_norm"] = self.critic_norm
        if self.hlgauss is not None:  # only when on: signatures of scalar critics' checkpoints still match
            h = self.hlgauss
            support = q_range if q_range is not None else h.v_range
            sig["critic_bins"] = {"bins": h.bins, "range": None if support is None else [float(v) for v in support]}
        return sig
