"""The training loop: act → step → store → update → evaluate → log → checkpoint.

The benchmark drives this same class for its end-to-end figure; evaluation reuses
:mod:`pixel_ddpg.rollout`. Nothing here reads a default: every number comes from the config.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from envs import EnvSettings, EnvStep, VecEnv, make_env
from envs.egl import NVIDIA_CAPABILITIES_ENV, software_render_warning, software_rendering
from envs.render_cost import render_cost
from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg import provenance, rundir
from pixel_ddpg.agent import DDPGAgent
from pixel_ddpg.batch import Batch
from pixel_ddpg.device import resolve_compute, usable_cores
from pixel_ddpg.errors import UserError
from pixel_ddpg.learner import LearnerSettings, NoiseSettings
from pixel_ddpg.replay import ReplayBuffer, make_replay
from pixel_ddpg.rollout import EpisodeResults, agent_policy, run_episodes, uses_target
from pixel_ddpg.runlog import RunLog
from pixel_ddpg.staging import HostStaging

EVAL_SEED_OFFSET = 1_000_003  # eval envs never replay the training envs' episodes
# Ctrl-C, kill, and SLURM's warning before a job's time limit (submitit asks for SIGUSR2 120 s
# ahead): each one saves a checkpoint and stops, so the job can continue with resume=.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
SATURATED_ROWS_SHARE = 0.95  # train.csv sat_frac at or above this counts as a collapsed actor
# A critic whose mean Q is this many times the discounted return the policy earns (training episodes
# or last evaluation; above OVERESTIMATE_MIN_Q, so a sparse task's zero-reward start does not count)
# overestimates: cheetah_run's seed 2 read 10.2 when its evaluations fell from 273 to 30 (it recovered
# 40k frames later); of the other 123 committed runs' train.csv and eval.csv, two stay above 3 for two
# log points in a row, both ball_in_cup runs whose policy scored 0 for 20k frames against a Q of 30-42
# (docs/results.md).
OVERESTIMATE_RATIO = 3.0
OVERESTIMATE_MIN_Q = 10.0
GUARDED_METRICS = ("critic_loss", "actor_loss", "q", "target_q")  # update outputs that must stay finite
AGENT_MODULES = ("encoder", "actor", "critic", "target_encoder", "target_actor", "target_critic")


def q_per_return(gamma: float, episode_steps: int) -> float:
    """What one unit of an episode's return is worth as a Q: a policy earning the episode's return
    R at an even rate R / T per agent step has the discounted value R / T * (1 - gamma^T) / (1 - gamma).
    The divergence check compares the critic's mean Q with it."""
    if episode_steps < 1:
        return math.nan
    return (1.0 - gamma ** episode_steps) / (1.0 - gamma) / episode_steps if gamma < 1 else 1.0


class NonFiniteError(UserError):
    """A loss, Q value or weight became NaN or infinite: the run stops before it saves anything."""


def check_counts(cfg: DictConfig) -> None:
    for key in ("total_frames", "eval.every_frames", "eval.episodes", "eval.num_envs", "log.every_frames",
                "checkpoint.every_frames"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"{key}={value} must be a positive whole number")
    for key in ("warmup_frames",):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"{key}={value} must be zero or a positive whole number")
    updates_per_step(cfg)
    uses_target(cfg.eval.get("networks"))


FRAMES_PER_UPDATE_AUTO = "auto"


def auto_frames_per_update(cfg: DictConfig) -> tuple[list[float], float] | None:
    """``agent.frames_per_update=auto``'s choices (sorted) and budget in minutes, checked; None when
    the update rate is set otherwise (a number, null, or a top-level utd_ratio)."""
    if cfg.get("utd_ratio") is not None or cfg.agent.get("frames_per_update") != FRAMES_PER_UPDATE_AUTO:
        return None
    choices = cfg.agent.get("frames_per_update_choices")
    if (not isinstance(choices, (list, tuple, ListConfig)) or not choices
            or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0 for c in choices)):
        raise UserError(f"agent.frames_per_update_choices={choices} must be a list of positive numbers "
                        f"(what agent.frames_per_update=auto picks from)")
    budget = cfg.agent.get("update_budget_minutes")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise UserError(f"agent.update_budget_minutes={budget} must be a positive number "
                        f"(the minutes agent.frames_per_update=auto sizes 100k frames' updates to)")
    return sorted(float(c) for c in choices), float(budget)


def updates_per_step(cfg: DictConfig) -> float:
    """Updates per transition collected: ``utd_ratio`` when set; else one update per
    ``agent.frames_per_update`` env frames, which keeps a learner's compute per frame (and so per
    CPU minute) the same at any task's action repeat; else (both null) one per transition.
    ``frames_per_update=auto`` counts as its cheapest choice until the Trainer's start-up timing
    resolves it (:func:`choose_frames_per_update`), so that planning (compile=auto's threshold)
    never counts on updates a slow machine will not make."""
    utd = cfg.get("utd_ratio")
    if utd is not None:
        if isinstance(utd, bool) or not isinstance(utd, (int, float)) or not utd > 0:
            raise UserError(f"utd_ratio={utd} must be a positive number, or null to use agent.frames_per_update")
        return float(utd)
    per = cfg.agent.get("frames_per_update")  # absent from older checkpoints' configs: one per step
    if per is None:
        return 1.0
    auto = auto_frames_per_update(cfg)
    if auto is not None:
        per = auto[0][-1]
    if isinstance(per, bool) or not isinstance(per, (int, float)) or not per > 0:
        raise UserError(f"agent.frames_per_update={per} must be a positive number, auto, or null (or set utd_ratio)")
    return int(cfg.obs.action_repeat) / float(per)


