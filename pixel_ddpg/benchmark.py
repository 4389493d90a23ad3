"""`python -m pixel_ddpg.benchmark out=results.json`: how fast, on this machine, against naive.

Every stage uses the project's own pieces (envs, replay, agent, the trainer's loop) and is
timed as the median of ``repeats`` runs after untimed warm-up calls. The naive baseline
(:mod:`pixel_ddpg.baseline`) runs in the same process, on the same task and image size.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from envs import EnvSettings, EnvStep, make_env
from pixel_ddpg.baseline import NaiveLoop, NaiveReplay
from pixel_ddpg.config import cli, ensure_writable_dir
from pixel_ddpg.device import (Precision, cpu_compiler, cpu_flags, resolve_compute, resolve_device, resolve_precision,
                               usable_cores)
from pixel_ddpg.errors import UserError
from pixel_ddpg.replay import ReplayBuffer, Sampling
from pixel_ddpg.replay_memory import bytes_per_transition
from pixel_ddpg.rundir import write_bytes_atomic

VARIANTS = {"eager_fp32": (None, False), "eager_bf16": (torch.bfloat16, False), "compiled_fp32": (None, True),
            "compiled_bf16": (torch.bfloat16, True)}
CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}  # autocast dtype -> peak key


def variant_of(precision: Precision) -> str:
    """The update variant name a precision runs (for an fp16 autocast: none)."""
    return {v: k for k, v in VARIANTS.items()}.get((precision.amp_dtype, precision.compile), "other")
STAGES = ("env_state", "env_pixels", "replay", "peak", "update", "act", "end_to_end", "baseline", "env_gym")


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of ``fn`` as torch's own counter sees them, so no hand count can drift from the code.

    :class:`~torch.utils.flop_counter.FlopCounterMode` counts matmuls and convolutions, forward and
    backward (a conv's input gradient only where one is computed); elementwise ops, the shift and
    the optimizer count 0. That is the work a matmul or conv peak can be compared with. Eager only:
    compiled code hides its ops from the counter.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclasses.dataclass
class Timer:
    repeats: int
    warmup: int
    device: torch.device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def rate(self, fn: Callable[[], object], items: float, unit: str) -> dict[str, Any]:
        """Median items/s of ``fn`` over the repeats, after ``warmup`` untimed calls."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        rates = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            fn()
            self.sync()
            rates.append(items / (time.perf_counter() - t0))
        return {"median": statistics.median(rates), "runs": rates, "unit": unit}

    def side_by_side(self, runs: dict[str, tuple[Callable[[], object], float, str]]) -> dict[str, dict[str, Any]]:
        """Like :meth:`rate` for several functions, their repeats interleaved (a, b, a, b...), so
        a machine shared with other work slows them alike and their ratio holds."""
        for fn, _, _ in runs.values():
            for _ in range(self.warmup):
                fn()
        self.sync()
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(self.repeats):
            for name, (fn, items, _) in runs.items():
                t0 = time.perf_counter()
                fn()
                self.sync()
                rates[name].append(items / (time.perf_counter() - t0))
        return {name: {"median": statistics.median(rates[name]), "runs": rates[name], "unit": unit}
                for name, (_, _, unit) in runs.items()}


def machine_info() -> dict[str, Any]:
    """The machine a figure was taken on. The `mujoco` package's version is read from its metadata, not by
    importing it: EnvPool carries its own MuJoCo, and a machine without the package still benchmarks."""
    from importlib.metadata import PackageNotFoundError, version

    import envpool

    try:
        mujoco_version: str | None = version("mujoco")
    except PackageNotFoundError:
        mujoco_version = None

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    flags = cpu_flags()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable_cores(),
            "cpu_flags": [f for f in CPU_FLAGS_SHOWN if f in flags], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "envpool": envpool.__version__,
            "mujoco": mujoco_version}


