"""README and CI stay true to each other; the built wheel is a working install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(c for c in commands if "pytest" in c).split("&& ")[-1].strip()
    assert test_cmd == 'python -m pytest -m "not slow" -q -n 2'
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_readme_train_command_is_the_default_run():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e . && python -m pixel_ddpg.train env=cheetah obs=pixels" in readme


def test_ci_runs_the_learning_test_the_readme_describes():
    readme = (ROOT / "README.md").read_text()
    assert "`python -m pytest -m learning -q`" in readme
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "python -m pytest -m learning -q" in ci_lines


def build_wheel(dest: Path) -> Path:
    """The wheel `pip wheel .` makes from the repo's files (copied, so the build leaves no
    build/ or egg-info in the checkout)."""
    src = dest / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    for folder in ("pixel_ddpg", "envs", "conf"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(dest / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    return next((dest / "dist").glob("pixel_ddpg-*.whl"))


def venv_with_wheel(dest: Path, wheel: Path) -> Path:
    """A fresh venv holding only the wheel, that reuses this environment's installed dependencies.
    The dependencies' folders are added after the install (so pip never sees, let alone touches,
    the editable pixel_ddpg there) as plain paths (so its editable-install hook is not run)."""
    venv = dest / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    (Path(purelib) / "reuse_test_env.pth").write_text("\n".join(deps) + "\n")
    return python


@pytest.mark.slow  # 36 s (builds the wheel, then runs its commands), 2 shared cores
def test_the_wheel_carries_the_config_and_its_commands_compose_from_anywhere(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert conf and not [c for c in conf if f"pixel_ddpg/conf/{c}" not in names]
    code = sorted(p.relative_to(ROOT).as_posix() for d in ("pixel_ddpg", "envs") for p in (ROOT / d).rglob("*.py"))
    assert not [c for c in code if c not in names]

    python = venv_with_wheel(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args: str) -> str:
        proc = subprocess.run([str(python), *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    where = run("-c", "import pixel_ddpg, pixel_ddpg.config as c, pixel_ddpg.provenance as p; "
                      "print(pixel_ddpg.__file__); print(c.conf_dir()); print(p.current()['git_commit'])").split()
    site = python.parent.parent
    assert Path(where[0]).is_relative_to(site) and Path(where[1]).is_relative_to(site), where
    assert where[2] == "None"  # installed, not a clone: no commit to record
    assert "task_id: WalkerWalk-v1" in run("-m", "pixel_ddpg.train", "--cfg", "job", "env=walker")
    assert "episodes:" in run("-m", "pixel_ddpg.evaluate", "--cfg", "job", "checkpoint=x")
    assert "env:" in run("-m", "pixel_ddpg.benchmark", "--cfg", "job")
    assert "env:" in run("-m", "pixel_ddpg.preview", "--cfg", "job")
    assert not list(elsewhere.iterdir())
