"""`python -m pixel_ddpg.export checkpoint=<run dir or file> out=policy.pt2`: a policy that leaves the trainer.

Writes the encoder and the actor as one ``torch.export`` program: a batch of observations as the
env gives them (uint8 ``(N, C, H, W)`` pixels, or float32 ``(N, D)`` state) → actions within the
env's bounds, deterministic (no noise, batch-norm running statistics), fp32. Its metadata
(``pixel_ddpg.json`` in the archive) holds the observation spec, the action bounds, the training
config and provenance, so the file alone says what it expects. Loading it needs torch only::

    extra = {"pixel_ddpg.json": ""}
    policy = torch.export.load("policy.pt2", extra_files=extra).module()
    actions = policy(torch.as_tensor(obs_uint8))          # (N, action_dim) float32

With the ``onnx`` extra installed (``pip install 'pixel_ddpg[onnx]'``) it also writes ``policy.onnx``.
``python -m pixel_ddpg.evaluate checkpoint=policy.pt2`` runs the exported file in its env.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pixel_ddpg import checkpoint as ckpt_io
from pixel_ddpg import provenance, rundir
from pixel_ddpg.config import cli
from pixel_ddpg.errors import UserError
from pixel_ddpg.rollout import chosen_networks, uses_target

META_FILE = "pixel_ddpg.json"
FORMAT = "pixel_ddpg.policy"
VERSION = 1
MAX_BATCH = 65536  # the exported program's dynamic batch dimension runs 1..MAX_BATCH


class ExportedPolicy(nn.Module):
    """μ(s) of a trained agent as one module: the encoder (uint8 → float inside, as when
    training) and the actor (tanh scaled to the bounds)."""

    def __init__(self, encoder: nn.Module, actor: nn.Module) -> None:
        super().__init__()
        self.encoder, self.actor = encoder, actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.encoder(obs).float())


def _policy_module(ckpt: dict[str, Any], target: bool = False
                   ) -> tuple[ExportedPolicy, Any, DictConfig, dict[str, Any]]:
    """The checkpoint's online (or target) encoder and actor on the CPU, in eval mode, fp32; with
    the env spec and config they were trained with."""
    from envs import EnvSettings, make_env
    from pixel_ddpg.agent import make_agent
    from pixel_ddpg.device import resolve_precision

    train_cfg = ckpt_io.checkpoint_config(ckpt)
    settings = EnvSettings.from_config(train_cfg, num_envs=1)
    with make_env(settings) as env:  # the spec (shapes, bounds) exactly as training saw it
        spec = env.spec
    env_sig = ckpt_io.env_signature(settings, spec)
    precision = resolve_precision("cpu", "false", "bfloat16", "false")
    agent = make_agent(train_cfg.agent, spec, precision, int(train_cfg.seed))
    ckpt_io.restore_agent(agent, ckpt, env_sig)
    module = ExportedPolicy(*agent.policy_networks(target)).eval().requires_grad_(False)
    # Plain (NCHW) weights: torch.export.save groups channels-last weights badly (it warns "No
    # complete tensor found"); the input still goes channels-last inside the encoder, as in training.
    module = module.to(memory_format=torch.contiguous_format)
    return module, spec, train_cfg, env_sig


def metadata(ckpt: dict[str, Any], spec: Any, train_cfg: DictConfig, env_sig: dict[str, Any],
             networks: str = "online") -> dict[str, Any]:
    """What a user of the file needs to feed it and trust it: observation spec, action bounds,
    the env and config it was trained on, and where it came from."""
    pixels = bool(spec.pixels)
    obs = {"shape": [int(x) for x in spec.obs_shape], "dtype": "uint8" if pixels else "float32",
           "batch_dim": 0, "frame_stack": int(spec.frame_stack), "action_repeat": int(spec.action_repeat)}
    if pixels:
        obs["layout"] = (f"(N, C, H, W): {spec.frame_stack} stacked frames of {spec.frame_shape[0]} channels "
                         "(RGB renders), oldest first; the policy scales to float itself")
    return {
        "format": FORMAT, "version": VERSION,
        "observation": obs,
        "action": {"dim": int(spec.action_dim), "low": [float(x) for x in spec.action_low],
                   "high": [float(x) for x in spec.action_high], "dtype": "float32"},
        "env": {"name": str(train_cfg.env.name), "task_id": str(train_cfg.env.task_id), "obs": str(train_cfg.obs.type),
                "render": str(train_cfg.render), "camera_id": int(train_cfg.env.camera_id)},
        "env_signature": env_sig,
        "checkpoint": str(ckpt["path"]), "checkpoint_frame": int(ckpt["counters"]["frame"]),
        "networks": networks,
        "config": OmegaConf.to_container(train_cfg, resolve=True),
        "provenance": ckpt.get("provenance"),
        "exported_with": provenance.current(),
    }


def export_program(module: ExportedPolicy, spec: Any) -> torch.export.ExportedProgram:
    """The module as a torch.export program with a dynamic batch dimension."""
    dtype = torch.uint8 if spec.pixels else torch.float32
    example = torch.zeros(2, *spec.obs_shape, dtype=dtype)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes={"obs": {0: batch}})


def write_onnx(module: ExportedPolicy, spec: Any, out: Path) -> Path:
    """``out`` as ONNX (opset of torch's dynamo exporter), the same batch-in, actions-out graph."""
    dtype = torch.uint8 if spec.pixels else torch.float32
    example = torch.zeros(2, *spec.obs_shape, dtype=dtype)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["obs"], output_names=["action"],
                                    dynamic_shapes={"obs": {0: batch}}, verbose=False)
    buffer = io.BytesIO()
    program.save(buffer)  # type: ignore[union-attr]
    rundir.write_bytes_atomic(buffer.getvalue(), out)
    return out