def choose_frames_per_update(choices: list[float], seconds_per_update: float, budget_minutes: float,
                             frames: int = 100_000) -> tuple[float, str]:
    """``frames_per_update=auto``: the most compute per frame whose updates for ``frames`` env frames
    take at most ``budget_minutes`` at the update speed timed on this machine, else the cheapest
    choice. One core buys 4.5 (AVX2, fp32) to 17 (AMX, bf16) updates a second at the default's
    shapes, and one update per 4 frames learned cheetah_run better than one per 8 over 3 seeds
    (cartpole_swingup: a tie; docs/results.md, "One update per 4 frames where it fits"): a learner
    sized to the hour on one machine misses it by 2x on the other. Returns the choice and the start-up line's reason."""
    rate = 1.0 / seconds_per_update
    for per in sorted(choices):
        minutes = frames / per * seconds_per_update / 60
        if minutes <= budget_minutes:
            break
    return per, (f"agent.frames_per_update=auto: {rate:.1f} updates/s timed here, so {frames // 1000}k frames' "
                 f"updates take {minutes:.0f} min at one per {per:g} frames "
                 + (f"(budget {budget_minutes:g})" if minutes <= budget_minutes
                    else f"(over the budget of {budget_minutes:g} at every choice of {[f'{c:g}' for c in choices]})"))


def describe_noise(noise: NoiseSettings) -> str:
    """The exploration in a few words: its size is chosen per task (the env group), so the line says it."""
    if noise.type == "ou":
        end = "" if noise.sigma_end is None else f"->{noise.sigma_end:g}"
        return f"ou noise sigma {noise.sigma:g}{end}"
    if noise.type == "gaussian":
        return f"gaussian noise std {noise.std_start:g}->{noise.std_end:g}"
    return f"{noise.type} noise"


def describe_guard(learner: LearnerSettings) -> str:
    """The saturation guard, where there is one: like the noise, its size may be chosen per task."""
    if learner.actor_preact_penalty <= 0:
        return ""
    where = f" beyond |u| {learner.actor_preact_knee:g}" if learner.actor_preact_knee > 0 else ""
    return f", pre-tanh penalty {learner.actor_preact_penalty:g}{where}"


def describe_actor_loss(learner: LearnerSettings) -> str:
    """The actor's objective where it is not DDPG's Q1(s, mu(s)): DrQ-v2's noisy sample and min of
    the twins change what the deterministic policy settles on, so a curve needs the line to say it."""
    parts = []
    if learner.actor_noise:
        parts.append(f"at a noisy sample (the exploration scale, clip {learner.target_noise_clip:g})")
    if learner.actor_q == "min":
        parts.append("on min(Q1, Q2)")
    return ", actor " + " ".join(parts) if parts else ""


def episode_stats(returns: list[float]) -> dict[str, float]:
    """The training episodes that ended in one log interval: their mean and best return, and the
    share with a positive return, measured as the exploration table's (``reference``). On a sparse
    task the share counts how often the replay gets a rewarded episode (a catch on ball_in_cup),
    which the mean mixes up with how much reward each got. NaN where none ended."""
    r = EpisodeResults(returns=list(returns))
    return {"episode_return": r.mean, "episode_return_max": r.max, "rewarded": r.rewarded_share}


def describe_critic_net(learner: LearnerSettings) -> str:
    """The heads where they are not the plain MLP: a LayerNorm critic (``critic_norm: layer``), or the
    pixel heads' trunk on a state vector (``state_trunk``), learns another curve from the same loss,
    so the line names it."""
    trunk = "" if learner.pixels or learner.encoder.feature_dim is None else \
        f", LayerNorm trunk on the state ({learner.encoder.feature_dim} wide)"
    return trunk + (", LayerNorm critic" if learner.critic_norm == "layer" else "")


def describe_critic_loss(learner: LearnerSettings, spec: Any) -> str:
    """The critic's loss where it is not DDPG's MSE: a Huber critic weighs large TD errors less; a
    categorical one's loss is a cross-entropy, so its critic_loss column is not a squared error."""
    if learner.critic_loss == "huber":
        return f", Huber critic loss (delta {learner.huber_delta:g})"
    if learner.hlgauss is not None:
        h = learner.hlgauss
        lo, hi = h.resolved_range(spec.action_repeat, learner.sampling.gamma)
        return f", categorical critic (HL-Gauss cross-entropy, {h.bins} bins over [{lo:g}, {hi:g}], sigma {h.sigma:g} bins)"
    return ""