def _env_rate(settings: EnvSettings, timer: Timer, steps: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    with make_env(settings) as env:
        env.reset()

        def run() -> None:
            for _ in range(steps):
                env.step(env.spec.random_actions(rng))

        frames = steps * env.spec.num_envs * env.spec.action_repeat
        return timer.rate(run, frames, "frames/s")


def _synthetic_steps(spec: Any, count: int, seed: int) -> list[tuple[EnvStep, np.ndarray]]:
    """Random observations with episode boundaries, to fill buffers without rendering."""
    rng = np.random.default_rng(seed)
    n, out = spec.num_envs, []
    for t in range(count):
        if spec.pixels:
            obs = rng.integers(0, 256, size=(n, *spec.obs_shape), dtype=np.uint8)
        else:
            obs = rng.standard_normal((n, *spec.obs_shape)).astype(np.float32)
        k = t % (spec.episode_agent_steps + 1)
        step = EnvStep(obs=obs, reward=rng.random(n).astype(np.float32), terminated=np.zeros(n, bool),
                       truncated=np.full(n, k == spec.episode_agent_steps), first=np.full(n, k == 0))
        out.append((step, rng.uniform(-1, 1, (n, spec.action_dim)).astype(np.float32)))
    return out


class Benchmark:
    """Runs the configured stages; results accumulate in ``self.results``."""

    def __init__(self, cfg: DictConfig, explicit: frozenset[str] = frozenset()) -> None:
        """``explicit``: keys the user set on the command line; ``quick`` never overrides them."""
        self.cfg = cfg
        if cfg.quick:
            cfg = OmegaConf.merge(cfg, {k: v for k, v in cfg.quick_settings.items() if k not in explicit})
            self.cfg = cfg
        unknown = [s for s in cfg.stages if s not in STAGES]
        unknown += [v for v in cfg.update_variants if v not in VARIANTS]
        if unknown:
            raise UserError(f"unknown stage or update variant {unknown}; stages: {list(STAGES)}, variants: {list(VARIANTS)}")
        compiled = [v for v in cfg.update_variants if VARIANTS[v][1]]
        if compiled and resolve_device(cfg.device).type == "cpu" and cpu_compiler() is None:
            why = f"no C++ compiler ({os.environ.get('CXX') or 'g++'}) for torch.compile on a CPU"
            if "update_variants" in explicit:
                raise UserError(f"update_variants={list(cfg.update_variants)} has compiled variants, but there is {why}: "
                                "install g++ or leave them out")
            print(f"benchmark: {why}: timing {[v for v in cfg.update_variants if v not in compiled]} only", flush=True)
            cfg = OmegaConf.merge(cfg, {"update_variants": [v for v in cfg.update_variants if v not in compiled]})
            self.cfg = cfg
        if int(cfg.repeats) < 1 or int(cfg.steps) < 1:
            raise UserError(f"repeats={cfg.repeats} and steps={cfg.steps} must be at least 1")
        if "peak" in cfg.stages and (int(cfg.peak_matmul_size) < 1 or not float(cfg.peak_min_repeat_s) > 0):
            raise UserError(f"peak_matmul_size={cfg.peak_matmul_size} must be at least 1 and "
                            f"peak_min_repeat_s={cfg.peak_min_repeat_s} above 0")
        from pixel_ddpg.trainer import update_plan

        self.settings = EnvSettings.from_config(cfg)
        # what the trainer would choose for this config (end_to_end runs it), and for amp/compile=auto
        planned, floor = update_plan(cfg)
        self.precision, self.env_threads, self.torch_threads = resolve_compute(
            cfg, self.settings, planned, planned_is_floor=floor)
        self.auto_precision = resolve_precision(cfg.device, "auto", cfg.amp_dtype, "auto",
                                                planned_updates=planned,
                                                compile_min_updates=int(cfg.compile_min_updates),
                                                planned_is_floor=floor)
        self.device = self.precision.device
        self.timer = Timer(int(cfg.repeats), int(cfg.warmup_steps), self.device)
        self.steps = int(cfg.steps)
        self.results: dict[str, Any] = {
            "machine": {**machine_info(), "torch_threads": self.torch_threads, "envpool_threads": self.env_threads},
            "config": OmegaConf.to_container(cfg, resolve=True), "stages": {},
            "precision": {"auto": variant_of(self.auto_precision), "auto_why": self.auto_precision.why,
                          "end_to_end": variant_of(self.precision)}}
        with make_env(dataclasses.replace(self.settings, num_envs=1)) as probe:
            self.spec = dataclasses.replace(probe.spec, num_envs=self.settings.num_envs)
        self.sampling = Sampling.from_config(cfg.agent, self.spec.pixels)

    @property
    def stages(self) -> dict[str, Any]:
        return self.results["stages"]

    def batch_size(self) -> int:
        """The benchmark's ``batch_size`` when set, else the learner's (:class:`~pixel_ddpg.replay.Sampling`)."""
        return int(self.cfg.batch_size) if self.cfg.batch_size else self.sampling.batch_size

    def _agent(self, precision: Precision, spec: Any = None) -> Any:
        from pixel_ddpg.agent import make_agent

        return make_agent(self.cfg.agent, spec or self.spec, precision, int(self.cfg.seed))

    def _filled_replay(self, capacity: int | None = None) -> ReplayBuffer:
        cap = max(int(self.cfg.replay_capacity if capacity is None else capacity), 64 * self.spec.num_envs)
        replay = ReplayBuffer(self.spec, cap, self.device, nstep=self.sampling.nstep, gamma=self.sampling.gamma,
                              seed=int(self.cfg.seed), verbose=False)
        steps = _synthetic_steps(self.spec, cap // self.spec.num_envs + 1, int(self.cfg.seed))
        replay.add(steps[0][0], None)
        for st, a in steps[1:]:
            replay.add(st, a)
        return replay

    # ------------------------------------------------------------------ stages
    def env_state(self) -> None:
        s = dataclasses.replace(self.settings, obs_type="state", image_size=0, action_repeat=1, render_substeps=False,
                                frame_stack=1)
        r = _env_rate(s, self.timer, self.steps * 10)
        r["unit"] = "env steps/s"
        self.stages["env_state"] = r

    def env_pixels(self, num_envs: int | None = None) -> dict[str, Any]:
        out = {}
        for profile in ("standard", "fast"):
            s = dataclasses.replace(self.settings, render=profile, num_envs=num_envs or self.settings.num_envs)
            out[profile] = _env_rate(s, self.timer, self.steps)
        if num_envs is None:
            self.stages["env_pixels"] = out
        return out

    def env_gym(self) -> None:
        """Pixel frames/s of one task that EnvPool and Gymnasium both have (``gym_compare.task_id``),
        rendered natively by EnvPool and through env=gym's Python path (Gymnasium's render and a
        resize): what env=gym costs. Action repeat 1, one render per env step on both sides."""
        import importlib.util

        g = self.cfg.gym_compare
        if importlib.util.find_spec("imageio") is None:  # gymnasium's MuJoCo renderer imports it
            raise UserError("stage env_gym renders Gymnasium's MuJoCo envs, which need imageio: pip install imageio "
                            "(or gymnasium[mujoco])")
        common = dict(name=str(g.task_id), task_id=str(g.task_id), obs_type="pixels", image_size=int(self.settings.image_size or 64),
                      action_repeat=1, render_substeps=False, frame_stack=1, render=str(g.render),
                      num_envs=self.settings.num_envs, seed=int(self.cfg.seed), episode_sim_steps=1000)
        out: dict[str, Any] = {"task_id": str(g.task_id), "num_envs": self.settings.num_envs,
                               "image_size": common["image_size"]}
        out["envpool"] = _env_rate(EnvSettings(**common, camera_id=-1), self.timer, self.steps)
        out["gym"] = _env_rate(EnvSettings(**common, camera_id=-1, backend="gym", vectorization=str(g.vectorization)),
                               self.timer, self.steps)
        out["gym_vs_envpool"] = out["gym"]["median"] / out["envpool"]["median"]
        self.stages["env_gym"] = out

    def replay(self) -> None:
        replay = self._filled_replay()
        batch = self.batch_size()
        adds = _synthetic_steps(self.spec, self.steps, 1)

        def add() -> None:
            for st, a in adds:
                replay.add(st, a)

        def sample() -> None:
            for _ in range(self.steps):
                replay.sample(batch)

        n = self.spec.num_envs
        naive = NaiveReplay(self.spec, int(self.cfg.naive_replay_capacity), int(self.cfg.seed))
        one = dataclasses.replace(self.spec, num_envs=1)
        for st, a in _synthetic_steps(one, int(self.cfg.naive_replay_capacity), 2):
            naive.add(st.obs[0], a[0], float(st.reward[0]), st.obs[0], False)

        def naive_sample() -> None:
            for _ in range(self.steps):
                naive.sample(batch, self.device, self.sampling.gamma)

        self.stages["replay"] = {
            "batch_size": batch,
            "add": self.timer.rate(add, self.steps * n, "transitions/s"),
            "sample": self.timer.rate(sample, self.steps * batch, "transitions/s"),
            "naive_sample": self.timer.rate(naive_sample, self.steps * batch, "transitions/s"),
            "bytes_per_transition": bytes_per_transition(self.spec),
            "naive_bytes_per_transition": NaiveReplay.bytes_per_transition(self.spec),
            "new_frame_bytes": int(np.prod(self.spec.frame_shape)) * (1 if self.spec.pixels else 4),
        }

    def _calls_per_repeat(self, fn: Callable[[], object]) -> int:
        """Calls that make one timed repeat last ``peak_min_repeat_s``: a first-layer conv at batch
        16 takes microseconds, too short to time alone."""
        fn()
        self.timer.sync()
        t0 = time.perf_counter()
        fn()
        self.timer.sync()
        return max(1, math.ceil(float(self.cfg.peak_min_repeat_s) / max(time.perf_counter() - t0, 1e-9)))

    def _peak_run(self, fn: Callable[[], object], flops: int) -> tuple[Callable[[], None], float, str]:
        calls = self._calls_per_repeat(fn)

        def run() -> None:
            for _ in range(calls):
                fn()

        return run, calls * flops / 1e9, "GFLOP/s"

    def peak(self) -> None:
        """What this machine's matmuls and convs reach on the benchmark's device and torch threads,
        and the counted FLOPs of one update, so that an update's rate reads as a share of the
        hardware (:meth:`compute_shares`) and not only as updates/s.

        In fp32, and in the chosen precision's autocast dtype where it has one (variants in other
        precisions get no share): a square matmul of ``peak_matmul_size`` (compute-bound),
        and the encoder's own first conv at the update's batch size, forward alone and forward plus
        backward (weight and bias gradients: its input is pixels, as in the update), under the same
        autocast as the update. Repeats interleaved, median of each.
        """
        agent = self._agent(Precision(self.device, None, False))
        b = self.batch_size()
        replay = self._filled_replay(capacity=4 * b)
        # actor and target steps run every actor_delay-th update: count one whole cycle, take the mean
        cycle = [replay.sample(b) for _ in range(agent.actor_delay)]

        def updates() -> None:
            for batch in cycle:
                agent.update(batch)

        update_flops = count_flops(updates) / len(cycle)
        conv = next((m for m in agent.encoder.modules() if isinstance(m, torch.nn.Conv2d)), None)
        conv = copy.deepcopy(conv) if conv is not None else None  # the agent's layout (NHWC), not its optimizer
        # fp32, and the autocast dtype of the chosen precision (amp=auto: bf16 only where native; without
        # native bf16 a bf16 matmul takes a slow path, 0.6 GFLOP/s on an AVX2 EPYC, and is no peak)
        dtypes = {None, self.precision.amp_dtype}
        n = int(self.cfg.peak_matmul_size)
        runs: dict[str, tuple[Callable[[], None], float, str]] = {}
        out: dict[str, Any] = {"matmul_size": n, "update_flops": {
            "gflop_per_update": update_flops / 1e9, "batch_size": b, "updates_counted": len(cycle),
            "counted_on": "eager_fp32", "counter": "torch.utils.flop_counter.FlopCounterMode (matmul and conv, "
                                                   "forward and backward)"}}
        if conv is not None:
            x = torch.rand(b, *self.spec.obs_shape, device=self.device).contiguous(memory_format=torch.channels_last)
            out["conv"] = {"input_shape": list(x.shape), "weight_shape": list(conv.weight.shape),
                           "stride": list(conv.stride), "padding": list(conv.padding)}
        for dtype in sorted(dtypes, key=lambda d: PRECISION_NAMES[d]):
            name = PRECISION_NAMES[dtype]
            a, m = (torch.randn(n, n, device=self.device, dtype=dtype or torch.float32) for _ in range(2))
            matmul = lambda a=a, m=m: a @ m  # noqa: E731
            runs[f"{name}/matmul"] = self._peak_run(matmul, count_flops(matmul))
            if conv is None:
                continue
            autocast = ((lambda dtype=dtype: torch.autocast(self.device.type, dtype=dtype)) if dtype is not None
                        else contextlib.nullcontext)

            def forward(autocast: Callable = autocast) -> torch.Tensor:
                with torch.no_grad(), autocast():
                    return conv(x)

            with autocast():
                grad = torch.randn_like(conv(x))

            def forward_backward(autocast: Callable = autocast, grad: torch.Tensor = grad) -> None:
                conv.zero_grad(set_to_none=True)
                with autocast():
                    y = conv(x)
                y.backward(grad)

            runs[f"{name}/conv_forward"] = self._peak_run(forward, count_flops(forward))
            runs[f"{name}/conv_forward_backward"] = self._peak_run(forward_backward, count_flops(forward_backward))
        for key, r in self.timer.side_by_side(runs).items():
            name, what = key.split("/")
            r["gflop_per_repeat"] = runs[key][1]
            out.setdefault(name, {})[what] = r
        for name in {PRECISION_NAMES[d] for d in dtypes}:
            p = out[name]
            p["matmul_peak"] = p["matmul"]["median"]
            p["conv_peak"] = (max(p["conv_forward"]["median"], p["conv_forward_backward"]["median"])
                              if conv is not None else None)
        self.stages["peak"] = out

    def compute_shares(self) -> None:
        """Each update variant's achieved GFLOP/s (counted FLOPs x its updates/s) and its share of
        the matmul and conv peaks in its own precision: how close the update runs to what this CPU
        can do. A share far above 1 means the FLOP count or the timing is wrong."""
        peak, update = self.stages.get("peak"), self.stages.get("update")
        if not peak or not update:
            return
        count = peak["update_flops"]
        for name, r in update.items():
            if r["batch_size"] != count["batch_size"]:
                continue
            precision = PRECISION_NAMES[VARIANTS[name][0]]
            if precision not in peak:
                continue
            p = peak[precision]
            gflops = count["gflop_per_update"] * r["median"]
            r.update(gflop_per_update=count["gflop_per_update"], gflops=gflops, peak_precision=precision,
                     share_of_matmul_peak=gflops / p["matmul_peak"],
                     share_of_conv_peak=gflops / p["conv_peak"] if p["conv_peak"] else None)

    def update(self, batch_size: int | None = None) -> dict[str, Any]:
        """Every variant's updates/s on the same batches, repeats interleaved across variants."""
        replay = self._filled_replay()
        runs, sizes = {}, {}
        for name in self.cfg.update_variants:
            amp, compiled = VARIANTS[name]
            agent = self._agent(Precision(self.device, amp, compiled,
                                          cuda_graphs=bool(compiled) and self.device.type == "cuda"))
            b = sizes[name] = batch_size or self.batch_size()
            batches = [replay.sample(b) for _ in range(self.steps)]

            def run(agent: Any = agent, batches: list = batches) -> None:
                for batch in batches:
                    agent.update(batch)

            runs[name] = (run, self.steps, "updates/s")
        out = self.timer.side_by_side(runs)
        for name, r in out.items():
            r["batch_size"] = sizes[name]
        if batch_size is None:
            self.stages["update"] = out
        return out

    def act(self) -> None:
        agent = self._agent(self.precision)
        obs = torch.as_tensor(_synthetic_steps(self.spec, 1, 3)[0][0].obs, device=self.device)

        def run() -> None:
            with torch.no_grad():
                for _ in range(self.steps):
                    agent.act(obs, explore=True)

        self.stages["act"] = self.timer.rate(run, self.steps * self.spec.num_envs, "env steps/s")

    def end_to_end(self, num_envs: int | None = None) -> dict[str, Any]:
        from pixel_ddpg.trainer import Trainer

        cfg = self.cfg.copy()
        overrides = {"warmup_frames": 0, "log": {"tensorboard": False, "progress": False},
                     "replay": {"capacity": int(self.cfg.replay_capacity)}}
        if num_envs is not None:
            overrides["num_envs"] = num_envs
        cfg = OmegaConf.merge(cfg, overrides)
        with tempfile.TemporaryDirectory(prefix="pixel_ddpg-bench-") as tmp:
            trainer = Trainer(cfg, Path(tmp))
            try:
                trainer.start()
                while trainer.counters.updates == 0:  # fill until updates run, then time the steady state
                    trainer.iteration()

                def run() -> None:
                    for _ in range(self.steps):
                        trainer.iteration()

                # the same agent's updates alone, on batches sampled beforehand: what the loop could reach
                per_step = trainer.updates_per_step * trainer.spec.num_envs
                n_updates = max(1, round(self.steps * per_step))
                batches = [trainer.replay.sample(trainer.batch_size) for _ in range(n_updates)]

                def learn() -> None:
                    for batch in batches:
                        trainer.agent.update(batch)

                both = self.timer.side_by_side({"loop": (run, self.steps * trainer.frames_per_step, "frames/s"),
                                                "learner": (learn, n_updates, "updates/s")})
                r = both["loop"]
                frames_per_update = trainer.spec.action_repeat / trainer.updates_per_step
                r.update(learner_alone=both["learner"], frames_per_update=frames_per_update,
                         loop_vs_learner=r["median"] / (both["learner"]["median"] * frames_per_update))
                r.update(task_id=trainer.settings.task_id, obs_shape=list(trainer.spec.obs_shape),
                         num_envs=trainer.spec.num_envs, utd_ratio=trainer.updates_per_step, batch_size=trainer.batch_size,
                         amp=str(trainer.precision.amp_dtype), compile=trainer.precision.compile,
                         variant=variant_of(trainer.precision),
                         async_env=bool(cfg.async_env))
            finally:
                trainer.close()
        if num_envs is None:
            self.stages["end_to_end"] = r
        return r

    def baseline(self) -> None:
        one = dataclasses.replace(self.settings, num_envs=1)
        with make_env(one) as env:
            agent = self._agent(Precision(self.device, None, False), env.spec)
            b = self.batch_size()
            replay = NaiveReplay(env.spec, int(self.cfg.naive_replay_capacity), int(self.cfg.seed))
            loop = NaiveLoop(env, agent, replay, b, self.sampling.gamma, self.device, int(self.cfg.seed))
            while replay.size < b:
                loop.step(explore_random=True)

            def run() -> None:
                for _ in range(self.steps):
                    loop.step()

            r = self.timer.rate(run, self.steps * env.spec.action_repeat, "frames/s")
        r.update(task_id=one.task_id, obs_shape=list(env.spec.obs_shape), batch_size=b,
                 bytes_per_transition=NaiveReplay.bytes_per_transition(env.spec))
        self.stages["baseline"] = {"end_to_end": r}

    def sweep(self) -> None:
        sw = self.cfg.sweep
        out: dict[str, Any] = {}
        if sw.num_envs:
            out["num_envs"] = {int(n): {"env_pixels": self.env_pixels(int(n)), "end_to_end": self.end_to_end(int(n))}
                               for n in sw.num_envs}
        if sw.batch_sizes:
            out["batch_size"] = {int(b): self.update(int(b)) for b in sw.batch_sizes}
        if out:
            self.results["sweep"] = out

    def speedups(self) -> dict[str, float]:
        s, out = self.stages, {}
        base = s.get("baseline", {}).get("end_to_end")
        if base and "end_to_end" in s:
            out["end_to_end"] = s["end_to_end"]["median"] / base["median"]
        if "replay" in s:
            r = s["replay"]
            out["replay_sample"] = r["sample"]["median"] / r["naive_sample"]["median"]
            out["replay_bytes"] = r["naive_bytes_per_transition"] / r["bytes_per_transition"]
        if "update" in s and "eager_fp32" in s["update"]:
            best = max(v["median"] for v in s["update"].values())
            out["update_best_vs_eager_fp32"] = best / s["update"]["eager_fp32"]["median"]
        if "end_to_end" in s:
            # on a CPU the learner is the bottleneck: the loop should run at the update rate alone
            out["loop_vs_learner"] = s["end_to_end"]["loop_vs_learner"]
        if "env_gym" in s:
            out["env_gym_vs_envpool"] = s["env_gym"]["gym_vs_envpool"]
        if "env_pixels" in s:
            out["env_fast_vs_standard"] = s["env_pixels"]["fast"]["median"] / s["env_pixels"]["standard"]["median"]
        return out

    def run(self) -> dict[str, Any]:
        for stage in self.cfg.stages:
            t0 = time.perf_counter()
            getattr(self, stage)()
            print(f"  {stage:<11} done in {time.perf_counter() - t0:5.1f} s", flush=True)
        self.sweep()
        self.compute_shares()
        if "update" in self.stages:
            self.results["precision"]["fastest"] = max(self.stages["update"], key=lambda k: self.stages["update"][k]["median"])
        self.results["speedup"] = self.speedups()
        return self.results


def table(results: dict[str, Any]) -> str:
    """The figures a person reads, one line each."""
    lines, s = [], results["stages"]

    def row(name: str, r: dict[str, Any]) -> None:
        lines.append(f"{name:<34} {r['median']:>12,.1f} {r['unit']}")

    if "env_state" in s:
        row("env state", s["env_state"])
    for profile, r in s.get("env_pixels", {}).items():
        row(f"env pixels ({profile})", r)
    if "env_gym" in s:
        g = s["env_gym"]
        row(f"env pixels {g['task_id']} EnvPool", g["envpool"])
        row(f"env pixels {g['task_id']} env=gym", g["gym"])
    if "replay" in s:
        r = s["replay"]
        for k in ("add", "sample", "naive_sample"):
            row(f"replay {k} (batch {r['batch_size']})" if k != "add" else "replay add", r[k])
        lines.append(f"{'replay bytes/transition':<34} {r['bytes_per_transition']:>12,} (naive {r['naive_bytes_per_transition']:,}; "
                     f"new frame {r['new_frame_bytes']:,})")
    if "peak" in s:
        pk = s["peak"]
        conv = pk.get("conv")
        for precision in PRECISION_NAMES.values():
            if precision not in pk:
                continue
            p = pk[precision]
            text = f"matmul {pk['matmul_size']}^2 {p['matmul_peak']:,.1f}"
            if conv:
                text += (f", conv {conv['weight_shape']} on {conv['input_shape']}: forward "
                         f"{p['conv_forward']['median']:,.1f}, forward+backward {p['conv_forward_backward']['median']:,.1f}")
            lines.append(f"{'peak ' + precision:<34} {text} GFLOP/s")
    for name, r in s.get("update", {}).items():
        row(f"update {name} (batch {r['batch_size']})", r)
    for name, r in s.get("update", {}).items():
        if "gflops" in r:
            mm = f"{100 * r['share_of_matmul_peak']:.1f}%"
            share = (f"{100 * r['share_of_conv_peak']:.1f}% of this machine's conv peak ({mm} of matmul peak; "
                     if r["share_of_conv_peak"] else f"{mm} of this machine's matmul peak (")
            lines.append(f"update {name}: {r['gflop_per_update']:.3f} GFLOP per update, {r['gflops']:,.1f} GFLOP/s = "
                         f"{share}{r['peak_precision']} peaks)")
    if "act" in s:
        row("act", s["act"])
    if "end_to_end" in s:
        e = s["end_to_end"]
        row(f"end to end ({e['num_envs']} envs, {e['variant']})", e)
        row(f"  its learner alone (x {e['frames_per_update']:g} frames)", e["learner_alone"])
    if "baseline" in s:
        row("naive baseline end to end (1 env)", s["baseline"]["end_to_end"])
    p = results.get("precision", {})
    if p:
        lines.append(f"{'update variant: fastest / auto':<34} {p.get('fastest', '-'):>12} / {p['auto']} ({p['auto_why']})")
    m = results["machine"]
    lines.append(f"{'threads: torch / EnvPool / usable':<34} {m['torch_threads']:>12} / {m['envpool_threads']} / "
                 f"{m['usable_cores']} cores (OMP_WAIT_POLICY={m['omp_wait_policy']}; flags {' '.join(m['cpu_flags'])})")
    for k, v in results.get("speedup", {}).items():
        lines.append(f"{'speedup ' + k:<34} {v:>12.2f}x")
    return "\n".join(lines)


def plot_sweep(results: dict[str, Any], out: Path) -> Path | None:
    sweep = results.get("sweep")
    if not sweep:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [k for k in ("num_envs", "batch_size") if k in sweep]
    fig = Figure(figsize=(6 * len(panels), 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, key in zip(axes[0], panels):
        xs = sorted(sweep[key])
        if key == "num_envs":
            for label, get in (("env pixels (standard)", lambda v: v["env_pixels"]["standard"]["median"]),
                               ("env pixels (fast)", lambda v: v["env_pixels"]["fast"]["median"]),
                               ("end to end", lambda v: v["end_to_end"]["median"])):
                ax.plot(xs, [get(sweep[key][x]) for x in xs], marker="o", label=label)
            ax.set(xlabel="num_envs", ylabel="frames/s", xscale="log", title="Scaling with envs")
        else:
            for variant in sweep[key][xs[0]]:
                ax.plot(xs, [sweep[key][x][variant]["median"] for x in xs], marker="o", label=variant)
            ax.set(xlabel="batch size", ylabel="updates/s", xscale="log", title="Updates by batch size")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{results['config']['env']['name']} {results['config']['obs']['type']} on "
                 f"{results['machine']['gpu'] or results['machine']['cpu']}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return out


def main_task(cfg: DictConfig) -> dict[str, Any]:
    out = Path(str(cfg.out))
    ensure_writable_dir(out.parent, "out (folder)")
    from hydra.core.hydra_config import HydraConfig

    explicit = frozenset(o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    bench = Benchmark(cfg, explicit)
    print(f"benchmark: {bench.settings.task_id} {bench.settings.obs_type} {bench.settings.image_size}px, "
          f"{bench.settings.num_envs} envs, device {bench.device}", flush=True)
    results = bench.run()
    plot = cfg.sweep.plot or (str(out.with_suffix(".png")) if results.get("sweep") else None)
    if plot:
        results["sweep_plot"] = str(plot_sweep(results, Path(plot)))
    write_bytes_atomic(json.dumps(results, indent=2).encode(), out)
    print(table(results))
    print(f"wrote {out}")
    return results


main = cli(main_task, config_name="benchmark")

if __name__ == "__main__":
    main()
