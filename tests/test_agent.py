"""The learner (issue 4): encoder/actor/critic, noise, DDPG update and its options, on CPU.

Synthetic specs and batches only (no envs). Small images (9×32×32) keep the fast set quick.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F

from pixel_ddpg.errors import ConfigError
from pixel_ddpg.agent import DDPGAgent, make_agent, random_shift
from pixel_ddpg.batch import Batch
from pixel_ddpg.config import compose
from pixel_ddpg.device import Precision
from pixel_ddpg.noise import GaussianNoise, OUNoise
from tests.conftest import agent, batch, CPU, PIX, spec

BF16 = Precision(torch.device("cpu"), torch.bfloat16, False)


def params(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def changed(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------ networks
def test_paper_networks_shapes_and_init():
    a = agent()
    convs = [m for m in a.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 32] and [c.stride for c in convs] == [(2, 2)] * 3
    assert a.critic.heads[0].pre[0].out_features == 200  # the action joins after the first FC layer
    assert a.critic.heads[0].post[0].in_features == 200 + 3
    final = a.actor.net[-1]
    assert final.weight.abs().max() <= 3e-4 and final.bias.abs().max() <= 3e-4
    first = a.actor.net[0]
    assert first.weight.abs().max() <= 1 / math.sqrt(first.in_features)
    s = spec((5,))
    st = agent(s=s)
    assert isinstance(st.encoder.norm, torch.nn.Identity)
    assert [m.out_features for m in st.actor.net if isinstance(m, torch.nn.Linear)] == [400, 300, 3]
    assert st.critic.heads[0].post[-1].weight.abs().max() <= 3e-3
    assert st.batch_size == 64 and a.batch_size == 16


def test_encoder_takes_uint8_and_scales_inside():
    a = agent()
    x = torch.randint(0, 256, (2, *PIX), dtype=torch.uint8)
    assert torch.allclose(a.encoder(x), a.encoder(x.float() / 255.0))


# ------------------------------------------------------------------ the update
def test_actor_update_leaves_critic_and_encoder_unchanged():
    a = agent()
    snapshot: dict[str, list[torch.Tensor]] = {}
    critic_step = a.critic_opt.step

    def step_then_snapshot(*args, **kwargs):
        out = critic_step(*args, **kwargs)
        snapshot["after_critic"] = params(a.encoder, a.critic)
        snapshot["actor"] = params(a.actor)
        return out

    a.critic_opt.step = step_then_snapshot  # type: ignore[method-assign]
    a.update(batch())
    assert same(snapshot["after_critic"], params(a.encoder, a.critic))  # bit for bit, after the actor step
    assert changed(snapshot["actor"], params(a.actor))
    assert all(p.requires_grad for p in a.critic.parameters())  # restored after the actor's loss


def test_critic_update_changes_encoder_not_actor_or_targets():
    a = agent("agent.actor_delay=1000")
    enc, act, targets = params(a.encoder), params(a.actor), params(*a._targets)
    out = a.update(batch())
    assert changed(enc, params(a.encoder))
    assert same(act, params(a.actor)) and same(targets, params(*a._targets))
    assert torch.isnan(out["actor_loss"])  # no actor step yet, the entry is still a tensor


def test_polyak_update_matches_formula():
    a = agent("agent.tau=0.3")
    old = params(*a._targets)
    a.update(batch())
    new_online, new_target = params(*a._online), params(*a._targets)
    for t0, o, t1 in zip(old, new_online, new_target, strict=True):
        torch.testing.assert_close(t1, t0 + 0.3 * (o - t0), rtol=1e-6, atol=1e-7)


def test_target_acting_is_the_polyak_copies_acting_and_never_explores():
    """Evaluation's ``networks=target``: μ of the target encoder and actor, which lag the online ones."""
    a = agent("agent.tau=0.3", "agent.actor_delay=1")
    for seed in range(3):
        a.update(batch(seed=seed))
    obs = batch(seed=9).obs
    online, target = a.act(obs, explore=False), a.act(obs, explore=False, target=True)
    assert not torch.allclose(online, target)  # three updates apart at tau 0.3
    with torch.no_grad():
        torch.testing.assert_close(target, a.target_actor(a.target_encoder(obs).float()))
        torch.testing.assert_close(a.q1(obs, target, target=True),
                                   a.target_critic(a.target_encoder(obs).float(), target)[0])
    assert a.policy_networks(target=True) == (a.target_encoder, a.target_actor)
    assert a.policy_networks() == (a.encoder, a.actor)
    with pytest.raises(ValueError, match="only evaluate"):
        a.act(obs, explore=True, target=True)


