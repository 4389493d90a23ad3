"""The actor's collapse onto the action bounds (issue 12): what shows it, and what undoes it.

With the paper's pixel setup and TD3's faster rates (actor lr 1e-3, τ 0.005) every action went to
−1 within 700 updates and stayed there. The diagnostics logged in train.csv show it (share of
saturated actions, mean |pre-tanh|, encoder feature norm); the pre-tanh penalty makes the
saturated state one the actor can leave.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pixel_ddpg.errors import ConfigError
from pixel_ddpg.agent import SATURATED
from tests.conftest import agent, batch, spec


def test_update_reports_the_collapse_diagnostics():
    a = agent("agent.actor_lr=1e-3")
    b = batch(n=16)
    with torch.no_grad():
        feat = a.encoder(b.obs)
        pre = a.actor.pre_tanh(feat)
    out = a.update(b)
    torch.testing.assert_close(out["feat_norm"], feat.norm(dim=1).mean())
    torch.testing.assert_close(out["pre_tanh"], pre.abs().mean())
    torch.testing.assert_close(out["sat_frac"], (torch.tanh(pre).abs() > SATURATED).float().mean())
    assert all(not v.requires_grad for v in out.values())


def _saturate(a) -> None:
    """Put the actor where the collapse left it: every pre-tanh output near +8 (|a| > 0.9999)."""
    with torch.no_grad():
        a.actor.net[-1].bias.fill_(8.0)


def _pre_tanh_after(a, updates: int) -> tuple[float, float]:
    out = {}
    for i in range(updates):
        out = a.update(batch(n=16, seed=i))
    return float(out["pre_tanh"]), float(out["sat_frac"])


def test_without_the_penalty_saturation_is_absorbing():
    a = agent("agent.actor_lr=1e-3")
    _saturate(a)
    start, _ = _pre_tanh_after(a, 1)
    end, sat = _pre_tanh_after(a, 60)
    assert sat == 1.0 and abs(end - start) < 0.2, (start, end)  # tanh's gradient is ~1e-7: no way back


def test_the_pre_tanh_penalty_pulls_a_saturated_actor_back():
    a = agent("agent.actor_lr=1e-3", "agent.actor_preact_penalty=0.01")
    _saturate(a)
    start, _ = _pre_tanh_after(a, 1)
    end, sat = _pre_tanh_after(a, 60)
    assert end < start - 2.0, (start, end)


def test_the_penalty_beyond_a_knee_still_pulls_a_saturated_actor_back():
    a = agent("agent.actor_lr=1e-3", "agent.actor_preact_penalty=0.01", "agent.actor_preact_knee=2.0")
    _saturate(a)
    start, _ = _pre_tanh_after(a, 1)
    end, sat = _pre_tanh_after(a, 60)
    assert end < start - 2.0, (start, end)


@pytest.mark.parametrize("knee,pulls", [(0.0, True), (2.0, False)])
def test_below_the_knee_the_penalty_does_not_pull_actions_to_zero(knee, pulls):
    """On a sparse task dQ/da is ~0 before the first reward: the plain u^2 penalty then drags every
    action to 0 (finger_spin stayed pinned there); beyond a knee it leaves |u| < knee alone."""
    a = agent("agent.actor_preact_penalty=0.01", f"agent.actor_preact_knee={knee}")
    feat = torch.randn(16, a.encoder.out_dim)
    pre = a.actor.pre_tanh(feat)
    assert pre.abs().max() < 2.0
    with torch.no_grad():
        a.critic.heads[0].post[-1].weight.zero_()  # a flat critic: no dQ/da at all
    loss, _, _ = a._actor_loss(feat)
    loss.backward()
    grad = a.actor.net[-1].weight.grad.abs().sum()
    assert bool(grad > 0) is pulls, float(grad)


def test_a_negative_knee_is_refused():
    with pytest.raises(ConfigError, match="actor_preact_knee"):
        agent("agent.actor_preact_knee=-1")


def test_trunk_on_the_paper_encoder_and_bad_values():
    a = agent("agent.encoder.trunk=true")
    assert isinstance(a.actor.trunk[1], torch.nn.LayerNorm) and a.actor.trunk[0].out_features == 50
    assert a.config_signature()["encoder"]["feature_dim"] == 50
    assert agent().config_signature()["encoder"]["feature_dim"] is None
    with pytest.raises(ConfigError, match="actor_preact_penalty"):
        agent("agent.actor_preact_penalty=-1")
    with pytest.raises(ConfigError, match="actor_preact_penalty=None must be a number"):
        agent("agent.actor_preact_penalty=null")
    with pytest.raises(ConfigError, match="trunk"):
        agent("agent.encoder.trunk=maybe")


def test_a_run_logs_the_diagnostics_and_warns_once_when_the_actor_saturates(tmp_path):
    from tests.conftest import rows, train

    # An absurd actor rate saturates the actor within a few dozen updates.
    proc = train(tmp_path / "run", "obs=pixels_paper", "total_frames=480", "agent.actor_lr=0.3", "eval.every_frames=480")
    logged = [r for r in rows(tmp_path / "run" / "train.csv") if r["sat_frac"]]
    assert logged and all(r["feat_norm"] and r["pre_tanh"] and r["dead_ch"] for r in logged)
    assert all(0.0 <= float(r["dead_ch"]) <= 1.0 for r in logged)
    assert float(logged[-1]["sat_frac"]) >= 0.95, logged[-1]
    assert proc.stdout.count("tanh saturated") == 1, proc.stdout


def warning_trainer(q_per_return: float = 1.0) -> tuple[SimpleNamespace, list[str]]:
    """What Trainer._warn_on_collapse reads of a trainer, and the lines it says."""
    said: list[str] = []
    fake = SimpleNamespace(_collapse_rows={}, _collapse_warned=set(), counters=SimpleNamespace(frame=0),
                           _last_eval=None, _q_per_return=q_per_return,
                           log=SimpleNamespace(progress=SimpleNamespace(write=said.append)))
    return fake, said


def test_the_warnings_fire_once_after_two_bad_log_points_in_a_row():
    from pixel_ddpg.trainer import Trainer

    fake, said = warning_trainer()
    rows = [{"sat_frac": 1.0, "feat_norm": 2.0}, {"sat_frac": 0.5, "feat_norm": 0.0},  # neither twice in a row
            {"sat_frac": 1.0, "feat_norm": 3.0}, {"sat_frac": 0.97, "feat_norm": 0.0},
            {"sat_frac": 1.0, "feat_norm": 0.0}, {"sat_frac": 1.0, "feat_norm": 0.0}, {"sat_frac": 1.0, "feat_norm": 0.0}]
    for i, row in enumerate(rows):
        fake.counters.frame = 1000 * i
        Trainer._warn_on_collapse(fake, row)
    assert [m.split(" frames ")[0] for m in said] == ["warning: at 3,000", "warning: at 4,000"]
    assert "tanh saturated" in said[0] and "encoder's features are all zero" in said[1]


def test_a_critic_whose_q_runs_away_from_what_the_policy_earns_is_named_once():
    """cheetah_run seed 2's rows before and after its collapse (docs/results.md): Q 81 while the
    episodes earned 269, then Q 108 against 29. A zero-reward start (Q near 0) never counts."""
    from pixel_ddpg.trainer import Trainer, q_per_return

    k = q_per_return(0.99, 250)
    assert k == pytest.approx((1 - 0.99 ** 250) / 0.01 / 250) and 0.35 < k < 0.37
    fake, said = warning_trainer(k)
    rows = [(0.01, 0.0, None), (81.0, 269.0, 273.0), (108.0, 29.0, 273.0),  # the last evaluation still holds it up
            (108.0, 29.0, 30.0), (2.0, 0.0, 0.0), (110.0, 25.0, 30.0), (120.0, 20.0, 30.0), (130.0, 20.0, 30.0)]
    for i, (q, ret, last_eval) in enumerate(rows):
        fake.counters.frame, fake._last_eval = 10_000 * i, last_eval
        Trainer._warn_on_collapse(fake, {"q": q, "episode_return": ret, "critic_loss": 89.8, "sat_frac": 0.7, "feat_norm": 5.0})
    assert len(said) == 1 and said[0].startswith("warning: at 60,000 frames the critic's mean Q (120)"), said
    assert "overestimates" in said[0]


def test_a_resumed_run_compares_q_with_its_last_evaluation_not_its_best():
    """A run that fell from 273 to 30 and was resumed must not measure Q against the 273 it lost;
    a checkpoint from before the counter existed has only the best."""
    from pixel_ddpg.trainer import Counters, last_evaluation

    assert last_evaluation(Counters()) is None
    assert last_evaluation(Counters(best_return=273.0, last_eval_return=30.0)) == 30.0
    assert last_evaluation(Counters(best_return=273.0)) == 273.0  # older checkpoints


def replay_warnings(run_dir) -> list[str]:
    """The warnings a committed run's train.csv and eval.csv rows give, fed to the check in the
    trainer's order (the evaluation at a frame before that frame's log row)."""
    import csv

    import yaml

    from pixel_ddpg.trainer import Trainer, q_per_return

    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    evals = {int(r["frame"]): float(r["return_mean"]) for r in csv.DictReader((run_dir / "eval.csv").open())}
    steps = cfg["env"]["episode_sim_steps"] // cfg["obs"]["action_repeat"]
    fake, said = warning_trainer(q_per_return(cfg["agent"]["gamma"], steps))
    for r in csv.DictReader((run_dir / "train.csv").open()):
        fake.counters.frame = frame = int(r["frame"])
        fake._last_eval = max(((f, v) for f, v in evals.items() if f <= frame), default=(0, None))[1]
        Trainer._warn_on_collapse(fake, {k: float(v) if v else math.nan for k, v in r.items()})
    return said


def test_the_divergence_check_names_cheetah_seed_2s_collapse_and_not_seed_1s_run():
    """The committed 500k runs (docs/results.md): seed 2 fell from 273 to 30 at 140k with Q at 108."""
    results = Path(__file__).resolve().parents[1] / "docs/results/default_learner"
    said = replay_warnings(results / "cheetah_run-500k-seed2")
    assert len(said) == 1 and said[0].startswith("warning: at 150,000 frames the critic's mean Q (100)"), said
    assert replay_warnings(results / "cheetah_run-500k-seed1") == []


@pytest.mark.parametrize("agent_name,trunk", [("ddpg", False), ("drqv2", True)])
def test_a_config_from_before_these_options_builds_the_same_agent(agent_name, trunk):
    """Older checkpoints' configs have no actor_preact_penalty or encoder.trunk: evaluate and
    resume rebuild the agent from them, with the meaning those configs had."""
    from omegaconf import OmegaConf

    from pixel_ddpg.agent import make_agent
    from pixel_ddpg.config import compose
    from tests.conftest import CPU, spec

    cfg = compose([f"agent={agent_name}"])
    old = OmegaConf.to_container(cfg.agent, resolve=True)
    del old["actor_preact_penalty"], old["encoder"]["trunk"]
    now = make_agent(cfg.agent, spec(), CPU, 0)
    before = make_agent(OmegaConf.create(old), spec(), CPU, 0)
    assert before.preact_penalty == 0.0 and (before.actor.trunk is not None) is trunk
    assert before.config_signature() == now.config_signature()


def test_dead_channels_counts_the_channels_no_image_switches_on():
    a = agent()
    obs = batch(n=16).obs
    fresh = a.encoder.dead_channels(obs)
    assert fresh.shape == (3,) and not fresh.requires_grad
    with torch.no_grad():
        a.encoder.convs[0].bias[:8] = -1e3  # a quarter of the first layer's channels can no longer fire
    dead = a.encoder.dead_channels(obs)
    assert float(dead[0]) >= max(0.25, float(fresh[0]))
    with torch.no_grad():
        a.encoder.convs[0].bias.fill_(-1e3)  # the whole first layer: nothing reaches the others either
    dead = a.encoder.dead_channels(obs)
    assert float(dead[0]) == 1.0
    assert a.update(batch(n=16))["feat_norm"] >= 0  # still trains (it is blind, which feat_norm shows later)


def test_dead_channels_leaves_batch_norm_statistics_alone():
    a = agent("agent.batch_norm=true")
    bn = next(m for m in a.encoder.convs if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    a.encoder.train()
    a.encoder.dead_channels(batch(n=16).obs)
    torch.testing.assert_close(bn.running_mean, before)
    assert a.encoder.training


def test_centred_pixels_are_the_unit_range_pixels_less_a_half():
    plain, centred = agent(), agent("agent.encoder.center=true")
    obs = batch(n=4).obs
    assert torch.equal(centred.encoder._scaled(obs), plain.encoder._scaled(obs) - 0.5)
    assert centred.config_signature()["encoder"]["center"] is True
    assert "center" not in plain.config_signature()["encoder"]  # signatures of older checkpoints still match
    with pytest.raises(ConfigError, match="center"):
        agent("agent.encoder.center=maybe")


def test_flare_hands_on_the_newest_frames_features_and_its_differences_to_the_older_ones():
    a = agent("agent.encoder.flare=true", "agent.encoder.trunk=true", "agent.encoder.center=true")
    enc, obs = a.encoder, batch(n=4).obs  # (4, 9, 32, 32): 3 RGB frames, oldest first
    with torch.no_grad():
        # a frame's own features: the encoder's first block on a stack of that frame alone
        alone = [enc(obs[:, 3 * i:3 * i + 3].repeat(1, 3, 1, 1)) for i in range(3)]
        d = enc.out_dim // 3
        for f in alone:
            assert torch.equal(f[:, d:], torch.zeros_like(f[:, d:]))  # a still scene has no differences
        newest, out = alone[2][:, :d], enc(obs)
    torch.testing.assert_close(out, torch.cat([newest, newest - alone[0][:, :d], newest - alone[1][:, :d]], 1))
    assert enc.convs[0].in_channels == 3
    assert d == agent("agent.encoder.trunk=true").encoder.out_dim  # the convs see 3 channels, not 9: same map
    assert a.actor.trunk[0].in_features == enc.out_dim
    assert a.config_signature()["encoder"]["flare"] is True
    assert "flare" not in agent().config_signature()["encoder"]  # signatures of older checkpoints still match
    with pytest.raises(ConfigError, match="at least 2 RGB frames"):
        agent("agent.encoder.flare=true", s=spec((3, 32, 32)))
    with pytest.raises(ConfigError, match="flare"):
        agent("agent.encoder.flare=maybe")
