"""Where a run or a checkpoint came from: package versions and, from a clone, the git commit.

Saved in every checkpoint and in a run's ``config.yaml`` so that a result can be traced to the
code that made it; ``evaluate`` warns when the installed versions differ from the saved ones
(a policy can score differently under another MuJoCo or EnvPool).
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pixel_ddpg

# Distributions whose versions can change what a saved policy does or how it loads.
PACKAGES = ("torch", "envpool", "mujoco")
SOURCE_DIR = Path(pixel_ddpg.__file__).resolve().parent.parent  # the clone's root, or site-packages


def _version(dist: str) -> str | None:
    if dist == "torch":  # with its build tag (+cpu, +cu128...), which the dist metadata may lack
        import torch

        return str(torch.__version__)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # no git installed, or a stuck filesystem
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit of the clone pixel_ddpg runs from; nothing when installed from a wheel (even one
    installed into a venv that happens to sit inside some other git repository)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != SOURCE_DIR:
        return {"git_commit": None, "git_dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


@functools.lru_cache(maxsize=1)
def current() -> dict[str, Any]:
    """This process's provenance, as plain strings (it is saved in checkpoints): computed once."""
    return {"pixel_ddpg": str(pixel_ddpg.__version__), **git_state(), **{p: _version(p) for p in PACKAGES}}


def version_mismatches(saved: dict[str, Any] | None, now: dict[str, Any] | None = None) -> list[str]:
    """``name saved -> installed`` for each package version that differs; nothing when unrecorded."""
    now = current() if now is None else now
    if not saved:
        return []
    return [f"{name} {saved[name]} -> {now.get(name)}" for name in ("pixel_ddpg", *PACKAGES)
            if saved.get(name) is not None and saved[name] != now.get(name)]


def mismatch_warning(saved: dict[str, Any] | None, what: str) -> str | None:
    """One line for the user, or None when the installed versions are the saved ones."""
    diffs = version_mismatches(saved)
    if not diffs:
        return None
    return f"warning: {what} was made with other versions ({', '.join(diffs)} installed); results may differ"