def test_update_returns_detached_tensors():
    out = agent().update(batch())
    assert {"critic_loss", "actor_loss", "q"} <= set(out)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad and v.dim() == 0 for v in out.values())


def test_critic_loss_decreases_on_a_fixed_batch():
    a = agent("agent.actor_delay=1000")
    b = batch(n=16)
    losses = [a.update(b)["critic_loss"] for _ in range(40)]
    assert float(torch.stack(losses[-5:]).mean()) < 0.3 * float(torch.stack(losses[:3]).mean())


@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_critic_loss_is_mse_or_huber_of_q_to_the_td_target(kind):
    a = agent(f"agent.critic_loss={kind}", "agent.huber_delta=2.0", "agent.actor_delay=1000")
    b = batch()
    b = Batch(b.obs, b.action, b.reward * 100.0, b.discount, b.next_obs)  # TD errors far beyond delta
    before = copy.deepcopy(a)
    with torch.no_grad():
        q = before.critic(before.encoder(b.obs), b.action)[0]
    target = _expected_target(before, b)
    expected = F.huber_loss(q, target, delta=2.0) if kind == "huber" else F.mse_loss(q, target)
    torch.testing.assert_close(a.update(b)["critic_loss"], expected)
    assert (expected < F.mse_loss(q, target) / 10) == (kind == "huber")  # linear, not squared, in the tails


# ------------------------------------------------------------------ the categorical critic (HL-Gauss)
HL = ("agent.critic_loss=hlgauss", "agent.hlgauss.bins=51", "agent.hlgauss.range=[-10,10]")


def test_hl_gauss_target_is_a_gaussian_over_the_bins_centred_on_the_td_target():
    a = agent(*HL)
    target = torch.tensor([0.0, 3.3, -7.1, 25.0, -40.0])
    probs = a._hl_gauss(target)
    assert probs.shape == (5, 51) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(1), torch.ones(5))
    centres = a.critic.centres
    mean = probs @ centres
    torch.testing.assert_close(mean[:3], target[:3], atol=1e-3, rtol=0)  # inside the support: its mean is the target
    width = float(centres[1] - centres[0])
    std = ((probs[:3] * (centres - mean[:3, None]) ** 2).sum(1)).sqrt()
    binned = math.sqrt(0.75**2 + 1 / 12) * width  # sigma 0.75 bin widths, plus binning's width^2/12 (Sheppard)
    torch.testing.assert_close(std, torch.full((3,), binned), atol=0.02 * width, rtol=0)
    assert probs[3].argmax() == 50 and probs[4].argmax() == 0  # beyond the support: clipped to its ends


def test_a_categorical_critics_q_is_its_softmax_mean_and_starts_near_zero():
    a = agent(*HL, "agent.twin_q=true")
    b = batch()
    feat = a.encoder(b.obs)
    logits = a.critic.outputs(feat, b.action)
    assert all(x.shape == (8, 51) for x in logits)
    qs = a.critic(feat, b.action)
    torch.testing.assert_close(qs[0], torch.softmax(logits[0], 1) @ a.critic.centres)
    assert qs[0].abs().max() < 0.01 * 10  # the symmetric support: a fresh, near-uniform softmax means Q = 0


def test_the_default_support_is_the_return_bound_of_the_envs_rewards():
    s = dataclasses.replace(spec(num_envs=2), action_repeat=4)
    a = agent("agent.critic_loss=hlgauss", s=s)  # range: null, gamma 0.99
    assert a.q_range == pytest.approx((-400.0, 400.0))
    assert a.critic.edges.numel() == 202 and float(a.critic.edges[-1]) == pytest.approx(400.0)


