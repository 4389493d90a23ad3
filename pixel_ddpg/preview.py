"""`python -m pixel_ddpg.preview env=cheetah obs=pixels out=preview.png`.

A picture of exactly what the agent sees (every frame of the observation stack, enlarged
without smoothing) so a person can check camera, crop and stacking at a glance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F
from torchvision.utils import make_grid

from envs import EnvSettings, make_env
from pixel_ddpg.config import cli
from pixel_ddpg.errors import ConfigError


def obs_grid(obs: np.ndarray, scale: int, padding: int = 2) -> np.ndarray:
    """Tile the RGB frames of one (C, H, W) uint8 observation left to right, oldest first,
    enlarged ``scale`` times with nearest-neighbour; returns (H', W', 3) uint8."""
    if obs.ndim != 3 or obs.shape[0] % 3:
        raise ValueError(f"expected a (3k, H, W) pixel observation, got shape {obs.shape}")
    frames = torch.from_numpy(np.ascontiguousarray(obs)).reshape(-1, 3, *obs.shape[1:])
    if scale > 1:
        size = [obs.shape[1] * scale, obs.shape[2] * scale]
        frames = F.resize(frames, size, interpolation=InterpolationMode.NEAREST, antialias=False)
    grid = make_grid(frames, nrow=len(frames), padding=padding * max(scale, 1), pad_value=255)
    return grid.permute(1, 2, 0).contiguous().numpy()


def preview(cfg: DictConfig) -> Path:
    """Step one env a few random steps and save its observation as a PNG."""
    from PIL import Image

    settings = EnvSettings.from_config(cfg)
    if not settings.pixels:
        raise ConfigError(f"obs={cfg.obs.type} has no pixels to preview; use obs=pixels or obs=pixels_drqv2")
    if int(cfg.scale) < 1 or int(cfg.steps) < 0:
        raise ConfigError(f"scale={cfg.scale} must be ≥ 1 and steps={cfg.steps} ≥ 0")
    out = Path(str(cfg.out))
    rng = np.random.default_rng(settings.seed)
    with make_env(settings) as env:
        step = env.reset()
        for _ in range(int(cfg.steps)):
            step = env.step(env.spec.random_actions(rng))
        image = obs_grid(step.obs[0], int(cfg.scale))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out)
    k = env.spec.obs_shape[0] // 3
    print(f"wrote {out}: {k} frames of {settings.image_size}x{settings.image_size} from {settings.task_id} "
          f"(camera {settings.camera_id}, render={settings.render}), enlarged {cfg.scale}x")
    return out


main = cli(preview, config_name="preview")

if __name__ == "__main__":
    main()
