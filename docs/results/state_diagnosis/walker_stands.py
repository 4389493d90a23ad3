"""What walker_walk's policies do over the 20 fixed starts: how soon they fall, and how long they move.

Reads each run's ``q_record_100k.npz`` (the per-step record that ``python -m pixel_ddpg.evaluate
... episodes=20 num_envs=5 video=false seed=1000`` writes beside eval.json) and prints one markdown
row per group of runs. walker_walk pays stand x (1 + 5 move) / 6 a frame (dm_control), so a walker
upright and still earns about 0.17, one that has fallen under 0.05 (a torso low and tilted), and one
walking upright near its target speed 0.5-1. An agent step's reward sums 4 frames (action repeat 4).
Each start begins upright (0.13-0.17 a frame); "down" is a step under 0.05 a frame, "moving" one
above 0.2, and a fall after moving is a step down after one moving.

    python docs/results/state_diagnosis/walker_stands.py   # from the repository root
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DOWN, MOVING = 0.05, 0.2  # reward per frame
EARLY = 60  # agent steps: 240 frames
GROUPS = {
    "default (seeds 1-3)": [f"walker_walk-state-seed{s}" for s in (1, 2, 3)],
    "`agent.critic_norm=layer` (seeds 1-3)": [f"walker_walk-state-ln-seed{s}" for s in (1, 2, 3)],
    "`agent.nstep=1` (seeds 1-3)": [f"walker_walk-state-nstep1-seed{s}" for s in (1, 2, 3)],
    "Gaussian 1.0 → 0.1 (seed 1)": ["walker_walk-state-gauss-seed1"],
    "OU σ 0.3 (seed 1)": ["walker_walk-state-ou0.3-seed1"],
    "Gaussian 0.2, constant (seeds 1-2)": [f"walker_walk-state-gauss0.2-seed{s}" for s in (1, 2)],
    "one update per 2 frames (seed 1)": ["walker_walk-state-fpu2-seed1"],
    "LayerNorm critic, one update per 2 frames (seeds 1-3)": [f"walker_walk-state-lnfpu2-seed{s}" for s in (1, 2, 3)],
    "LayerNorm critic, one update per 2 frames, batch 128 (seeds 1-3)": [
        f"walker_walk-state-lnfpu2b128-seed{s}" for s in (1, 2, 3)],
    "pixels, `agent.critic_norm=layer` (seeds 1-2)": [f"../default_learner/walker_walk-ln-ar4-fpu4-seed{s}" for s in (1, 2)],
}


def episodes(run: Path) -> list[np.ndarray]:
    """Reward per frame of each agent step, for each of the run's starts."""
    z = np.load(run / "q_record_100k.npz")
    repeat = 4  # every run here acts at action repeat 4: an agent step's reward sums 4 frames
    return [z["reward"][z["episode"] == e] / repeat for e in np.unique(z["episode"])]


def row(name: str, runs: list[str]) -> str:
    first_fall: list[int] = []
    down: list[float] = []
    moving: list[float] = []
    falls: list[int] = []
    for run in runs:
        for per_frame in episodes(HERE / run):
            is_down = per_frame < DOWN
            first_fall.append(int(np.argmax(is_down)) if is_down.any() else len(per_frame))
            down.append(float(is_down.mean()))
            moving.append(float((per_frame > MOVING).mean()))
            count, was_moving = 0, False
            for v in per_frame:
                if v > MOVING:
                    was_moving = True
                elif v < DOWN and was_moving:
                    count, was_moving = count + 1, False
            falls.append(count)
    early = np.mean(np.asarray(first_fall) < EARLY)
    return (f"| {name} | {len(first_fall)} | {np.median(first_fall):.0f} | {early:.0%} | {np.mean(down):.0%} | "
            f"{np.mean(moving):.0%} | {np.mean(falls):.1f} |")


if __name__ == "__main__":
    print(f"| runs | starts | first fall: median agent step | starts down within {EARLY} steps | steps down | "
          "steps moving | falls after moving, per start |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in GROUPS.items():
        print(row(name, runs))