def test_categorical_critic_loss_is_cross_entropy_to_the_hl_gauss_target():
    a = agent(*HL, "agent.twin_q=true", "agent.actor_delay=1000")
    b = batch()
    b = Batch(b.obs, b.action, b.reward * 100.0, b.discount, b.next_obs)  # targets beyond the support too
    before = copy.deepcopy(a)
    target = _expected_target(before, b)
    with torch.no_grad():
        logits = before.critic.outputs(before.encoder(b.obs), b.action)
    probs = before._hl_gauss(target)
    expected = sum(-(probs * F.log_softmax(x, 1)).sum(1).mean() for x in logits)
    out = a.update(b)
    torch.testing.assert_close(out["critic_loss"], expected)
    torch.testing.assert_close(out["q"], (torch.softmax(logits[0], 1) @ before.critic.centres).mean())


def test_a_categorical_critic_fits_a_fixed_batch_and_the_actor_climbs_its_q():
    a = agent(*HL, "agent.actor_delay=1000")
    b = batch(n=16)
    b = Batch(b.obs, b.action, b.reward * 5.0, torch.zeros(16), b.next_obs)  # Q = reward: no bootstrap
    for _ in range(150):
        a.update(b)
    with torch.no_grad():
        q = a.critic(a.encoder(b.obs), b.action)[0]
    assert (q - b.reward).abs().mean() < 0.5  # from 2.5 at the start (the mean reward)
    c = agent(*HL, "agent.critic_lr=0", "agent.actor_delay=1")
    with torch.no_grad():
        feat = c.encoder(b.obs)
        q_before = c.critic(feat, c.actor(feat))[0].mean()
    for _ in range(30):
        c.update(b)
    with torch.no_grad():
        feat = c.encoder(b.obs)
        assert c.critic(feat, c.actor(feat))[0].mean() > q_before  # dQ/da flows through the softmax mean


def test_critic_weight_decay_is_in_the_critic_optimizer_only():
    a = agent("agent.critic_weight_decay=0.01")
    assert a.critic_opt.param_groups[0]["weight_decay"] == 0.01
    assert a.actor_opt.param_groups[0]["weight_decay"] == 0.0


def test_encoder_lr_is_the_encoders_own_rate_in_the_critic_optimizer():
    a = agent()  # default: one group, as checkpoints saved before the knob have it
    assert [g["lr"] for g in a.critic_opt.param_groups] == [1e-3]
    a = agent("agent.encoder_lr=1e-4", "agent.critic_weight_decay=0.01")
    enc = {id(p) for p in a.encoder.parameters()}
    for g in a.critic_opt.param_groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= enc or not ids & enc  # no group mixes encoder and critic weights
        assert g["lr"] == (1e-4 if ids <= enc else 1e-3)
        assert g["weight_decay"] == (0.01 if all(p.ndim > 1 for p in g["params"]) else 0.0)


def test_encoder_lr_0_freezes_the_encoder_and_the_critic_still_learns():
    a = agent("agent.encoder_lr=0")
    enc, crit = params(a.encoder), params(a.critic)
    a.update(batch())
    assert same(enc, params(a.encoder)) and changed(crit, params(a.critic))


def test_adam_eps_reaches_every_optimizer_and_bad_values_are_refused():
    a = agent("agent.adam_eps=1e-4")
    assert {g["eps"] for o in (a.actor_opt, a.critic_opt) for g in o.param_groups} == {1e-4}
    assert {g["eps"] for g in agent().critic_opt.param_groups} == {1e-8}
    with pytest.raises(ConfigError, match="adam_eps"):
        agent("agent.adam_eps=0")
    with pytest.raises(ConfigError, match="encoder_lr"):
        agent("agent.encoder_lr=-1")


def test_bf16_autocast_runs_on_cpu():
    a = agent(precision=BF16)
    b = batch()
    for _ in range(3):
        out = a.update(b)
    assert all(torch.isfinite(v) for v in out.values())
    assert all(p.dtype == torch.float32 for p in a.critic.parameters())  # fp32 master weights
    act = a.act(b.obs, explore=True)
    assert act.dtype == torch.float32 and act.shape == (8, 3)


