"""-m sweeps on Hydra's launchers (joblib on one machine, submitit's local executor standing in
for SLURM) and the aggregate report over their run dirs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT, TINY

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
pytest.importorskip("rliable")

# state obs: the launcher is under test, not the renderer; auto capacity, capped, plans from the job's share
SWEEP = [*[o for o in TINY if not o.startswith("replay.capacity")], "obs=state", "total_frames=60",
         "eval.every_frames=60", "replay.max_transitions=4000", "seed=0,1"]


def multirun(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pixel_ddpg.train", "-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}",
                           *overrides], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/eval.csv"))


def report(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixel_ddpg.plot", "report", *map(str, args), "--reps", "500"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_joblib_sweep_runs_jobs_with_their_own_share_and_the_report_aggregates_them(tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "launcher=local")
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    dirs = run_dirs(sweep)
    assert [d.name for d in dirs] == ["cartpole_balance-state-seed0", "cartpole_balance-state-seed1"]
    for d in dirs:
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        assert (cfg["torch_threads"], cfg["num_threads"]) == (1, 1)
        assert cfg["replay"]["memory_fraction"] == 0.25  # the default 0.5, split between 2 jobs at once
        assert (d / "checkpoints" / "last.pt").is_file()

    out = tmp_path / "report" / "report.png"
    proc = report(sweep, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "| cartpole_balance state | 2 | 0,1 | 60 |" in proc.stdout
    finals = [float(np.genfromtxt(d / "eval.csv", delimiter=",", names=True)["return_mean"][-1]) for d in dirs]
    rows = (out.with_suffix(".csv")).read_text().splitlines()
    assert len(rows) == 2 and np.isclose(float(rows[1].split(",")[6]), np.mean(finals))  # header, one task
    with Image.open(out) as image:
        assert image.format == "PNG"


def test_submitit_local_sweep_leaves_one_run_dir_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    multirun(sweep, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "torch_threads=1",
             "num_threads=1")
    dirs = run_dirs(sweep)
    assert [d.name for d in dirs] == ["cartpole_balance-state-seed0", "cartpole_balance-state-seed1"]
    assert list((sweep / ".submitit").glob("*/*_log.out"))  # the launcher's logs stay under the sweep dir
    proc = report(sweep, "--out", tmp_path / "r.png")
    assert proc.returncode == 0, proc.stderr
    assert "| cartpole_balance state | 2 | 0,1 | 60 |" in proc.stdout


def test_slurm_launcher_config_composes_with_an_allocation_per_job():
    from hydra import compose, initialize_config_dir

    from pixel_ddpg.config import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0 and launcher.cpus_per_task >= 1
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # sbatch logs under the sweep dir
    assert cfg.hydra.sweep.subdir == "cheetah-pixels-seed0"  # one job (run dir) per task x seed
