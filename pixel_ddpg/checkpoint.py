"""Checkpoints: written atomically, read as data only, checked against the config.

A checkpoint is a dict saved with ``torch.save``: format tag and version, the resolved config,
the env and agent signatures, agent state, counters, RNG states, provenance and optionally the
replay. Everything in it is tensors, numbers, strings, lists, tuples and dicts, so it is read
with ``torch.load(weights_only=True)``: a shared ``.pt`` file can hold nothing that runs code
when it is loaded, and a file that asks to import anything is refused unread.

Format version 1 stored NumPy's RNG state as an ndarray (and torch's version as a TorchVersion);
``python -m pixel_ddpg.checkpoint convert OLD NEW`` rewrites such a file as version 2.
"""

from __future__ import annotations

import argparse
import os
import pickle
import pickletools
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from pixel_ddpg.config import fail
from pixel_ddpg.errors import USER_ERRORS, UserError
if TYPE_CHECKING:
    from envs import EnvSettings
    from pixel_ddpg.agent import DDPGAgent
from pixel_ddpg.rundir import CKPT_DIR, LAST, RUN_CONFIG, run_config_file, run_dir_of, write_atomic

FORMAT = "pixel_ddpg.checkpoint"
VERSION = 2

# Config keys a resumed run may change; everything else must match the checkpoint.
RESUMABLE_KEYS = ("total_frames", "device", "compile", "cuda_graphs", "amp", "amp_dtype", "num_threads", "torch_threads", "log", "eval",
                  "checkpoint", "resume", "async_env", "replay.save_in_checkpoint")

# What a version-1 file needs beyond plain data. Only ``convert`` allows these, and only while it reads.
_NP_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NP_DTYPES = tuple(type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32, np.bool_))
VERSION_1_GLOBALS = (_NP_RECONSTRUCT, np.ndarray, np.dtype, *_NP_DTYPES, torch.torch_version.TorchVersion)
_VERSION_1_NAMES = {f"{g.__module__}.{g.__name__}" for g in VERSION_1_GLOBALS}
CONVERT_COMMAND = "python -m pixel_ddpg.checkpoint convert"


def numpy_rng_to_data(state: tuple | dict[str, Any]) -> dict[str, Any]:
    """NumPy's global (MT19937) RNG state, from ``np.random.get_state()``, as plain values."""
    if isinstance(state, tuple):  # the legacy form: (name, key, pos, has_gauss, gauss)
        name, key, pos, has_gauss, gauss = state
        state = {"bit_generator": name, "state": {"key": key, "pos": pos}, "has_gauss": has_gauss, "gauss": gauss}
    return {"bit_generator": str(state["bit_generator"]),
            "state": {"key": [int(k) for k in state["state"]["key"]], "pos": int(state["state"]["pos"])},
            "has_gauss": int(state["has_gauss"]), "gauss": float(state["gauss"])}


def numpy_rng_from_data(data: dict[str, Any]) -> dict[str, Any]:
    """What ``np.random.set_state`` takes, from :func:`numpy_rng_to_data`'s plain values."""
    return {**data, "state": {"key": np.asarray(data["state"]["key"], dtype=np.uint32),
                              "pos": int(data["state"]["pos"])}}


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`pixel_ddpg.rundir.write_atomic`)."""
    write_atomic(path, lambda f: torch.save(obj, f))


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


def resume_source(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """What ``resume=path`` continues: its run dir and checkpoint. The checkpoint is None for a
    run dir whose run was killed before its first checkpoint (it holds the run's config): that
    run starts again from frame 0, so a kill at any moment leaves something to resume."""
    p = Path(path).expanduser()
    if (p.is_dir() and not any((p / c).is_file() for c in (Path(CKPT_DIR) / LAST, Path(LAST)))
            and run_config_file(p) is not None):
        return p.resolve(), None
    ckpt = find_checkpoint(p).resolve()
    return run_dir_of(ckpt), ckpt


def run_config(run_dir: Path) -> DictConfig:
    """The config of the run in ``run_dir`` that has no checkpoint (without its provenance block)."""
    path = run_config_file(run_dir)
    if path is None:
        raise UserError(f"{run_dir} holds no {RUN_CONFIG}; this run cannot be resumed")
    try:
        cfg = OmegaConf.load(path)
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path} is not readable ({exc}); this run cannot be resumed") from None
    if not isinstance(cfg, DictConfig) or any(k not in cfg for k in ("env", "obs", "agent", "total_frames")):
        raise UserError(f"{path} is not a pixel_ddpg run config; this run cannot be resumed")
    cfg.pop("provenance", None)
    return cfg


def _pickle_imports(path: Path) -> list[str] | None:
    """The globals a bare pickle file would import, read from its opcodes without running it
    (strings followed through the memo, where STACK_GLOBAL takes them from); None when it is no pickle."""
    names: list[str] = []
    strings: list[str] = []
    memo: dict[int, Any] = {}
    top: Any = None  # what the last opcode pushed, when it was a string
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "MEMOIZE":
                    memo[len(memo)] = top
                    continue
                if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = top
                    continue
                pushed = None
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]) if len(strings) >= 2 else "a global")
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed = memo.get(arg)
                elif isinstance(arg, str):
                    pushed = arg
                if isinstance(pushed, str):
                    strings.append(pushed)
                top = pushed
    except (ValueError, EOFError, OSError, UnicodeDecodeError):
        return None
    return sorted(set(names))


def unsafe_imports(path: Path) -> list[str] | None:
    """What loading ``path`` would import beyond plain data and tensors, found without loading it;
    None when that cannot be told (the file is not a torch archive or a pickle)."""
    if zipfile.is_zipfile(path):
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except (ValueError, RuntimeError, OSError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError):
            return None
    return _pickle_imports(path)


def _refusal(path: Path, exc: pickle.UnpicklingError | None) -> UserError:
    """Why ``path`` was not loaded, told from what it would import (read without running it).
    ``exc`` is the safe load's error; None when the file is no torch.save archive (never loaded)."""
    archive = exc is not None
    names = unsafe_imports(path)
    if archive and names and set(names) <= _VERSION_1_NAMES:
        return UserError(f"{path} holds NumPy arrays, as checkpoints of format version 1 did, which a safe load "
                         f"refuses; convert it once with `{CONVERT_COMMAND} {path} NEW.pt` (it reads only plain "
                         f"data and NumPy arrays) and use NEW.pt")
    if names:
        return UserError(f"{path} is not trusted data: loading it would import {', '.join(names)}, and a pixel_ddpg "
                         f"checkpoint holds only tensors, numbers, strings, lists and dicts; refused, nothing in it ran")
    if not archive:
        detail = "neither a torch archive nor a pickle" if names is None else "a bare pickle, not a torch.save archive"
    else:
        lines = [ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln]
        detail = lines[0] if lines else type(exc).__name__
    return UserError(f"{path} is not a readable pixel_ddpg checkpoint ({detail})")


def _read(p: Path, map_location: str | torch.device, allow: Sequence[Any] = ()) -> dict[str, Any]:
    """``torch.load(weights_only=True)``, with ``allow`` added to the allowed globals while it reads."""
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; anything else is never unpickled
        raise _refusal(p, None)
    try:
        with torch.serialization.safe_globals(list(allow)):
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(p, exc) from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError, ValueError, AttributeError, KeyError) as exc:
        raise UserError(f"{p} is not a readable pixel_ddpg checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{p} is not a pixel_ddpg checkpoint")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise UserError(f"{p} has checkpoint format version {version}; this pixel_ddpg reads up to {VERSION}: upgrade it")
    return upgrade(ckpt)


