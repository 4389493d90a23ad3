"""`python -m pixel_ddpg.plot`: learning curves from eval.csv, seeds grouped, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixel_ddpg.errors import UserError
from pixel_ddpg.figures import DPI, FIGSIZE, group_labels
from pixel_ddpg.plot import _seed_band, plot_runs
from pixel_ddpg.rundir import load_run
from tests.conftest import HEADER, make_run, ROOT

SIZE = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))


def plot(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixel_ddpg.plot", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    seeds = [
        make_run(tmp_path / "multirun" / f"cheetah-pixels-seed{s}", [0, 10000, 20000, 30000],
                 [0, 100 + s, 200 + 2 * s, 300], seed=s)
        for s in range(3)
    ]
    other = make_run(tmp_path / "walker-state" / "2026-01-01_00-00-00", [0, 15000, 30000], [0, 50, 80],
                     env="walker", obs="state", seed=0)
    return [*seeds, other]


def test_cli_writes_png_of_seed_group_and_single_run(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "figs" / "curve.png"
    proc = plot(*runs, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == SIZE
    assert [p.name for p in out.parent.iterdir()] == ["curve.png"]  # no temp file left


@pytest.mark.parametrize("label_by", ["seed", "dir"])
def test_every_run_on_its_own(runs: list[Path], tmp_path: Path, label_by: str) -> None:
    out = plot_runs(runs, tmp_path / f"{label_by}.png", label_by=label_by, title="t")
    with Image.open(out) as image:
        assert image.size == SIZE


def test_seeds_share_a_group_and_other_configs_do_not(runs: list[Path], tmp_path: Path) -> None:
    loaded = [load_run(r) for r in runs]
    assert len({r.group for r in loaded[:3]}) == 1  # differ only in seed (and total_frames)
    assert loaded[3].group != loaded[0].group
    assert [r.seed for r in loaded] == [0, 1, 2, 0]
    assert loaded[0].label == "cheetah pixels" and loaded[3].label == "walker state"
    # a different learning rate is a different config
    lr = load_run(make_run(tmp_path / "lr", [0, 10000], [0, 1], seed=0, lr=3e-4))
    assert lr.group != loaded[0].group


def test_label_by_name_makes_seeds_of_one_name_one_band_whatever_their_configs(tmp_path: Path) -> None:
    # seeds run by two versions of the code: the configs differ (here in lr), the names say what they are
    old = make_run(tmp_path / "cup-pen1-seed1", [0, 10, 20], [0, 10, 20], seed=1)
    new = make_run(tmp_path / "cup-pen1-seed2", [0, 10, 20], [0, 30, 40], seed=2, lr=3e-4)
    other = make_run(tmp_path / "cup-seed1", [0, 10, 20], [0, 5, 5], seed=1, nstep=3)
    by_config = [load_run(p) for p in (old, new, other)]
    assert len({r.group for r in by_config}) == 3
    by_name = [load_run(p, by_name=True) for p in (old, new, other)]
    assert by_name[0].group == by_name[1].group != by_name[2].group
    assert [r.label for r in by_name] == ["cup-pen1", "cup-pen1", "cup"]
    assert [r.seed for r in by_name] == [1, 2, 1]
    out = plot_runs([old, new, other], tmp_path / "name.png", label_by="name")
    assert out.is_file()
    with pytest.raises(UserError, match="<name>-seed<N>"):
        plot_runs([old, make_run(tmp_path / "no-suffix", [0, 10], [0, 1], seed=0)], tmp_path / "x.png", label_by="name")
    assert not (tmp_path / "x.png").exists()


def test_ablations_are_named_by_what_they_change_from_the_group_with_most_seeds(tmp_path: Path) -> None:
    base = [load_run(make_run(tmp_path / f"b{s}", [0, 10], [0, 1], seed=s, agent="mine", nstep=3)) for s in range(3)]
    one_off = load_run(make_run(tmp_path / "n1", [0, 10], [0, 1], agent="mine", nstep=1, lr=3e-4))
    paper = load_run(make_run(tmp_path / "p", [0, 10], [0, 1], agent="ddpg", nstep=1, lr=3e-4))
    groups = {base[0].group: base, one_off.group: [one_off], paper.group: [paper]}
    labels = group_labels(groups)
    assert labels[base[0].group] == "cheetah pixels"
    assert labels[one_off.group] == "cheetah pixels (agent.lr=0.0003, agent.nstep=1)"
    assert labels[paper.group] == "cheetah pixels (agent.name=ddpg)"  # a preset is named, not its settings


def test_seed_band_is_mean_and_min_max_on_common_frames(tmp_path: Path) -> None:
    a = load_run(make_run(tmp_path / "a", [0, 10, 20], [0, 10, 20], seed=0))
    b = load_run(make_run(tmp_path / "b", [0, 5, 15, 30], [0, 20, 40, 60], seed=1))
    grid, mean, low, high = _seed_band([a, b])
    np.testing.assert_array_equal(grid, [0, 5, 10, 15, 20])  # stops where the shorter seed stopped
    b_at = np.interp(grid, [0, 5, 15, 30], [0, 20, 40, 60])
    np.testing.assert_allclose(mean, (grid + b_at) / 2)
    np.testing.assert_allclose(low, np.minimum(grid, b_at))
    np.testing.assert_allclose(high, np.maximum(grid, b_at))


def test_dirs_without_config_group_by_name(tmp_path: Path) -> None:
    s0 = load_run(make_run(tmp_path / "m" / "reacher-pixels-seed0", [0, 10], [0, 1], seed=None))
    s1 = load_run(make_run(tmp_path / "m" / "reacher-pixels-seed1", [0, 10], [0, 2], seed=None))
    single = load_run(make_run(tmp_path / "finger-pixels" / "2026-01-01", [0, 10], [0, 2], seed=None))
    assert s0.group == s1.group and (s0.seed, s1.seed) == (0, 1)
    assert s0.label == "reacher-pixels" and single.label == "finger-pixels"
    assert single.group != s0.group


def test_missing_std_is_a_zero_band(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", [0, 10], [1, 2], std="")
    assert (load_run(run).std == 0).all()
    assert plot_runs([run], tmp_path / "c.png").stat().st_size > 0


def _one_error_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_dir_without_eval_csv(tmp_path: Path) -> None:
    (tmp_path / "empty_run").mkdir()
    _one_error_line(plot(tmp_path / "empty_run", "--out", tmp_path / "c.png"), "no eval.csv")
    _one_error_line(plot(tmp_path / "nowhere", "--out", tmp_path / "c.png"), "does not exist")
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", ("empty",)),
        (HEADER, ("no evaluation rows",)),
        ("step,wall_s\n1,2\n", ("lacks", "frame")),
        (HEADER + "abc,1,2,3,4,5,6\n", ("line 2", "frame", "not a number")),
        (HEADER + "0,0,,1,1,1,1\n", ("no value for return_mean",)),
        (b"\xff\xfe\x00garbage".decode("latin-1"), ("cannot read",)),
    ],
)
def test_empty_or_corrupt_csv(tmp_path: Path, content: str, words: tuple[str, ...]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.csv").write_bytes(content.encode("latin-1"))
    _one_error_line(plot(run, "--out", tmp_path / "c.png"), *words)
    with pytest.raises(UserError):
        plot_runs([run], tmp_path / "c.png")


def test_unwritable_out(runs: list[Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _one_error_line(plot(runs[0], "--out", blocker / "c.png"), "cannot write")
    _one_error_line(plot(runs[0], "--out", tmp_path / "c.nope"), "unknown image type")


def test_usage_errors_are_one_line() -> None:
    _one_error_line(plot())
    _one_error_line(plot("x", "--label-by", "colour"), "label-by")


def test_reference_lines_are_drawn_and_bad_ones_refused(runs: list[Path], tmp_path: Path) -> None:
    plain, marked = tmp_path / "plain.png", tmp_path / "marked.png"
    assert plot(runs[0], "--out", plain).returncode == 0
    proc = plot(runs[0], "--out", marked, "--reference", "random policy=150", "--reference", "zero action=-20.5")
    assert proc.returncode == 0, proc.stderr
    with Image.open(plain) as a, Image.open(marked) as b:
        assert a.size == b.size and a.tobytes() != b.tobytes()
    for bad in ("random", "=3", "random=abc", "random=nan"):
        _one_error_line(plot(runs[0], "--out", tmp_path / "x.png", "--reference", bad), "LABEL=RETURN")
    assert not (tmp_path / "x.png").exists()


def test_subcommands_sit_beside_the_plain_run_dir_form(runs: list[Path], tmp_path: Path) -> None:
    proc = plot("curves", runs[0], "--out", tmp_path / "c.png")
    assert proc.returncode == 0 and (tmp_path / "c.png").stat().st_size > 0, proc.stderr
    _one_error_line(plot("q", tmp_path / "no_eval", "--out", tmp_path / "q.png"), "q_record.npz", "does not exist")
    _one_error_line(plot("q", runs[0], "--returns", "imagined"), "--returns")
