#!/usr/bin/env bash
# The GPU check (issue 27), one command on a CUDA machine, under 10 minutes:
#   1. the GPU tests (tests/test_gpu.py, and the GPU direction of tests/test_cross_device.py),
#   2. what one rendered frame costs (the benchmark's env stages, one env): the first run on an H200
#      rendered at ~160 ms a frame through NVIDIA's EGL and every step after it timed out; and
#      what EGL's context switch around each frame costs, without MuJoCo (python -m envs.egl_probe),
#   3. the benchmark sweep: sweep.batch_sizes=[16,256], sweep.num_envs=[4,16] (the update's speed is
#      measured even when rendering is slow),
#   4. a CPU-trained checkpoint (a short CPU run: what a laptop would hand over),
#   5. a 50k-frame cheetah run from pixels with bf16 autocast and torch.compile (CUDA graphs: auto),
#   6. evaluate of that run, and of the CPU-trained checkpoint, on the GPU.
# Every figure goes into one JSON (default gpu_check/gpu_check.json); each step's exit status and
# seconds are in it too, and a step that fails does not stop the ones after it.
#
#   scripts/gpu_check.sh [--dry-run] [--out DIR]
#
# --dry-run: the same steps on the CPU with tiny sizes (seconds), as the fast test set runs it
# (tests/test_gpu_check.py). Run from anywhere; python is $PYTHON, else python3. Packages the GPU
# machine lacks (envpool, hydra): build them with /work/shared/tools/device-wheels.sh into
# .dev-site/, which this script puts on PYTHONPATH when python cannot import them otherwise.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
dry=0
out=gpu_check
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) out=$2; shift ;;
    *) echo "error: unknown argument $1 (use --dry-run, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
# .dev-site holds Python 3.12 wheels for the GPU image: only where this python lacks envpool or hydra
# (on the developer's own machine it would shadow the installed builds with ones for another Python).
if [ -d "$root/.dev-site" ] && ! "$PY" -c 'import envpool, hydra' 2>/dev/null; then
  export PYTHONPATH="$PYTHONPATH:$root/.dev-site"
