"""`python -m pixel_ddpg.train env=cheetah obs=pixels`: train, checkpoint, resume.

``resume=<run dir or checkpoint>`` continues that run in its own dir with its own config;
explicit overrides may change only what does not alter the experiment (total_frames, device,
logging...). Ctrl-C or SIGTERM saves a checkpoint before exiting.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg import provenance
from pixel_ddpg.config import USER_ERRORS, cli, ensure_writable_dir, to_yaml


def prepare_argv(argv: list[str]) -> list[str]:
    """A resume continues in its own run dir (keeping its original .hydra/ files); a new run's
    explicit run dir is checked before Hydra creates it."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if values and values[-1] not in ("", "null", "None"):
        run_dir = ckpt_io.run_dir_of(ckpt_io.find_checkpoint(values[-1]).resolve())
        kept = [a for a in argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
        return kept + [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    for a in argv:
        if a.startswith("hydra.run.dir="):
            ensure_writable_dir(Path(a.split("=", 1)[1]), "hydra.run.dir")
    return argv


def _remove_if_only_hydra(run_dir: Path) -> None:
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        cwd, parent = Path.cwd().resolve(), run_dir.resolve().parent
        while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
            parent.rmdir()  # the empty runs/<env>-<obs>/ folders Hydra made on the way
            parent = parent.parent


def run(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from pixel_ddpg.trainer import Trainer

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    resume = None
    if cfg.resume:
        resume = ckpt_io.load(cfg.resume)
        warning = provenance.mismatch_warning(resume.get("provenance"), str(resume["path"]))
        if warning:
            print(warning, file=sys.stderr)
        cfg = ckpt_io.merge_for_resume(ckpt_io.checkpoint_config(resume), cfg, list(hc.overrides.task))
        run_dir = ckpt_io.run_dir_of(resume["path"].resolve())
    ensure_writable_dir(run_dir, "hydra.run.dir")
    try:
        trainer = Trainer(cfg, run_dir, resume=resume)
    except USER_ERRORS:
        if resume is None:
            _remove_if_only_hydra(run_dir)  # a run that never started leaves nothing behind
        raise
    # The run's settings, then (outside the config a resume compares) the code that ran them.
    (run_dir / "config.yaml").write_text(to_yaml(cfg) + OmegaConf.to_yaml({"provenance": provenance.current()}))
    print(f"run dir: {run_dir}", flush=True)
    result = trainer.train()
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
