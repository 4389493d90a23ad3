"""README and CI stay true to each other."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_cmd = next(c for c in commands if "pytest" in c).split("&& ")[-1].strip()
    assert test_cmd == 'python -m pytest -m "not slow" -q'
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
