"""The published learners, faithful (issue 23): DrQ-v2 (`setup=drqv2`) and the DDPG paper's
(`setup=paper`, agent=ddpg_paper), each value pinned against where it is published.

DrQ-v2: Yarats et al. 2021, facebookresearch/drqv2 at its published commit: `cfgs/config.yaml`
(shared settings), `cfgs/task/<task>.yaml` with `easy.yaml` / `medium.yaml` (per-task schedules,
walker's batch and n-step), `drqv2.py` (the update), `utils.py` (init, TruncatedNormal), `dmc.py`
(84x84 renders). DDPG: Lillicrap et al. 2016, section 7 and "Experiment details".
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from envs.pool import EnvSpec
from pixel_ddpg.agent import make_agent, random_shift
from pixel_ddpg.batch import Batch
from pixel_ddpg.config import compose
from pixel_ddpg.device import Precision
from pixel_ddpg.rollout import agent_policy
from pixel_ddpg.trainer import updates_per_step

CPU = Precision(torch.device("cpu"), None, False)

# cfgs/task/<task>.yaml: the difficulty's stddev_schedule linear(1.0, 0.1, N) in agent steps
# (easy.yaml N=100000, medium.yaml N=500000); walker_walk.yaml adds nstep 1 and batch_size 512.
DRQV2_TASKS = {  # env group: (task file, schedule steps, batch_size, nstep)
    "cartpole": ("cartpole_swingup", 100_000, 256, 3),
    "cartpole_balance": ("cartpole_balance", 100_000, 256, 3),
    "ball_in_cup": ("cup_catch", 100_000, 256, 3),
    "finger": ("finger_spin", 100_000, 256, 3),
    "pendulum": ("pendulum_swingup", 100_000, 256, 3),
    "walker": ("walker_walk", 100_000, 512, 1),
    "cheetah": ("cheetah_run", 500_000, 256, 3),
    "reacher": ("reacher_easy", 500_000, 256, 3),
    "hopper": ("hopper_hop", 500_000, 256, 3),
    "quadruped": ("quadruped_walk", 500_000, 256, 3),
}


@pytest.mark.parametrize("env", sorted(DRQV2_TASKS))
def test_drqv2_settings_are_the_published_ones(env):
    task, steps, batch_size, nstep = DRQV2_TASKS[env]
    cfg = compose([f"env={env}", "setup=drqv2"])
    a, obs = cfg.agent, cfg.obs
    assert a.name == "drqv2"
    # cfgs/config.yaml
    assert obs.action_repeat == 2 and obs.frame_stack == 3 and not obs.render_substeps  # action_repeat, frame_stack
    assert a.gamma == 0.99                                     # discount
    assert cfg.warmup_frames == 4000                           # num_seed_frames (= num_expl_steps 2000 x repeat 2)
    assert cfg.replay.max_transitions == 1_000_000             # replay_buffer_size
    assert a.actor_lr == a.critic_lr == 1e-4                   # lr
    assert a.encoder.feature_dim == 50                         # feature_dim
    assert list(a.pixel_hidden) == [1024, 1024]                # hidden_dim
    assert a.tau == 0.01                                       # critic_target_tau
    assert a.frames_per_update == 2 * obs.action_repeat        # update_every_steps: 2
    assert updates_per_step(cfg) == 0.5
    assert a.target_noise_clip == 0.3                          # stddev_clip
    # cfgs/task/<task>.yaml (+ easy.yaml / medium.yaml)
    assert a.batch_size == batch_size and a.nstep == nstep, task
    assert (a.noise.type, a.noise.std_start, a.noise.std_end) == ("gaussian", 1.0, 0.1)
    assert a.noise.std_frames == steps * obs.action_repeat, task  # the schedule counts agent steps
    assert a.noise.clip == 0.0                                  # act(): dist.sample(clip=None)
    # dmc.py renders 84x84; drqv2.py's networks and update
    assert obs.image_size == 84
    enc = a.encoder
    assert (list(enc.channels), list(enc.kernels), list(enc.strides)) == ([32] * 4, [3] * 4, [2, 1, 1, 1])
    assert enc.center and enc.trunk                              # obs / 255 - 0.5; Linear-LayerNorm-tanh trunk
    assert a.init == "orthogonal"                                # utils.weight_init
    assert a.twin_q and a.actor_delay == 1 and a.actor_q == "min" and a.actor_noise
    assert a.target_noise_schedule and not a.target_encoder and not a.target_actor
    assert a.augment and a.augment_pad == 4                      # RandomShiftsAug(pad=4)
    assert not a.batch_norm and a.critic_weight_decay == 0 and a.actor_preact_penalty == 0


def test_a_task_without_a_drqv2_block_gets_the_medium_schedule():
    cfg = compose(["env=cheetah", "setup=drqv2", "~env.drqv2"])
    assert cfg.agent.noise.std_frames == 1_000_000 and cfg.agent.batch_size == 256 and cfg.agent.nstep == 3


def pixel_spec(obs_shape=(9, 16, 16), action_dim=2, num_envs=1) -> EnvSpec:
    low, high = -np.ones(action_dim, np.float32), np.ones(action_dim, np.float32)
    return EnvSpec(tuple(obs_shape), np.dtype(np.uint8), tuple(obs_shape), 1, action_dim, low, high, num_envs, 1, 100)


def pixel_batch(s: EnvSpec, n: int = 8, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = lambda: torch.randint(0, 256, (n, *s.obs_shape), dtype=torch.uint8, generator=g)  # noqa: E731
    return Batch(obs(), torch.rand(n, s.action_dim, generator=g) * 2 - 1, torch.rand(n, generator=g),
                 torch.full((n,), 0.99), obs())


def test_drqv2_update_targets_and_actor_loss_are_drqv2s():
    """drqv2.py update_critic: a' = clamp(μ(s') + clip(std ε, ±0.3)) from the *online* encoder and
    actor, V = min(Q1', Q2') of the target critic; update_actor: −min(Q1, Q2) at a sample
    μ(s) + clip(std ε, ±0.3); std from the schedule at the current step."""
    cfg = compose(["env=walker", "setup=drqv2", "agent.critic_lr=0", "agent.pixel_hidden=[64,64]"])
    s = pixel_spec()
    a = make_agent(cfg.agent, s, CPU, seed=3)
    b = pixel_batch(s)
    frame = 50_000
    std = 1.0 - 0.9 * frame / cfg.agent.noise.std_frames
    assert a.noise.scale_at(frame) == pytest.approx(std)
    before = copy.deepcopy(a)
    g = torch.Generator().set_state(a.generator.get_state())
    shifts = torch.randint(0, 2 * a.pad + 1, (2, 8, 2), generator=g)   # the update's draws, in its order
    target_eps = torch.randn(8, 2, generator=g) * std
    actor_eps = torch.randn(8, 2, generator=g) * std
    out = a.update(b, frame=frame)
    with torch.no_grad():
        obs, next_obs = random_shift(b.obs, shifts[0], a.pad), random_shift(b.next_obs, shifts[1], a.pad)
        next_feat = before.encoder(next_obs)                       # online encoder, no target copy
        next_action = (before.actor(next_feat) + target_eps.clamp(-0.3, 0.3)).clamp(-1, 1)
        target = b.reward + b.discount * torch.min(*before.target_critic(next_feat, next_action))
        feat = before.encoder(obs)
        sample = (before.actor(feat) + actor_eps.clamp(-0.3, 0.3)).clamp(-1, 1)
        q1, q2 = before.critic(feat, sample)
    torch.testing.assert_close(out["target_q"], target.mean())
    torch.testing.assert_close(out["actor_loss"], -torch.min(q1, q2).mean())
    assert not torch.allclose(torch.min(q1, q2).mean(), q1.mean(), rtol=0, atol=1e-7)  # the min matters here


def test_drqv2_actor_gradient_passes_the_bound_clamp_straight_through():
    """utils.TruncatedNormal.sample clamps the sample to the bounds with x - x.detach() + clamped:
    an actor whose noisy sample leaves the bounds still gets the gradient of Q at the bound."""
    cfg = compose(["env=walker", "setup=drqv2", "agent.pixel_hidden=[64,64]"])
    a = make_agent(cfg.agent, pixel_spec(), CPU, seed=0)
    feat = a.encoder(pixel_batch(pixel_spec()).obs).detach()
    eps = torch.full((8, 2), 5.0)  # clipped to +0.3: near-saturated means leave the bounds
    with torch.no_grad():
        a.actor.net[-1].bias.fill_(3.0)  # tanh(3) + 0.3 > 1 for every sample
    a.critic.requires_grad_(False)
    loss = a._actor_loss(feat, eps)[0]
    loss.backward()
    assert a.actor.net[-1].bias.grad is not None and a.actor.net[-1].bias.grad.abs().sum() > 0


def test_drqv2_updates_once_every_second_agent_step(tmp_path):
    from pixel_ddpg.trainer import Trainer

    cfg = compose(["env=cartpole_balance", "setup=drqv2", "env.episode_sim_steps=64", "obs.image_size=16",
                   "num_envs=1", "agent.batch_size=4", "agent.pixel_hidden=[32,32]", "total_frames=64",
                   "warmup_frames=16", "device=cpu", "compile=false", "amp=false", "replay.capacity=100",
                   "log.tensorboard=false", "async_env=false"])
    trainer = Trainer(cfg, tmp_path)
    try:
        trainer.start()
        made = []
        for _ in range(24):
            before = trainer.agent.updates
            trainer.iteration()
            made.append(trainer.agent.updates - before)
    finally:
        trainer.close()
    started = made.index(1)
    assert made[:started] == [0] * started                     # seed frames: no update
    assert made[started:] == [1, 0] * ((24 - started) // 2) + [1] * ((24 - started) % 2), made


# ------------------------------------------------------------------ the DDPG paper's learner
def test_setup_paper_is_the_papers_learner_as_stated():
    cfg = compose(["env=cheetah", "setup=paper"])
    a, obs = cfg.agent, cfg.obs
    assert a.name == "ddpg_paper"
    assert a.batch_norm and a.critic_weight_decay == 1e-2              # BN; "L2 weight decay of 1e-2" on Q
    assert (a.actor_lr, a.critic_lr, a.gamma, a.tau) == (1e-4, 1e-3, 0.99, 0.001)
    assert a.batch_size == 16 and a.state_batch_size == 64              # "16 on pixels", 64 low-dim
    assert list(a.encoder.channels) == [32] * 3 and list(a.pixel_hidden) == [200, 200]
    assert list(a.state_hidden) == [400, 300]
    assert a.final_init_pixels == 3e-4 and a.final_init_state == 3e-3 and a.init == "paper"
    assert (a.noise.type, a.noise.theta, a.noise.sigma, a.noise.sigma_end) == ("ou", 0.15, 0.2, None)
    assert cfg.replay.max_transitions == 1_000_000
    assert not (a.twin_q or a.augment) and a.nstep == 1 and a.actor_delay == 1 and a.actor_preact_penalty == 0
    assert (obs.image_size, obs.action_repeat, obs.render_substeps) == (64, 3, True)  # 3 renders per step
    assert updates_per_step(cfg) == 1.0


def paper_agent(obs_shape=(9, 16, 16)):
    cfg = compose(["setup=paper"])
    return make_agent(cfg.agent, pixel_spec(obs_shape, num_envs=4), CPU, seed=0)


def test_paper_l2_decays_the_critics_weights_only():
    a = paper_agent()
    decayed, free = a.critic_opt.param_groups
    assert decayed["weight_decay"] == 1e-2 and free["weight_decay"] == 0.0
    critic_ids = {id(p) for m in (a.encoder, a.critic) for p in m.parameters()}
    assert {id(p) for p in decayed["params"]} | {id(p) for p in free["params"]} == critic_ids
    assert all(p.ndim > 1 for p in decayed["params"])                  # conv kernels and weight matrices
    assert all(p.ndim == 1 for p in free["params"])                    # biases, batch-norm scales and shifts
    assert len(decayed["params"]) == 3 + 3  # three convs; the critic's layer before the action joins, one after, the output
    assert all(g["weight_decay"] == 0.0 for g in a.actor_opt.param_groups)


def test_paper_batch_norm_evaluation_uses_running_statistics():
    """What `evaluate` acts with (rollout.agent_policy): running statistics, so no episode's action
    depends on the other envs' frames and evaluating moves no statistic."""
    a = paper_agent()
    b = pixel_batch(pixel_spec(), n=16)
    for _ in range(3):
        a.update(b)  # running statistics away from their initial values
    stats = [t.clone() for m in a._online for t in m.buffers()]
    policy = agent_policy(a, torch.device("cpu"))
    obs = b.obs.numpy()
    first = np.zeros(len(obs), bool)
    together = policy(obs, first)
    alone = np.concatenate([policy(obs[i:i + 1], first[:1]) for i in range(4)])
    np.testing.assert_allclose(together[:4], alone, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(stats, [t for m in a._online for t in m.buffers()]))
    assert not a.encoder.training and not a.actor.training and not a.critic.training


def test_paper_targets_use_running_statistics_copied_at_each_target_update():
    a = paper_agent()
    b = pixel_batch(pixel_spec(), n=16)
    a.update(b)
    assert all(not m.training for m in a._targets)
    assert a._target_stats and all(torch.equal(t, o) for t, o in zip(a._target_stats, a._online_stats, strict=True))
    # the TD target is what the target networks give in eval mode: independent of batch composition
    with torch.no_grad():
        feat = a.target_encoder(b.next_obs)
        whole = a.target_critic(feat, a.target_actor(feat))[0]
        feat4 = a.target_encoder(b.next_obs[:4])
        part = a.target_critic(feat4, a.target_actor(feat4))[0]
    torch.testing.assert_close(whole[:4], part)