@pytest.mark.parametrize("twin", [False, True])
def test_bf16_keeps_q_and_its_td_target_in_fp32(twin):
    """Only the conv encoder runs in bf16: near Q = 150 a bf16 Linear rounds to steps of 1.0, the
    size of a cheetah's reward per step; Q, its TD target and the loss must come out in fp32."""
    fp32 = agent(*(["agent.twin_q=true"] if twin else []))
    bf16 = agent(*(["agent.twin_q=true"] if twin else []), precision=BF16)
    for a in (fp32, bf16):
        with torch.no_grad():
            for head in a.critic.heads:
                head.post[-1].bias.fill_(150.0)
        a.target_critic.load_state_dict(a.critic.state_dict())
    b = batch(n=32)
    q32, q16 = fp32.q1(b.obs, b.action), bf16.q1(b.obs, b.action)
    assert q16.dtype == torch.float32
    assert 140 < float(q32.mean()) < 160
    # the encoder's bf16 error moves Q by a little; a bf16 head would add rounding of up to 0.5 per value
    err = (q16 - q32).abs()
    assert float(err.max()) < 0.25, float(err.max())
    assert len(set(q16.tolist())) > 4  # a bf16 head would put every value on its grid: 150.0 here
    loss, q, target, feat, _ = bf16._critic_loss(b.obs, b.action, b.reward, b.discount, b.next_obs, None, None)
    assert loss.dtype == q.dtype == target.dtype == feat.dtype == torch.float32
    loss32, _, target32, _, _ = fp32._critic_loss(b.obs, b.action, b.reward, b.discount, b.next_obs, None, None)
    assert abs(float(target) - float(target32)) < 0.25


def test_fp16_uses_a_grad_scaler():
    a = agent(precision=Precision(torch.device("cpu"), torch.float16, False))
    assert a.scaler is not None and agent().scaler is None and agent(precision=BF16).scaler is None
    b = batch()
    for _ in range(2):
        out = a.update(b)
    assert all(torch.isfinite(v) for v in out.values())
    assert "scale" in a.state_dict()["scaler"]