def describe_setup(cfg: DictConfig, spec: Any, learner: LearnerSettings, per_step: float) -> str:
    """The start-up line that says which learner learns from which observation: the defaults
    changed from the paper's (setup=paper), and a curve means little without both."""
    a, sampling = cfg.agent, learner.sampling
    obs = (f"{'x'.join(str(int(d)) for d in spec.obs_shape)} uint8, "
           + ("the renders of every sub-step" if cfg.obs.render_substeps else f"last {spec.frame_stack} agent steps' renders")
           if spec.pixels else f"state ({spec.obs_shape[0]} floats)")
    return (f"learner: agent={a.name} (batch {sampling.batch_size}, {per_step:g} updates per agent step = one per "
            f"{spec.action_repeat / per_step:g} frames, {'twin Q' if learner.twin_q else 'one Q'}, {sampling.nstep}-step "
            f"returns, {describe_noise(learner.noise)}{describe_guard(learner)}{describe_actor_loss(learner)}{describe_critic_net(learner)}{describe_critic_loss(learner, spec)}); observation: {obs}, action repeat {spec.action_repeat}")


def planned_updates(cfg: DictConfig, frame: int = 0) -> int:
    """Updates the rest of the run will make: frames past the warm-up / repeat x updates per step."""
    frames = max(0, int(cfg.total_frames) - max(int(cfg.warmup_frames), frame))
    return int(frames / int(cfg.obs.action_repeat) * updates_per_step(cfg))


