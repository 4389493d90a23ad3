"""Checkpoints: written atomically, read with clear errors, checked against the config.

A checkpoint is a dict saved with ``torch.save``: format tag and version, the resolved config,
the env and agent signatures, agent state, counters, RNG states and optionally the replay.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pixel_ddpg.config import UserError

FORMAT = "pixel_ddpg.checkpoint"
VERSION = 1
CKPT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"

# Config keys a resumed run may change; everything else must match the checkpoint.
RESUMABLE_KEYS = ("total_frames", "device", "compile", "amp", "amp_dtype", "num_threads", "torch_threads", "log", "eval",
                  "checkpoint", "resume", "async_env", "replay.save_in_checkpoint")


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run dir's ``checkpoints/last.pt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / CKPT_DIR / LAST, p / LAST):
            if candidate.is_file():
                return candidate
        raise UserError(f"{p} is a folder with no {CKPT_DIR}/{LAST}; point at a run dir or a checkpoint file")
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist")
    return p


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == CKPT_DIR else checkpoint.parent


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; every failure is one clear UserError."""
    p = find_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError,
            AttributeError, ModuleNotFoundError) as exc:
        raise UserError(f"{p} is not a readable pixel_ddpg checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{p} is not a pixel_ddpg checkpoint")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{p} has checkpoint format version {version}; this pixel_ddpg reads up to {VERSION}: upgrade it")
    ckpt["path"] = p
    return ckpt


def checkpoint_config(ckpt: dict[str, Any]) -> DictConfig:
    return OmegaConf.create(ckpt["config"])


def _explicit_keys(overrides: list[str]) -> list[str]:
    keys = []
    for item in overrides:
        key, sep, _ = item.partition("=")
        key = key.lstrip("+~")
        if sep and not key.startswith("hydra"):
            keys.append(key)
    return keys


def merge_for_resume(ckpt_cfg: DictConfig, cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's config, with the user's explicit overrides where a resume may change them.

    An explicit override that changes anything else (env, obs, network, seed...) is refused:
    that would be another experiment, not this run continued.
    """
    merged = ckpt_cfg.copy()
    for key in _explicit_keys(overrides):
        new, old = OmegaConf.select(cfg, key), OmegaConf.select(ckpt_cfg, key)
        if key == "resume":
            continue
        if any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS):
            OmegaConf.update(merged, key, new, force_add=True)
        elif new != old:
            show = lambda v: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v  # noqa: E731
            raise UserError(f"cannot resume: the checkpoint was trained with {key}={show(old)}, this run asks for "
                            f"{key}={show(new)}; start a new run instead")
    merged.resume = cfg.resume
    return merged


def check_signature(name: str, saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose env or network does not match what this config builds."""
    if saved != current:
        diffs = [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}"
                 for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
        raise UserError(f"{path} was made with another {name} ({'; '.join(diffs)})")