def upgrade(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of an older format version in the current layout (in place)."""
    if ckpt["version"] == 1:
        rng = ckpt.get("rng") or {}
        if "numpy" in rng:
            rng["numpy"] = numpy_rng_to_data(rng["numpy"])
        if "python" in rng:
            rng["python"] = tuple(rng["python"])
        torch_version = ckpt.pop("torch_version", None)
        ckpt.setdefault("provenance", {"torch": None if torch_version is None else str(torch_version)})
        ckpt["version"] = 2
    return ckpt


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint as data (no code in it runs) and validate it; every failure is one UserError."""
    p = find_checkpoint(path)
    ckpt = _read(p, map_location)
    ckpt["path"] = p
    return ckpt


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite a format-version-1 checkpoint as the current version. It reads with NumPy arrays
    (and torch's version string type) allowed besides plain data, nothing else: a crafted file
    is refused here as by :func:`load`."""
    p = find_checkpoint(src)
    ckpt = _read(p, "cpu", allow=VERSION_1_GLOBALS)
    out = Path(dst).expanduser()
    save_atomic(ckpt, out)
    return out


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


def env_signature(settings: EnvSettings, spec: Any) -> dict[str, Any]:
    """What a checkpoint's networks depend on in the env: refuse a checkpoint when it differs."""
    return {"task_id": settings.task_id, "obs_type": settings.obs_type, "obs_shape": list(spec.obs_shape),
            "action_dim": spec.action_dim, "action_repeat": settings.action_repeat,
            "frame_stack": settings.frame_stack, "render": settings.render, "camera_id": settings.camera_id}


def restore_agent(agent: DDPGAgent, ckpt: dict[str, Any], env_sig: dict[str, Any], *, generator: bool = True) -> None:
    """Load a checkpoint's agent into ``agent`` once its env and network signatures match what this
    config builds (a :class:`UserError` naming every difference otherwise). ``generator``: as
    :meth:`~pixel_ddpg.agent.DDPGAgent.load_state_dict` (False where no draws are made)."""
    path = ckpt["path"]
    check_signature("env", ckpt["env_signature"], env_sig, path)
    check_signature("network", ckpt["agent_signature"], agent.config_signature(), path)
    agent.load_state_dict(ckpt["agent"], generator=generator)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pixel_ddpg.checkpoint",
                                     description="Checkpoint tools. convert: rewrite an older checkpoint "
                                                 f"(format version 1) as format version {VERSION}.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help=f"rewrite OLD (format version 1) as NEW (format version {VERSION})")
    conv.add_argument("old", help="checkpoint file or run dir")
    conv.add_argument("new", help="file to write (may be OLD itself)")
    args = parser.parse_args(argv)
    try:
        out = convert(args.old, args.new)
    except USER_ERRORS as exc:
        fail(str(exc))
    print(f"wrote {out} (checkpoint format version {VERSION})")


if __name__ == "__main__":
    main()