def update_plan(cfg: DictConfig, frame: int = 0) -> tuple[int, bool]:
    """What ``compile=auto`` is decided on, for the trainer and the benchmark alike: the planned
    updates and whether that count is a floor (``frames_per_update=auto`` counts its cheapest choice
    until the start-up timing, which may raise it)."""
    return planned_updates(cfg, frame), auto_frames_per_update(cfg) is not None


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNGs' states as plain data (tensors, ints, lists): a checkpoint loads with weights_only.

    CUDA's RNG is saved only for the run's own GPU, by index (``{"cuda": {index: state}}``):
    ``get_rng_state_all`` would initialise CUDA on every visible GPU, from a CPU run too.
    """
    state = {"torch": torch.get_rng_state(), "numpy": ckpt_io.numpy_rng_to_data(np.random.get_state()),
             "python": random.getstate()}
    if device is not None and device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        state["cuda"] = {int(index): torch.cuda.get_rng_state(index)}
    return state


def cuda_rng_entries(saved: Any) -> dict[int, torch.Tensor]:
    """A checkpoint's CUDA RNG states by GPU index: ``{index: state}``, or the list that
    ``get_rng_state_all`` gave in checkpoints written before the per-device form."""
    if saved is None:
        return {}
    if isinstance(saved, dict):
        return {int(k): v for k, v in saved.items()}
    return dict(enumerate(saved))


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> list[int]:
    """Restore the global RNGs; a CUDA state only on a CUDA run, and only the run's own GPU's.

    Another GPU count than the saving machine's is no error: a state for a GPU this run does not
    use is skipped (restoring it would initialise that GPU), and a CPU run touches no GPU.
    Returns the GPU indexes restored.
    """
    torch.set_rng_state(state["torch"])
    np.random.set_state(ckpt_io.numpy_rng_from_data(state["numpy"]))
    random.setstate(state["python"])
    if device is None or device.type != "cuda":
        return []
    index = torch.cuda.current_device() if device.index is None else device.index
    saved = cuda_rng_entries(state.get("cuda"))
    if index not in saved or index >= torch.cuda.device_count():
        return []
    torch.cuda.set_rng_state(torch.as_tensor(saved[index]).cpu(), index)
    return [index]


@dataclasses.dataclass
class Counters:
    frame: int = 0  # env frames: agent steps x action repeat, summed over envs
    step: int = 0  # vector steps (each one agent step of every env)
    episodes: int = 0
    updates: int = 0
    update_credit: float = 0.0  # fractional updates owed by the update-to-data ratio
    best_return: float = -math.inf
    wall_s: float = 0.0
    next_eval: int = 0
    next_log: int = 0
    next_checkpoint: int = 0
    # The frame of the last evaluation that wrote its row: the final one is due only when it is
    # behind, so resuming a finished run evaluates (and writes) nothing. -1: none yet, or a
    # checkpoint from before this counter.
    last_eval_frame: int = -1
    # That evaluation's mean return, for the divergence check after a resume. None: none yet, or a
    # checkpoint from before this counter (then the run's best stands in for it).
    last_eval_return: float | None = None


def last_evaluation(c: Counters) -> float | None:
    """The mean return of the run's last evaluation, what the divergence check compares Q with; a
    checkpoint written before ``last_eval_return`` existed has only the best, which stands in."""
    if c.last_eval_return is not None:
        return c.last_eval_return
    return None if c.best_return == -math.inf else c.best_return


def _after(frame: int, scheduled: int, every: int) -> int:
    """The first point of a ``scheduled + k * every`` schedule past ``frame``: what a checkpoint
    saved at ``frame`` must hold so that a resume neither repeats nor skips one."""
    if scheduled > frame:
        return scheduled
    return scheduled + ((frame - scheduled) // every + 1) * every


class Trainer:
    """One training run in ``run_dir``; ``resume`` continues a checkpoint of the same run."""

    def __init__(self, cfg: DictConfig, run_dir: Path, resume: dict[str, Any] | None = None) -> None:
        check_counts(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.counters = Counters() if resume is None else Counters(**resume["counters"])
        # EnvPool's episodes cannot be saved; a resumed run starts fresh episodes on a new seed.
        env_seed = (cfg.seed + self.counters.frame) % 2**31
        self.settings = EnvSettings.from_config(cfg, seed=env_seed)
        cfg.render = self.settings.render  # render=auto: config.yaml and checkpoints record the profile chosen
        planned, floor = update_plan(cfg, self.counters.frame)
        self.precision, self.env_threads, self.torch_threads = resolve_compute(
            cfg, self.settings, planned, planned_is_floor=floor)
        self.device = self.precision.device
        self._staging = HostStaging(self.device) if self.device.type == "cuda" else None  # acting's uploads
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.env: VecEnv = make_env(self.settings)
        self.spec = self.env.spec
        self.frames_per_step = self.spec.num_envs * self.settings.action_repeat
        self.env_sig = ckpt_io.env_signature(self.settings, self.spec)
        self.learner = LearnerSettings.from_config(cfg.agent, self.spec.pixels)
        saved = None if resume is None or resume.get("replay") is None else resume["replay"]
        self.replay: ReplayBuffer = make_replay(cfg, self.spec, self.device, self.learner.sampling, seed=cfg.seed,
                                                capacity=None if saved is None else int(saved["slots"]) * self.spec.num_envs)
        self.agent = DDPGAgent(self.learner, self.spec, self.precision, cfg.seed)
        seconds_per_update = None
        if self.precision.timed:  # compile=auto on a CPU: keep whichever update is faster on this machine
            compiled_s, eager_s = self.agent.time_compiled_and_eager()
            self.precision = self.precision.after_timing(compiled_s, eager_s)
            if not self.precision.compile:
                self.agent.use_eager()
            seconds_per_update = min(compiled_s, eager_s)
        self.compute_why = ""
        auto = auto_frames_per_update(cfg)
        if auto is not None:
            # Sized to this machine; config.yaml and checkpoints record the choice, so a resume keeps it.
            choices, budget = auto
            per, self.compute_why = choose_frames_per_update(
                choices, self.agent.time_update() if seconds_per_update is None else seconds_per_update, budget)
            cfg.agent.frames_per_update = int(per) if per.is_integer() else per
        self.batch_size = self.learner.sampling.batch_size
        self.learning_starts = max(self.batch_size, int(cfg.warmup_frames) // self.settings.action_repeat)
        self.updates_per_step = updates_per_step(cfg)
        self.eval_env: VecEnv | None = None
        self._collector: ThreadPoolExecutor | None = None
        # On CUDA the collector's copies and gathers run on a stream of their own, so they overlap
        # the learner's kernels instead of queueing behind them on the default stream.
        self._collect_stream: torch.cuda.Stream | None = None
        self._learner_stream: torch.cuda.Stream | None = None
        if resume is not None:
            self._restore(resume)
        else:
            c = self.counters
            c.next_eval, c.next_log, c.next_checkpoint = 0, int(cfg.log.every_frames), int(cfg.checkpoint.every_frames)
        self.log = RunLog(self.run_dir, total_frames=int(cfg.total_frames),
                          resume_frame=self.counters.frame if resume is not None else None,
                          tensorboard=bool(cfg.log.tensorboard), progress=cfg.log.progress,
                          progress_every_s=float(cfg.log.get("progress_every_s", 10)))
        self._stop_signal: int | None = None
        # The non-finite guard: per-update flags folded on the device, read at check_finite().
        self._nonfinite: torch.Tensor | None = None
        self._finite_frame = self.counters.frame
        self._credit_before_draw = self.counters.update_credit
        self._last_saved: tuple[Path, int] | None = None if resume is None else (Path(resume["path"]), self.counters.frame)
        self._collapse_rows: dict[str, int] = {}
        self._collapse_warned: set[str] = set()
        self._q_per_return = q_per_return(self.learner.sampling.gamma, self.spec.episode_agent_steps)
        self.log.progress.write(describe_setup(cfg, self.spec, self.learner, self.updates_per_step))
        if self.compute_why:
            self.log.progress.write(f"compute per frame: {self.compute_why}")
        envs_line = (f"EnvPool {self.env_threads} of {usable_cores()} usable cores" if self.settings.backend == "envpool"
                     else f"a Gymnasium {self.settings.vectorization} vector env; {usable_cores()} usable cores")
        self.log.progress.write(f"learner on {self.precision.describe()}; threads: torch {self.torch_threads}, {envs_line}")
        if int(cfg.total_frames) < int(cfg.warmup_frames):
            self.log.progress.write(f"warning: total_frames={int(cfg.total_frames):,} ends inside the warm-up "
                                    f"(warmup_frames={int(cfg.warmup_frames):,}): this run collects and evaluates "
                                    "but makes no updates")
        if self.env.notice:
            self.log.progress.write(self.env.notice)
        render_warning = (self.settings.pixels and self.settings.backend == "envpool" and software_render_warning(
            torch.cuda.is_available(), software_rendering(), os.environ.get(NVIDIA_CAPABILITIES_ENV)))
        if render_warning:
            self.log.progress.write(render_warning)
        if (self.settings.pixels and self.settings.render == "standard" and self.settings.backend == "envpool"
                and software_rendering()):
            cost = render_cost(self.settings)
            renders = int(cfg.eval.episodes) * self.settings.max_episode_steps  # one render per EnvPool step
            self.log.progress.write(
                f"render=standard on a software rasterizer: {cost['standard_ms']:.0f} ms a frame measured now; "
                f"render=fast: {cost['fast_ms']:.1f} ms ({cost['standard_ms'] / cost['fast_ms']:.0f}x faster; "
                f"evaluate with the profile you train on). Each evaluation renders {renders:,} frames: "
                f"~{renders * cost['standard_ms'] / 1000:.0f} s here, ~{renders * cost['fast_ms'] / 1000:.0f} s with render=fast")

    # ------------------------------------------------------------------ checkpoints
    def _restore(self, ckpt: dict[str, Any]) -> None:
        ckpt_io.restore_agent(self.agent, ckpt, self.env_sig)
        if ckpt.get("replay") is not None:
            self.replay.load_state_dict(ckpt["replay"])
            self._owe_the_reset_step()
        set_rng_state(ckpt["rng"], self.device)
        self.rng.bit_generator.state = ckpt["np_generator"]

    def _owe_the_reset_step(self) -> None:
        """A resumed run stores its fresh episodes' first step (:meth:`start`): its restored replay
        then holds one step more than the run that never stopped. Saved before the replay was
        ready to learn from (the frame-0 evaluation's checkpoint), it would start learning one
        agent step earlier, and so owe one step's updates more; give that step's credit back.
        Whether the replay is ready is asked of :meth:`_updates_due` itself, then undone."""
        c = self.counters
        credit = c.update_credit
        ready = self._updates_due() > 0 or c.update_credit != credit
        c.update_credit = credit
        if not ready:
            c.update_credit -= self.updates_per_step * self.spec.num_envs

    def checkpoint_state(self) -> dict[str, Any]:
        """The run as plain data. Its update credit is the one from before the batches the next
        iteration will learn from were drawn: a resume draws them again, so a resumed run makes
        the same number of updates as one that never stopped."""
        save_replay = bool(self.cfg.replay.save_in_checkpoint)
        return {
            "format": ckpt_io.FORMAT,
            "version": ckpt_io.VERSION,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "env_signature": self.env_sig,
            "agent_signature": self.agent.config_signature(),
            "agent": self.agent.state_dict(),
            "replay": self.replay.state_dict() if save_replay else None,
            "counters": {**dataclasses.asdict(self.counters), "update_credit": self._credit_before_draw},
            "rng": rng_state(self.device),
            "np_generator": self.rng.bit_generator.state,
            "provenance": provenance.current(),
        }

    def save(self, best: bool = False) -> Path:
        """Write ``last.pt`` (and ``best.pt``) atomically, after :meth:`check_finite`: a checkpoint
        never holds a learner that has diverged."""
        self.check_finite()
        path = self.run_dir / rundir.CKPT_DIR / rundir.LAST
        state = self.checkpoint_state()
        ckpt_io.save_atomic(state, path)
        self._last_saved = (path, self.counters.frame)
        if best:
            ckpt_io.save_atomic(state, path.with_name(rundir.BEST))
        return path

    def last_good(self) -> str:
        """Where a resume would continue from, in words, for the line a fault stops the run with."""
        if self._last_saved is None:
            return f"no checkpoint was written yet: resume={self.run_dir} starts the run again"
        path, frame = self._last_saved
        return f"last good checkpoint {path} (frame {frame:,}): resume={self.run_dir} continues from it"

    # ------------------------------------------------------------------ the non-finite guard
    def _fold_finite(self, metrics: dict[str, torch.Tensor]) -> None:
        """Fold one update's losses and Q values into the non-finite flags, on the device: no sync."""
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in GUARDED_METRICS])
        if self.agent.updates < self.agent.actor_delay:  # actor_loss is NaN until the first actor step
            values[GUARDED_METRICS.index("actor_loss")] = 0.0
        bad = ~torch.isfinite(values)
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad

    def check_finite(self) -> None:
        """Stop the run (:class:`NonFiniteError`, one line) when a loss or Q value of an update
        since the last check, or a weight or float buffer of the networks, is NaN or infinite. It
        runs on the logging cadence and before every evaluation and checkpoint, so a diverged
        learner overwrites no checkpoint: one device sync per check, none per update."""
        weights = [(f"{m}.{n}", t) for m in AGENT_MODULES
                   for n, t in (*getattr(self.agent, m).named_parameters(), *getattr(self.agent, m).named_buffers())
                   if t.is_floating_point()]
        flags = (torch.zeros(len(GUARDED_METRICS), dtype=torch.bool, device=self.device)
                 if self._nonfinite is None else self._nonfinite)
        bad = torch.cat([flags, ~torch.stack([torch.isfinite(t).all() for _, t in weights])]).tolist()
        frame = self.counters.frame
        if any(bad):
            i = bad.index(True)
            if i < len(GUARDED_METRICS):
                name = GUARDED_METRICS[i]
                last = None if self._metrics is None else self._metrics.get(name)
                what = name if last is None else f"{name} ({float(last.float().mean()):g} at the last update)"
            else:
                what = f"weight {weights[i - len(GUARDED_METRICS)][0]}"
            raise NonFiniteError(f"non-finite {what} at frame {frame:,} (all finite at frame {self._finite_frame:,}); "
                                 f"the run stopped and saved nothing; {self.last_good()}")
        self._nonfinite = None
        self._finite_frame = frame

    # ------------------------------------------------------------------ the loop
    def _upload(self, name: str, array: np.ndarray) -> torch.Tensor:
        """A host array on the device: through a pinned buffer with a non-blocking copy on CUDA."""
        if self._staging is None:
            return torch.as_tensor(array, device=self.device)
        return self._staging.upload(name, array)

    def _actions(self, step: EnvStep) -> tuple[np.ndarray, torch.Tensor | None]:
        """The actions for the envs (host) and, once the agent acts, the same actions on the
        device, which the replay stores as they are instead of uploading the host copy again."""
        if self.counters.frame < int(self.cfg.warmup_frames):
            return self.spec.random_actions(self.rng), None
        obs = self._upload("obs", step.obs)
        first = self._upload("first", step.first)
        with torch.no_grad():
            on_device = self.agent.act(obs, explore=True, first=first, frame=self.counters.frame)
        action = on_device.float().cpu().numpy()
        if not np.isfinite(action).all():  # on the host already: no extra sync
            self.check_finite()  # names the loss or weight that made it so
            raise NonFiniteError(f"non-finite action at frame {self.counters.frame:,} from finite weights (a non-finite "
                                 f"observation?); the run stopped and saved nothing; {self.last_good()}")
        return action, on_device

    def _updates_due(self) -> int:
        # Steps held, not transitions: the reset step alone is none, so also wait for n more.
        if len(self.replay) < self.learning_starts or self.replay.num_added <= self.replay.nstep:
            return 0
        c = self.counters
        c.update_credit += self.updates_per_step * self.spec.num_envs
        n = int(c.update_credit)
        c.update_credit -= n
        return n

    def _draw_batches(self) -> list[Batch]:
        """The batches the next iteration's updates will learn from, sampled now (a checkpoint
        keeps the update credit from before this draw: see :meth:`checkpoint_state`)."""
        self._credit_before_draw = self.counters.update_credit
        return self.replay.sample_many(self.batch_size, self._updates_due())

    def _collect(self, action: np.ndarray, on_device: torch.Tensor | None = None) -> tuple[EnvStep, list[Batch]]:
        """Everything but learning: step the envs, store the step, sample the next batches.

        With ``async_env`` this runs on the collector thread while the learner updates, so on a
        CPU the learner's core does only the updates (and acting). The replay is touched only
        here and while the collector is idle, and in the same order as without the thread, so
        both modes sample the same batches.
        """
        step = self.env.step(action)
        self.replay.add(step, action if on_device is None else on_device)
        return step, self._draw_batches()

    def _collect_on_stream(self, action: np.ndarray, on_device: torch.Tensor | None,
                           acted: torch.cuda.Event) -> tuple[EnvStep, list[Batch], torch.cuda.Event]:
        """:meth:`_collect` on the collector's CUDA stream; returns an event the learner's stream waits
        on before it reads the batches (a device-side wait: the host does not block).

        ``acted`` marks the learner's stream after acting, so the stored actions are complete
        without the collector waiting for the updates queued after them. Tensors made on one
        stream and read on the other are recorded on it, so that the caching allocator does not
        hand their memory out again while the other stream may still read it.
        """
        stream, learner = self._collect_stream, self._learner_stream
        assert stream is not None and learner is not None
        stream.wait_event(acted)
        with torch.cuda.stream(stream):
            if on_device is not None:
                on_device.record_stream(stream)
            step, batches = self._collect(action, on_device)
            for batch in batches:
                for t in batch:
                    t.record_stream(learner)
            done = torch.cuda.Event()
            done.record(stream)
        return step, batches, done

    def _update(self, batches: list[Batch]) -> dict[str, torch.Tensor] | None:
        metrics = None
        for batch in batches:
            metrics = self.agent.update(batch, frame=self.counters.frame)
            self._fold_finite(metrics)
        self.counters.updates += len(batches)
        return metrics

    def evaluate(self) -> float | None:
        """Mean return over ``eval.episodes``; None when a stop signal cut it short (no row written)."""
        cfg, c = self.cfg, self.counters
        episodes, num_envs = int(cfg.eval.episodes), int(cfg.eval.num_envs)
        if self.eval_env is None:
            eval_settings = dataclasses.replace(self.settings, num_envs=num_envs,
                                                seed=(self.cfg.seed + EVAL_SEED_OFFSET) % 2**31)
            self.eval_env = make_env(eval_settings)
        self.log.progress.write(f"eval @ {c.frame:,} frames: {episodes} episode{'s' * (episodes != 1)} of "
                                f"{self.settings.max_episode_steps:,} env steps on {num_envs} envs...")
        done = 0

        def on_step(step: EnvStep, returns: np.ndarray) -> None:
            nonlocal done
            done += int(step.last.sum())
            self.log.progress.note(f"eval @ {c.frame:,} frames: {min(done, episodes)}/{episodes} episodes done")

        policy = agent_policy(self.agent, self.device, target=uses_target(cfg.eval.get("networks")))
        res = run_episodes(self.eval_env, policy, episodes, on_step=on_step,
                           should_stop=lambda: self._stop_signal is not None)
        if res.stopped:
            return None
        row = {"frame": c.frame, "step": c.step, "return_mean": res.mean, "return_std": res.std,
               "episodes": len(res.returns), "length_mean": float(np.mean(res.lengths)), "wall_s": c.wall_s}
        self.log.eval.write(row)
        self.log.scalars("eval", row, c.frame)
        self.log.progress.write(f"eval @ {c.frame:,} frames: return {res.mean:.1f} ± {res.std:.1f} "
                                f"over {len(res.returns)} episodes")
        return res.mean

    @property
    def _last_eval(self) -> float | None:
        """Read from the counters, which checkpoints keep, so that a resumed run sees it too."""
        return last_evaluation(self.counters)

    def _handle_signal(self, signum: int, frame: object) -> None:
        self._stop_signal = signum

    def start(self) -> None:
        """Reset the envs and store their first observations; the loop begins here."""
        self._step = self.env.reset()
        self.replay.add(self._step, None)
        self._batches = self._draw_batches()
        self._ep_return = np.zeros(self.spec.num_envs, np.float64)
        self._finished: list[float] = []
        self._metrics: dict[str, torch.Tensor] | None = None
        if bool(self.cfg.async_env) and self._collector is None:
            self._collector = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector")
            if self.device.type == "cuda":
                self._learner_stream = torch.cuda.current_stream(self.device)
                self._collect_stream = torch.cuda.Stream(self.device)

    def iteration(self) -> None:
        """One agent step of every env, with the updates it is owed: act → step → store → update.

        The updates learn from batches sampled after the previous step was stored (as a loop
        that samples inside each update would), while the collector steps, stores and samples.
        """
        c = self.counters
        action, on_device = self._actions(self._step)
        if self._collect_stream is not None:
            acted = torch.cuda.Event()
            acted.record(self._learner_stream)
            pending = self._collector.submit(self._collect_on_stream, action, on_device, acted)
            self._metrics = self._update(self._batches) or self._metrics
            step, self._batches, collected = pending.result()
            self._learner_stream.wait_event(collected)
        elif self._collector is not None:
            pending = self._collector.submit(self._collect, action, on_device)
            self._metrics = self._update(self._batches) or self._metrics
            step, self._batches = pending.result()
        else:
            self._metrics = self._update(self._batches) or self._metrics
            step, self._batches = self._collect(action, on_device)
        live = ~step.first
        self._ep_return[live] += step.reward[live]
        self._finished.extend(float(r) for r in self._ep_return[step.last])
        self._ep_return[step.last] = 0.0
        c.episodes += int(step.last.sum())
        c.step += 1
        c.frame += self.frames_per_step
        self._step = step

    def _maybe_evaluate(self) -> bool:
        """Evaluate (keeping the best checkpoint) and schedule the next one; False when a stop
        signal interrupted it, which leaves it scheduled so that a resume redoes it."""
        c = self.counters
        self.check_finite()  # a diverged learner's evaluation would write a row of NaN
        score = self.evaluate()
        if score is None:
            return False
        c.next_eval = _after(c.frame, c.next_eval, int(self.cfg.eval.every_frames))
        c.last_eval_frame = c.frame
        c.last_eval_return = score
        if score > c.best_return:
            c.best_return = score
            if self.cfg.checkpoint.keep_best:
                self.save(best=True)
        return True

    def train(self) -> dict[str, Any]:
        """Run until ``total_frames``; on SIGINT/SIGTERM/SIGUSR2 save a checkpoint and stop cleanly.

        A signal is honoured between agent steps and between evaluation steps, so within a
        few seconds even on a software rasterizer; the checkpoint holds the counters of the last
        finished step, and an interrupted evaluation is redone on resume. A non-finite learner
        (:class:`NonFiniteError`) or a failed write (:class:`~pixel_ddpg.rundir.WriteError`)
        stops it with one line naming the last good checkpoint, which it leaves as it was.
        """
        cfg, c = self.cfg, self.counters
        total = int(cfg.total_frames)
        previous = {s: signal.signal(s, self._handle_signal) for s in STOP_SIGNALS}
        window_start, window_frame = time.perf_counter(), c.frame
        started = time.perf_counter() - c.wall_s
        try:
            self.start()
            while c.frame < total and self._stop_signal is None:
                # Evaluate, then checkpoint: a checkpoint never holds an evaluation that already
                # wrote its row, so a run resumed from it (after a crash) does not repeat that row.
                if c.frame >= c.next_eval:
                    with self.log.progress.paused():
                        evaluated = self._maybe_evaluate()
                    if not evaluated:
                        break
                    window_start, window_frame = time.perf_counter(), c.frame  # fps excludes evaluation
                if c.frame >= c.next_checkpoint:
                    c.next_checkpoint = _after(c.frame, c.next_checkpoint, int(cfg.checkpoint.every_frames))
                    self.save()
                self.iteration()
                c.wall_s = time.perf_counter() - started
                if c.frame >= c.next_log:
                    now = time.perf_counter()
                    self._log_train((c.frame - window_frame) / max(now - window_start, 1e-9))
                    window_start, window_frame = now, c.frame
                    c.next_log += int(cfg.log.every_frames)
                self.log.progress.update(c.frame, last_eval=None if self._last_eval is None else f"{self._last_eval:.1f}")
            if self._stop_signal is None and c.last_eval_frame < c.frame:  # the final evaluation, once
                self._maybe_evaluate()
            interrupted = self._stop_signal is not None
            path = self.save()
            if interrupted:
                name = signal.Signals(self._stop_signal).name
                self.log.progress.write(f"{name}: stopped at {c.frame:,} frames; checkpoint {path}; "
                                        f"continue with resume={self.run_dir}")
            return {"frame": c.frame, "interrupted": interrupted, "checkpoint": path, "signal": self._stop_signal}
        except rundir.WriteError as exc:
            raise rundir.WriteError(f"{exc}; {self.last_good()}", exc.reason) from None
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.close()

    def _log_train(self, fps: float) -> None:
        c, metrics, finished = self.counters, self._metrics, self._finished
        row: dict[str, Any] = {"frame": c.frame, "step": c.step, "episodes": c.episodes, "updates": c.updates,
                               "fps": fps, "wall_s": c.wall_s, **episode_stats(finished)}
        self.check_finite()  # before the row: train.csv keeps the rows up to a fault, not the fault's
        if metrics is not None:  # the only place (with check_finite) a device value is read back
            row.update({k: float(v.float().mean().item()) for k, v in metrics.items()})
            if self.agent.pixels and self._batches:
                dead = self.agent.encoder.dead_channels(self._batches[-1].obs)
                row["dead_ch"] = float(dead.mean().item())
                row.update({f"dead_ch_conv{i + 1}": float(v) for i, v in enumerate(dead.tolist())})  # TensorBoard
            self._warn_on_collapse(row)
        self.log.train.write(row)
        self.log.scalars("train", row, c.frame)
        self._finished = []

    def _warn_on_collapse(self, row: dict[str, Any]) -> None:
        """Say once when the learner sits in a state that stops it learning (docs/results.md): every
        action on its bound (a saturated tanh under Adam) or an encoder whose features are all zero
        (dead ReLUs get no gradient), which it does not leave by itself, or a critic whose Q runs away
        from what the policy earns, which cheetah_run seed 2 left after 40k frames. Two log points in
        a row count. A resume keeps the last evaluation (a checkpoint older than that counter: its best)."""
        checks = {
            "saturated": (row.get("sat_frac", math.nan) >= SATURATED_ROWS_SHARE,
                          f"{row.get('sat_frac', math.nan):.0%} of the actor's actions are at their bounds (tanh "
                          "saturated); it rarely recovers on its own: agent.actor_preact_penalty=0.01 keeps it out of "
                          "saturation (agent=ddpg_ln_shift_nstep uses it)"),
            "dead encoder": (row.get("feat_norm", math.nan) == 0.0,
                             "the encoder's features are all zero (every ReLU of its last layer is dead), so the "
                             "agent no longer sees; a LayerNorm trunk in each head (agent.encoder.trunk=true, in "
                             "agent=ddpg_ln_shift_nstep) kept them alive where they died without it"),
        }
        # What the policy earns: its training episodes (noisy) or its last evaluation, the larger.
        q, returns = row.get("q", math.nan), [row.get("episode_return", math.nan), self._last_eval]
        earned = max((r for r in returns if r is not None and not math.isnan(r)), default=math.nan) * self._q_per_return
        checks["diverging critic"] = (
            q > OVERESTIMATE_MIN_Q and q > OVERESTIMATE_RATIO * earned,
            f"the critic's mean Q ({q:.0f}) is more than {OVERESTIMATE_RATIO:g}x the discounted return the policy "
            f"earns ({earned:.0f}, from its training episodes or last evaluation; critic loss "
            f"{row.get('critic_loss', math.nan):.3g}): the critic overestimates (cheetah_run seed 2's returns fell "
            "from 273 to 30 with it and came back within 40k frames; docs/results.md)")
        for name, (bad, message) in checks.items():
            self._collapse_rows[name] = self._collapse_rows.get(name, 0) + 1 if bad else 0
            if self._collapse_rows[name] == 2 and name not in self._collapse_warned:
                self._collapse_warned.add(name)
                self.log.progress.write(f"warning: at {self.counters.frame:,} frames {message}")

    def close(self) -> None:
        if self._collector is not None:
            self._collector.shutdown(wait=True)
            self._collector = None
            self._collect_stream = self._learner_stream = None
        self.env.close()
        if self.eval_env is not None:
            self.eval_env.close()
            self.eval_env = None
        self.log.close()
