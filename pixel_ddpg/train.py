"""`python -m pixel_ddpg.train env=cheetah obs=pixels`: train, checkpoint, resume.

``resume=<run dir or checkpoint>`` continues that run in its own dir with its own config;
explicit overrides may change only what does not alter the experiment (total_frames, device,
logging...). Ctrl-C or SIGTERM saves a checkpoint before exiting. One run at a time holds a run
dir (:class:`~pixel_ddpg.runlog.RunLock`); a second one is refused in one line.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from envs.settings import resolve_render
from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg import provenance, rundir
from pixel_ddpg.config import cli, ensure_writable_dir, to_yaml
from pixel_ddpg.errors import USER_ERRORS, UserError
from pixel_ddpg.runlog import RunLock


def prepare_argv(argv: list[str]) -> list[str]:
    """A resume continues in its own run dir (keeping its original .hydra/ files); a new run's
    explicit run dir is checked before Hydra creates it. Either is refused here, before Hydra
    writes its files into it, when a live run holds it."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if values and values[-1] not in ("", "null", "None"):
        run_dir, _ = ckpt_io.resume_source(values[-1])
        RunLock(run_dir).check_free()
        kept = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
        return kept + [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    for a in argv:
        if a.startswith("hydra.run.dir="):
            run_dir = ensure_writable_dir(Path(a.split("=", 1)[1]), "hydra.run.dir")
            RunLock(run_dir).check_free()
            _check_empty(run_dir)
    return argv


def _check_empty(run_dir: Path) -> None:
    """A new run does not write into another run's files (its CSVs would append to the old rows)."""
    held = [name for name in (rundir.RUN_CONFIG, rundir.TRAIN_CSV, rundir.EVAL_CSV, rundir.CKPT_DIR)
            if (run_dir / name).exists()]
    if held:
        raise UserError(f"{run_dir} already holds a run ({', '.join(held)}): resume={run_dir} continues it; "
                        f"a new run needs another hydra.run.dir")


def _remove_if_only_hydra(run_dir: Path) -> None:
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        cwd, parent = Path.cwd().resolve(), run_dir.resolve().parent
        while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
            parent.rmdir()  # the empty runs/<env>-<obs>/ folders Hydra made on the way
            parent = parent.parent


def _start_again(run_dir: Path) -> None:
    """A run killed before its first checkpoint starts again from frame 0: its rows go too."""
    print(f"{run_dir} has no checkpoint (its run stopped before the first one): starting it again from frame 0 "
          f"with its {rundir.RUN_CONFIG}", flush=True)
    for name in (rundir.TRAIN_CSV, rundir.EVAL_CSV):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / rundir.TB_DIR, ignore_errors=True)


def _config_yaml(cfg: DictConfig, code: dict) -> bytes:
    """config.yaml's contents: the run's settings, then (outside the config a resume compares) the
    code that ran them (``provenance.current()``)."""
    return (to_yaml(cfg) + OmegaConf.to_yaml({"provenance": code})).encode()


def run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from pixel_ddpg.trainer import Trainer

    hc = HydraConfig.get()
    run_dir, checkpoint = Path(hc.runtime.output_dir), None
    if cfg.resume:
        run_dir, checkpoint = ckpt_io.resume_source(cfg.resume)
    ensure_writable_dir(run_dir, "hydra.run.dir")
    lock = RunLock(run_dir)
    warning = lock.acquire()  # before anything in the run dir is read or written
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        rundir.remove_stale_temporaries(run_dir)  # a killed run's half-written files
        resume = None
        if cfg.resume:
            if checkpoint is None:
                saved = ckpt_io.run_config(run_dir)
            else:
                resume = ckpt_io.load(checkpoint)
                mismatch = provenance.mismatch_warning(resume.get("provenance"), str(resume["path"]))
                if mismatch:
                    print(mismatch, file=sys.stderr)
                saved = ckpt_io.checkpoint_config(resume)
            cfg = ckpt_io.merge_for_resume(saved, cfg, list(hc.overrides.task))
            if checkpoint is None:
                _start_again(run_dir)
        if str(cfg.render) == "auto":  # config.yaml records the profile the run renders with
            cfg.render = resolve_render(str(cfg.obs.type) == "pixels")
        # A run without a checkpoint writes config.yaml first: killed from here on, resume= starts it again.
        code = provenance.current()
        if resume is None:
            rundir.write_bytes_atomic(_config_yaml(cfg, code), run_dir / rundir.RUN_CONFIG)
        try:
            trainer = Trainer(cfg, run_dir, resume=resume)
        except USER_ERRORS:
            if not cfg.resume:  # a run that never started leaves nothing behind
                (run_dir / rundir.RUN_CONFIG).unlink(missing_ok=True)
                lock.release()
                _remove_if_only_hydra(run_dir)
            raise
        # What the Trainer resolved at start-up (agent.frames_per_update=auto) goes into config.yaml
        # too; a resume writes the config it merged.
        rundir.write_bytes_atomic(_config_yaml(cfg, code), run_dir / rundir.RUN_CONFIG)
        print(f"run dir: {run_dir}", flush=True)
        result = trainer.train()
    finally:
        lock.release()
    if result["interrupted"]:
        # Everything is saved and closed; skip the interpreter's teardown of torch and friends,
        # which took 1.5-4 s on 2 busy cores, so Ctrl-C returns the prompt within seconds.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(128 + int(result["signal"]))
    print(f"done: {result['frame']:,} frames; checkpoint {result['checkpoint']}")


def main() -> None:
    cli(run, argv_hook=prepare_argv)()


if __name__ == "__main__":
    main()
