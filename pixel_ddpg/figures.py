"""What every figure command shares: an Agg figure checked against its output type, the one
way it is saved (whole or not at all), and the labels of groups of runs.

Used by :mod:`pixel_ddpg.plot` (curves, Q) and :mod:`pixel_ddpg.report` (aggregates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixel_ddpg.errors import UserError
from pixel_ddpg.rundir import Run, WriteError, write_atomic

FIGSIZE = (8.0, 5.0)  # inches
DPI = 100  # so the PNG is 800x500 pixels


def new_figure(out: Path, figsize: tuple[float, float] = FIGSIZE) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend switch), after
    checking that ``out``'s suffix is an image type Agg writes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    fmt = out.suffix.lstrip(".").lower() or "png"
    if fmt not in canvas.get_supported_filetypes():
        raise UserError(f"cannot write {out}: unknown image type {fmt!r}; use .png")
    return fig


def save_figure(fig: Any, out: Path) -> Path:
    """Write ``fig`` to ``out`` atomically (:func:`pixel_ddpg.rundir.write_atomic`): never half a PNG."""
    fmt = out.suffix.lstrip(".").lower() or "png"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {out}: folder {out.parent} cannot be created ({exc.strerror or exc})") from None
    try:
        return write_atomic(out, lambda f: fig.savefig(f, format=fmt))
    except WriteError as exc:
        raise UserError(f"cannot write {out}: {exc.reason}") from None


def _differences(config: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """``key=value`` for each key where ``config`` differs from ``base``; another agent preset is
    named once (``agent.name=ddpg``), not by every setting the presets differ in."""
    keys = sorted(set(config) | set(base))
    differing = [k for k in keys if repr(config.get(k)) != repr(base.get(k))]
    if "agent.name" in differing:
        differing = ["agent.name"] + [k for k in differing if not k.startswith("agent.")]
    return [f"{k}={config.get(k)}" for k in differing]


def group_labels(groups: dict[str, list[Run]]) -> dict[str, str]:
    """Group labels; groups sharing a label (same env and obs) are named by how their config
    differs from the group with the most seeds (at most 3 keys), which keeps the plain label."""
    labels = {g: runs[0].label for g, runs in groups.items()}
    by_label: dict[str, list[str]] = {}
    for g, label in labels.items():
        by_label.setdefault(label, []).append(g)
    for label, gs in by_label.items():
        if len(gs) < 2:
            continue
        base = max(gs, key=lambda g: len(groups[g]))  # the first of the largest groups
        base_config = groups[base][0].config or {}
        for g in gs:
            if g == base:
                continue
            extra = _differences(groups[g][0].config or {}, base_config)
            shown = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "")
            labels[g] = f"{label} ({shown})" if extra else f"{label} [{groups[g][0].path.parent.name}]"
    return labels