def onnx_available() -> bool:
    """Whether the ``onnx`` extra (onnx + onnxscript, which torch's exporter needs) is installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxscript"))


def is_exported(path: str | Path) -> bool:
    """Whether ``path`` is a file this module wrote (a torch.export archive with our metadata)."""
    p = Path(path).expanduser()
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return any(n.endswith(f"extra/{META_FILE}") for n in z.namelist())


def load_exported(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The exported policy (a callable module on the CPU) and its metadata."""
    p = Path(path).expanduser()
    extra = {META_FILE: ""}
    try:
        program = torch.export.load(str(p), extra_files=extra)
        meta = json.loads(extra[META_FILE])
    except (RuntimeError, ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{p} is not a readable exported pixel_ddpg policy ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{p} is not an exported pixel_ddpg policy (no {FORMAT} metadata)")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise UserError(f"{p} has exported-policy version {meta.get('version')}; this pixel_ddpg reads up to {VERSION}")
    return program.module(), meta


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the checkpoint ``cfg.checkpoint`` to ``cfg.out`` (and ONNX beside it, per ``cfg.onnx``)."""
    onnx = str(cfg.onnx).lower()
    if onnx not in ("auto", "true", "false"):
        raise UserError(f"onnx={cfg.onnx} must be auto, true or false")
    if onnx == "true" and not onnx_available():
        raise UserError("onnx=true needs the onnx extra: pip install 'pixel_ddpg[onnx]' (onnx and onnxscript)")
    out = Path(str(cfg.out)).expanduser()
    if out.suffix != ".pt2":
        raise UserError(f"out={out} must end in .pt2 (torch.export's archive)")
    if cfg.networks is not None:
        uses_target(cfg.networks, "networks")  # a bad value fails before the checkpoint loads
    ckpt = ckpt_io.load(cfg.checkpoint)
    networks, target = chosen_networks(cfg.networks, ckpt_io.checkpoint_config(ckpt))
    module, spec, train_cfg, env_sig = _policy_module(ckpt, target)
    meta = metadata(ckpt, spec, train_cfg, env_sig, networks)
    program = export_program(module, spec)
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={META_FILE: json.dumps(meta)})
    out.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_bytes_atomic(buffer.getvalue(), out)
    written = [out]
    if onnx == "true" or (onnx == "auto" and onnx_available()):
        written.append(write_onnx(module, spec, out.with_suffix(".onnx")))
    elif onnx == "auto":
        print("no ONNX file: the onnx extra is not installed (pip install 'pixel_ddpg[onnx]')")
    shape = "x".join(str(d) for d in spec.obs_shape)
    print(f"wrote {', '.join(str(p) for p in written)}: ({'N'}, {shape}) {meta['observation']['dtype']} → (N, "
          f"{spec.action_dim}) actions in [{np.min(spec.action_low):g}, {np.max(spec.action_high):g}]; "
          f"{meta['env']['task_id']} at frame {meta['checkpoint_frame']:,}")
    return {"out": [str(p) for p in written], "meta": meta}


main = cli(export, config_name="export")

if __name__ == "__main__":
    main()