def test_compiled_and_eager_agree():
    # ~20-30 s on 2 CPU cores, most of it compiling; under the minute that would make it slow.
    torch._dynamo.reset()
    eager = agent("agent.twin_q=true", "agent.augment=true", "agent.target_policy_noise=0.2")
    compiled = agent("agent.twin_q=true", "agent.augment=true", "agent.target_policy_noise=0.2",
                     precision=Precision(torch.device("cpu"), None, True))
    b = batch()
    for _ in range(3):
        oe, oc = eager.update(b), compiled.update(b)
        for k in oe:
            torch.testing.assert_close(oc[k], oe[k], rtol=1e-4, atol=1e-5)
    for pe, pc in zip(params(*eager._online), params(*compiled._online), strict=True):
        torch.testing.assert_close(pc, pe, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.act(b.obs, explore=True), eager.act(b.obs, explore=True),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.act(b.obs[:3], explore=False), eager.act(b.obs[:3], explore=False),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.act(b.obs[:3], explore=False, target=True),
                               eager.act(b.obs[:3], explore=False, target=True), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ acting and noise
@pytest.mark.parametrize("noise", ["ou", "gaussian"])
def test_actions_stay_in_bounds_under_noise(noise):
    s = spec(low=[-1, -2, 0], high=[1, 0.5, 3])
    a = agent(f"agent.noise.type={noise}", "agent.noise.sigma=5.0", "agent.noise.clip=0", s=s)
    low, high = torch.as_tensor(s.action_low), torch.as_tensor(s.action_high)
    obs = torch.randint(0, 256, (4, *PIX), dtype=torch.uint8)
    acts = torch.stack([a.act(obs, explore=True, frame=i) for i in range(30)])
    assert acts.dtype == torch.float32 and acts.shape == (30, 4, 3)
    assert (acts >= low).all() and (acts <= high).all()
    assert ((acts == low) | (acts == high)).any()  # the noise is big enough to hit the clip
    det = a.act(obs, explore=False)
    assert torch.equal(det, a.act(obs, explore=False)) and (det >= low).all() and (det <= high).all()
    assert a.act(obs[:2], explore=True).shape == (2, 3)  # another batch size: noise state copes


def test_ou_resets_where_first():
    g = torch.Generator().manual_seed(0)
    ou = OUNoise(2, theta=0.15, sigma=0.2, dt=0.5, device=torch.device("cpu"), generator=g)
    for _ in range(5):
        ou.sample(3)
    before, gstate = ou.state.clone(), g.get_state()
    first = torch.tensor([True, False, True])
    out = ou.sample(3, first)
    eps = torch.randn(3, 2, generator=torch.Generator().manual_seed(0).set_state(gstate))
    start = torch.where(first[:, None], torch.zeros_like(before), before)
    torch.testing.assert_close(out, start * (1 - 0.15 * 0.5) + 0.2 * math.sqrt(0.5) * eps)
    assert before.abs().min() > 0


def test_agent_ou_reset_through_act():
    a = agent("agent.noise.sigma=1.0")
    obs = torch.randint(0, 256, (3, *PIX), dtype=torch.uint8)
    for _ in range(5):
        a.act(obs, explore=True)
    before, gstate = a.noise.state.clone(), a.generator.get_state()
    first = torch.tensor([True, False, False])
    a.act(obs, explore=True, first=first)
    eps = torch.randn(3, 3, generator=torch.Generator().set_state(gstate))
    start = torch.where(first[:, None], torch.zeros_like(before), before)
    torch.testing.assert_close(a.noise.state, start * (1 - 0.15) + 1.0 * eps)


def test_gaussian_std_schedule():
    n = GaussianNoise(2, 1.0, 0.1, 100, None, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert n.std(0) == 1.0 and n.std(50) == pytest.approx(0.55) and n.std(100) == pytest.approx(0.1)
    assert n.std(10_000) == pytest.approx(0.1)
    clipped = GaussianNoise(2, 10.0, 10.0, 1, 0.3, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert clipped.sample(1000).abs().max() <= 0.3


def test_ou_sigma_schedule_and_its_stationary_spread():
    g = torch.Generator().manual_seed(0)
    n = OUNoise(2, 0.15, 1.0, 1.0, torch.device("cpu"), g, sigma_end=0.1, sigma_frames=100)
    assert n.sigma_at(0) == 1.0 and n.sigma_at(50) == pytest.approx(0.55) and n.sigma_at(10_000) == pytest.approx(0.1)
    assert OUNoise(2, 0.15, 0.2, 1.0, torch.device("cpu"), g).sigma_at(10_000) == 0.2  # no sigma_end: constant
    early = torch.stack([n.sample(256, frame=0) for _ in range(200)])[100:]
    late = torch.stack([n.sample(256, frame=10_000) for _ in range(200)])[100:]
    # stationary std of x' = (1 - θ) x + σ ε is σ / sqrt(1 - (1 - θ)^2): 1.9 σ for θ = 0.15
    assert float(early.std()) == pytest.approx(1.9, rel=0.1) and float(late.std()) == pytest.approx(0.19, rel=0.1)
    with pytest.raises(ConfigError, match="sigma"):
        OUNoise(2, 0.15, 1.0, 1.0, torch.device("cpu"), g, sigma_end=-1.0)


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("extra", [(), ("agent.batch_norm=true", "agent.twin_q=true", "agent.augment=true",
                                         "agent.target_policy_noise=0.2", "agent.noise.type=gaussian")])
def test_state_dict_round_trip(extra):
    a = agent(*extra, seed=1)
    b = batch()
    obs = b.obs[:4]
    for i in range(3):
        a.act(obs, explore=True, frame=i)
        a.update(b)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    restored = agent(*extra, seed=7)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a.act(obs, explore=False), restored.act(obs, explore=False))
    first = torch.tensor([False, True, False, False])
    assert torch.equal(a.act(obs, explore=True, first=first, frame=5),
                       restored.act(obs, explore=True, first=first, frame=5))
    oa, orr = a.update(b), restored.update(b)
    for k in oa:
        assert torch.equal(oa[k], orr[k]) or (torch.isnan(oa[k]) and torch.isnan(orr[k]))
    assert same(params(*a._online, *a._targets), params(*restored._online, *restored._targets))
    assert a.updates == restored.updates == 4


def test_config_signature_is_plain_and_compares():
    sig = agent().config_signature()
    assert json.loads(json.dumps(sig)) == sig
    assert sig["obs_shape"] == list(PIX) and sig["action_dim"] == 3
    assert agent("agent.tau=0.5").config_signature() == sig  # not a network shape
    assert agent("agent.pixel_hidden=[100,100]").config_signature() != sig
    assert agent("agent.twin_q=true").config_signature() != sig
    hl = agent("agent.critic_loss=hlgauss").config_signature()
    assert hl != sig  # a categorical critic's checkpoint
    assert hl["critic_bins"]["bins"] == 201
    assert hl["critic_bins"]["range"] == pytest.approx([-100.0, 100.0])  # the support its logits mean (repeat 1)
    assert agent("agent.critic_loss=hlgauss", "agent.hlgauss.range=[-10,10]").config_signature() != hl
    assert agent("agent.critic_loss=huber").config_signature() == sig  # the same networks
    assert agent("agent.critic_norm=layer").config_signature() != sig  # LayerNorm weights in the Q heads
    assert agent("agent.critic_norm=none").config_signature() == sig


@pytest.mark.parametrize("twin", ["false", "true"])
def test_critic_norm_layer_normalises_every_hidden_layer_of_each_q_head_only(twin):
    a = agent("agent.critic_norm=layer", f"agent.twin_q={twin}", seed=1)
    plain = agent(f"agent.twin_q={twin}", seed=1)
    critic = a._online[2]
    for head in critic.heads:
        mods = [m for part in (head.pre, head.post) if part is not None for m in part]
        linears = [i for i, m in enumerate(mods) if isinstance(m, torch.nn.Linear)]
        # every Linear but the output is followed by a LayerNorm of its width, then the ReLU
        for i in linears[:-1]:
            assert isinstance(mods[i + 1], torch.nn.LayerNorm) and mods[i + 1].normalized_shape == (mods[i].out_features,)
            assert isinstance(mods[i + 2], torch.nn.ReLU)
        assert not isinstance(mods[-1], torch.nn.LayerNorm)
    n_heads = len(critic.heads)
    n_ln = sum(isinstance(m, torch.nn.LayerNorm) for m in critic.modules())
    n_ln_plain = sum(isinstance(m, torch.nn.LayerNorm) for m in plain._online[2].modules())
    assert n_ln - n_ln_plain == n_heads * len(a.settings.hidden)
    # the actor and encoder are untouched
    for i in (0, 1):
        assert [type(m) for m in a._online[i].modules()] == [type(m) for m in plain._online[i].modules()]
    b = batch()
    for _ in range(2):
        out = a.update(b)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_state_trunk_gives_a_state_learner_the_pixel_heads_input():
    s = spec((5,))
    plain, a = agent(s=s, seed=1), agent("agent.state_trunk=true", s=s, seed=1)
    _, actor, critic = a._online
    for trunk in (actor.trunk, critic.trunk):  # Linear(state -> feature_dim) -> LayerNorm -> tanh, as on pixels
        assert [type(m) for m in trunk] == [torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Tanh]
        assert trunk[0].in_features == 5 and trunk[1].normalized_shape == (a.settings.encoder.feature_dim,)
    assert plain._online[1].trunk is None and plain._online[2].trunk is None
    # a network shape: a checkpoint of either does not load into the other; off, the signature is as before
    assert a.config_signature() != plain.config_signature()
    assert "state_trunk" not in plain.config_signature()
    assert agent("agent.state_trunk=false", s=s).config_signature() == plain.config_signature()
    # the pixel learner's trunk is agent.encoder.trunk's alone
    assert agent("agent.state_trunk=true").config_signature() == agent().config_signature()
    out = a.update(batch(s))
    assert all(torch.isfinite(v).all() for v in out.values())
    with pytest.raises(ConfigError, match="state_trunk"):
        agent("agent.state_trunk=maybe", s=s)


def test_critic_norm_bad_value_or_with_batch_norm_is_a_config_error():
    with pytest.raises(ConfigError, match="critic_norm"):
        agent("agent.critic_norm=group")
    with pytest.raises(ConfigError, match="critic_norm"):
        agent("agent.critic_norm=layer", "agent.batch_norm=true")


def test_bad_config_is_a_config_error():
    with pytest.raises(ConfigError):
        agent("agent.noise.type=pink")
    with pytest.raises(ConfigError):
        agent("agent.encoder.type=resnet")
    with pytest.raises(ConfigError):
        agent("agent.actor_delay=0")
    with pytest.raises(ConfigError, match="critic_loss"):
        agent("agent.critic_loss=l1")
    with pytest.raises(ConfigError, match="huber_delta"):
        agent("agent.critic_loss=huber", "agent.huber_delta=0")
    with pytest.raises(ConfigError, match="huber_delta"):
        agent("agent.critic_loss=huber", "agent.huber_delta=null")
    with pytest.raises(ConfigError, match="hlgauss.bins"):
        agent("agent.critic_loss=hlgauss", "agent.hlgauss.bins=1")
    with pytest.raises(ConfigError, match="hlgauss.range"):
        agent("agent.critic_loss=hlgauss", "agent.hlgauss.range=[5,-5]")
    with pytest.raises(ConfigError, match="hlgauss.sigma"):
        agent("agent.critic_loss=hlgauss", "agent.hlgauss.sigma=0")


# ------------------------------------------------------------------ options
@pytest.mark.parametrize("obs_shape", [PIX, (5,)])
def test_batch_norm_train_vs_eval(obs_shape):
    s = spec(obs_shape)
    a = agent("agent.batch_norm=true", s=s)
    bns = [m for m in a.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and any(isinstance(m, torch.nn.BatchNorm1d) for m in a.actor.modules())
    stats = [b.clone() for m in a._online for b in m.buffers()]
    b = batch(s, n=8)
    # acting: running statistics, so a sample's action does not depend on the rest of the batch
    full = a.act(b.obs, explore=False)
    torch.testing.assert_close(a.act(b.obs[:3], explore=False), full[:3])
    assert all(torch.equal(x, y) for x, y in zip(stats, [b.clone() for m in a._online for b in m.buffers()]))
    # training: batch statistics (depend on the batch) and the running statistics move
    a._set_train(True)
    with torch.no_grad():
        train_full = a.actor(a.encoder(b.obs))
        train_part = a.actor(a.encoder(b.obs[:3]))
    assert not torch.allclose(train_full[:3], train_part)
    a._set_train(False)
    out = a.update(b)
    assert torch.isfinite(out["critic_loss"])
    assert changed(stats, [b.clone() for m in a._online for b in m.buffers()])
    assert a.encoder.training and a.actor.training  # the update ran in train mode (batch statistics)
    a.act(b.obs, explore=False)  # acting switches to running statistics
    assert not a.encoder.training and not a.target_encoder.training
    # targets use running statistics copied from the online networks
    for t, o in zip(a._target_stats, a._online_stats, strict=True):
        assert torch.equal(t, o)


def _expected_target(a: DDPGAgent, b: Batch, eps: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        feat = a.target_encoder(b.next_obs)
        act = a.target_actor(feat)
        if eps is not None:
            noise = (eps * a.target_noise).clamp(-a.target_noise_clip, a.target_noise_clip) * a.actor.scale
            act = torch.max(torch.min(act + noise, a._high), a._low)
        qs = a.target_critic(feat, act)
        return b.reward + b.discount * torch.stack(qs).min(0).values


def test_twin_q_min_target_and_actor_uses_q1():
    a = agent("agent.twin_q=true", "agent.critic_lr=0")
    assert len(a.critic.heads) == 2
    b = batch()
    before = copy.deepcopy(a)
    with torch.no_grad():
        feat = before.target_encoder(b.next_obs)
        q1, q2 = before.target_critic(feat, before.target_actor(feat))
    assert not torch.equal(torch.min(q1, q2), q1)  # the min matters on this batch
    out = a.update(b)
    torch.testing.assert_close(out["target_q"], _expected_target(before, b).mean())
    with torch.no_grad():
        f = before.encoder(b.obs)
        q1_online = before.critic(f, before.actor(f))[0]
    torch.testing.assert_close(out["actor_loss"], -q1_online.mean())


def test_target_policy_smoothing():
    a = agent("agent.target_policy_noise=0.2", "agent.target_noise_clip=0.3", "agent.noise.clip=0")
    b = batch()
    before = copy.deepcopy(a)
    eps = torch.randn(8, 3, generator=torch.Generator().set_state(a.generator.get_state()))
    out = a.update(b)
    expected = _expected_target(before, b, eps).mean()
    torch.testing.assert_close(out["target_q"], expected)
    assert not torch.allclose(expected, _expected_target(before, b).mean(), rtol=0, atol=1e-7)


def test_actor_delay():
    a = agent("agent.actor_delay=3")
    b = batch()
    history = []
    for i in range(1, 7):
        act, targets = params(a.actor), params(*a._targets)
        out = a.update(b)
        history.append((changed(act, params(a.actor)), changed(targets, params(*a._targets))))
        assert isinstance(out["actor_loss"], torch.Tensor)
        if i < 3:
            assert torch.isnan(out["actor_loss"])
    assert history == [(False, False), (False, False), (True, True)] * 2


def test_random_shift_per_sample_within_pad():
    pad, n = 4, 64
    x = torch.randint(0, 256, (n, 6, 16, 20), dtype=torch.uint8)
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=torch.Generator().manual_seed(3))
    out = random_shift(x, shifts, pad)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    padded = F.pad(x.float(), (pad,) * 4, mode="replicate")  # DrQ's definition: replicate-pad, crop
    for i in range(n):
        sy, sx = shifts[i].tolist()
        assert torch.equal(out[i].float(), padded[i, :, sy:sy + 16, sx:sx + 20])
    assert len({tuple(s) for s in shifts.tolist()}) > 10  # each sample its own shift
    xf = x.float() / 255
    assert random_shift(xf, shifts, pad).dtype == torch.float32


def test_augment_in_the_update_uses_the_agent_generator():
    b = batch()
    obs_copy = b.obs.clone()
    a1, a2 = agent("agent.augment=true", seed=0), agent("agent.augment=true", seed=0)
    a2.generator.manual_seed(123)  # same weights, other shifts
    o1, o2 = a1.update(b), a2.update(b)
    assert not torch.equal(o1["critic_loss"], o2["critic_loss"])
    assert torch.equal(b.obs, obs_copy)  # the batch is not shifted in place
    plain = agent(seed=0).update(b)
    assert not torch.equal(plain["critic_loss"], o1["critic_loss"])


def test_drqv2_config_builds_and_updates():
    cfg = compose(["agent=drqv2", "obs=pixels_drqv2"])
    size, stack = int(cfg.obs.image_size), int(cfg.obs.frame_stack)
    s = spec((3 * stack, size, size), action_dim=2)
    a = make_agent(cfg.agent, s, CPU, 0)
    assert a.batch_size == 256 and a.twin_q and a.augment and isinstance(a.noise, GaussianNoise)
    convs = [m for m in a.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert isinstance(a.critic.trunk[1], torch.nn.LayerNorm) and a.critic.trunk[0].out_features == 50
    assert a.critic.heads[0].post[0].out_features == 1024 and len(a.critic.heads) == 2
    b = batch(s, n=4)
    out = a.update(b)
    assert all(torch.isfinite(v) for v in out.values())
    act = a.act(b.obs, explore=True, frame=1000)
    assert act.shape == (4, 2) and act.abs().max() <= 1


def test_state_obs_updates():
    s = spec((5,))
    a = agent(s=s)
    b = batch(s, n=16)
    for _ in range(2):
        out = a.update(b)
    assert all(torch.isfinite(v) for v in out.values())
    assert a.act(b.obs.double(), explore=True).dtype == torch.float32
