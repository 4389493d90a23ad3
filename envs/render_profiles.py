"""Render profiles: EnvPool's dm_control assets as shipped, or a fast copy for CPU rendering.

EnvPool has no switch for shadows, reflections or anti-aliasing. On Mesa llvmpipe they cost
most of the ~40 ms a frame takes, so ``fast`` points EnvPool's ``base_path`` at a generated
copy of the assets with them turned off (about 6x faster). Images differ visibly: a policy
must be evaluated with the profile it was trained on.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from envs.errors import ConfigError

PROFILES = ("standard", "fast")
_DMC_SUBDIR = Path("mujoco") / "assets_dmc"
# Edits applied to the copied assets, keyed by file relative to assets_dmc.
_PATCHES: dict[str, list[tuple[str, str]]] = {
    "common/visual.xml": [(r"<quality[^>]*/>", '<quality shadowsize="0" offsamples="0"/>')],
    "common/materials.xml": [(r'reflectance="[^"]*"', 'reflectance="0"')],
}


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "pixel_ddpg" / "assets"


def base_path(profile: str, standard_base: str) -> str:
    """EnvPool ``base_path`` for a profile; builds the fast copy once and caches it."""
    if profile not in PROFILES:
        raise ConfigError(f"render={profile!r} is not a render profile; choose one of {list(PROFILES)}")
    if profile == "standard":
        return standard_base
    src = Path(standard_base) / _DMC_SUBDIR
    digest = hashlib.sha1((str(src.resolve()) + repr(_PATCHES)).encode()).hexdigest()[:12]
    root = _cache_root() / f"fast-{digest}"
    if (root / _DMC_SUBDIR / "common" / "visual.xml").exists():
        return str(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fast-", dir=root.parent))
    try:
        dst = tmp / _DMC_SUBDIR
        dst.mkdir(parents=True)
        # Model files are linked, not copied: MuJoCo resolves includes against the path it
        # was given, so the patched common/ in this folder is the one it reads.
        for entry in src.iterdir():
            if entry.name != "common":
                (dst / entry.name).symlink_to(entry.resolve())
        shutil.copytree(src / "common", dst / "common")
        for rel, edits in _PATCHES.items():
            path = dst / rel
            text = path.read_text()
            for pattern, repl in edits:
                text, count = re.subn(pattern, repl, text)
                if count == 0:
                    raise RuntimeError(f"fast render profile: {pattern!r} not found in {path}")
            path.write_text(text)
        try:
            tmp.rename(root)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(root)