fi
mkdir -p "$out" || { echo "error: cannot create $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
steps="$out/steps.tsv"
: > "$steps"

if [ $dry = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "error: torch sees no CUDA GPU here; scripts/gpu_check.sh --dry-run runs the steps on the CPU" >&2
  exit 2
fi

# Sizes: the real check, or the dry run's tiny ones (the tests' cartpole at 16x16, a few updates).
if [ $dry = 1 ]; then
  dev=cpu
  tiny=(setup=paper env=cartpole_balance env.episode_sim_steps=30 num_envs=2 render=fast obs.image_size=16
        warmup_frames=30 eval.every_frames=120 eval.episodes=1 eval.num_envs=1 log.every_frames=30
        checkpoint.every_frames=120 agent.batch_size=8 replay.capacity=2000 total_frames=120)
  gpu_run=("${tiny[@]}" device=cpu amp=false compile=false)
  cpu_run=("${tiny[@]}" device=cpu amp=false compile=false)
  eval_args=(episodes=1 video=false)
  bench=(quick=true setup=paper env=cartpole_balance env.episode_sim_steps=30 render=fast obs.image_size=16
         num_envs=2 replay_capacity=400 naive_replay_capacity=100 device=cpu compile=false amp=false
         "stages=[update]" "update_variants=[eager_fp32]" "sweep.batch_sizes=[4,8]" "sweep.num_envs=[]")
  render=(quick=true setup=paper env=cartpole_balance env.episode_sim_steps=30 obs.image_size=16 num_envs=1
          device=cpu compile=false amp=false "stages=[env_state,env_pixels]")
  limit=(120 120 120 120 120 120 120 120)
else
  dev=cuda
  gpu_run=(env=cheetah obs=pixels device=cuda amp=true compile=true total_frames=50000 num_envs=16
           eval.every_frames=50000 eval.episodes=4 eval.num_envs=4 log.every_frames=5000 checkpoint.every_frames=50000)
  # short episodes: on the GPU machine this CPU run renders through the same EGL as the GPU run
  cpu_run=(env=cheetah obs=pixels device=cpu amp=false compile=false total_frames=800 warmup_frames=400
           env.episode_sim_steps=200 num_envs=2 eval.every_frames=800 eval.episodes=1 eval.num_envs=1
           checkpoint.every_frames=800)
  eval_args=(episodes=2 video=false)
  render=(env=cheetah device=cuda quick=true num_envs=1 "stages=[env_state,env_pixels]")
  bench=(env=cheetah device=cuda quick=true "sweep.batch_sizes=[16,256]" "sweep.num_envs=[4,16]")
  # seconds per step below, 600 in all: the GPU tests compile the update twice
  limit=(150 45 20 150 60 100 45 30)
fi

step() {  # step NAME LIMIT_S CMD...: run it under a time limit, log it, record rc and seconds
  local name=$1 lim=$2; shift 2
  local t0 rc
  t0=$(date +%s%N)
  echo "== $name (limit ${lim}s): $*"
  timeout --kill-after=10 "$lim" "$@" > "$out/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" >> "$steps"  # milliseconds
  tail -n 3 "$out/$name.log"
  [ $rc = 0 ] || echo "   $name failed (rc $rc): $out/$name.log"
}

rm -rf "$out/gpu_run" "$out/cpu_run" "$out/eval_gpu_run" "$out/eval_cpu_ckpt"
step gpu_tests "${limit[0]}" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
  tests/test_cross_device.py::test_a_cpu_checkpoint_evaluates_and_resumes_on_cuda
step render "${limit[1]}" "$PY" -m pixel_ddpg.benchmark "${render[@]}" "out=$out/render.json"
step egl_probe "${limit[2]}" "$PY" -m envs.egl_probe --out "$out/egl_probe.json"
step benchmark "${limit[3]}" "$PY" -m pixel_ddpg.benchmark "${bench[@]}" "out=$out/benchmark.json"
step cpu_train "${limit[4]}" "$PY" -m pixel_ddpg.train "${cpu_run[@]}" "hydra.run.dir=$out/cpu_run"
step gpu_train "${limit[5]}" "$PY" -m pixel_ddpg.train "${gpu_run[@]}" "hydra.run.dir=$out/gpu_run"
step eval_gpu_run "${limit[6]}" "$PY" -m pixel_ddpg.evaluate "checkpoint=$out/gpu_run" "${eval_args[@]}" \
  "device=$dev" "out_dir=$out/eval_gpu_run"
step eval_cpu_ckpt "${limit[7]}" "$PY" -m pixel_ddpg.evaluate "checkpoint=$out/cpu_run" "${eval_args[@]}" \
  "device=$dev" "out_dir=$out/eval_cpu_ckpt"

"$PY" - "$out" "$dry" <<'PYEOF'
"""Gather every figure of the check into gpu_check.json."""
import csv, json, platform, sys, time
from pathlib import Path

import torch

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"


def read_json(path):
    return json.loads(path.read_text()) if path.is_file() else None


def rows(path):
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def start_line(log, prefix):
    if not log.is_file():
        return None
    return next((line.strip() for line in log.read_text().splitlines() if line.startswith(prefix)), None)


steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, ms = line.split("\t")
    steps[name] = {"rc": int(rc), "seconds": round(int(ms) / 1000, 1)}
train_rows = rows(out / "gpu_run" / "train.csv")
fps = [float(r["fps"]) for r in train_rows if r.get("fps")]
evals = {}
for name in ("eval_gpu_run", "eval_cpu_ckpt"):
    e = read_json(out / name / "eval.json")
    evals[name] = None if e is None else {k: e.get(k) for k in ("checkpoint", "checkpoint_frame", "mean", "std",
                                                                 "episodes", "returns")}
result = {
    "dry_run": dry,
    "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    "host": platform.node(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "steps": steps,
    "all_passed": all(s["rc"] == 0 for s in steps.values()),
    "seconds": round(sum(s["seconds"] for s in steps.values()), 1),
    "gpu_run": {
        "learner": start_line(out / "gpu_train.log", "learner on"),
        "warnings": [l.strip() for l in (out / "gpu_train.log").read_text().splitlines() if "warning" in l]
        if (out / "gpu_train.log").is_file() else [],
        "eval": rows(out / "gpu_run" / "eval.csv"),
        "train_fps_last": fps[-1] if fps else None,
        "train_fps_median": sorted(fps)[len(fps) // 2] if fps else None,
        "last_train_row": train_rows[-1] if train_rows else None,
    },
    "evaluate": evals,
    "render": read_json(out / "render.json"),
    "egl_probe": read_json(out / "egl_probe.json"),
    "benchmark": read_json(out / "benchmark.json"),
}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2))
print(f"wrote {out / 'gpu_check.json'}: {len(steps)} steps, {'all passed' if result['all_passed'] else 'SOME FAILED'}, "
      f"{result['seconds']} s")
sys.exit(0 if result["all_passed"] else 1)
PYEOF
