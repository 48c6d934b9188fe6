"""A PNG line plot of one metric against one sweep axis, with std error bars."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from rsvlm.experiments.table.results import RunResult, TableError
from rsvlm.experiments.table.stats import TableRow, aggregate


def _as_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plot(
    results: Sequence[RunResult],
    x: str,
    y: str,
    path: str | os.PathLike[str],
    rows: Optional[Sequence[str]] = None,
    seeds_axis: Optional[str] = None,
    percent: bool = True,
    title: str = "",
) -> Path:
    """PNG line plot of metric ``y`` against axis ``x``, std error bars, one line per other row-axis combination.

    ``x`` is numeric when every value of the axis is a number, else categorical in grid order.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    all_axes = list(dict.fromkeys(a for r in results for a in r.labels))
    if x not in all_axes:
        raise TableError(f"--plot: x axis {x!r} is not an axis of the sweep; axes: {all_axes}")
    line_axes = [a for a in (rows if rows is not None else all_axes) if a not in (x, seeds_axis)]
    table = aggregate(results, rows=line_axes + [x], seeds_axis=seeds_axis, metrics=[y])
    xs_raw = [row.values[x] for row in table.rows]
    numeric = all(_as_number(v) is not None for v in xs_raw)
    categories = list(dict.fromkeys(row.labels[x] for row in table.rows))
    scale = 100.0 if percent else 1.0

    figure = Figure(figsize=(5.0, 3.5), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    lines: dict[tuple[str, ...], list[TableRow]] = {}
    for row in table.rows:
        lines.setdefault(tuple(row.labels[a] for a in line_axes), []).append(row)
    for key, members in lines.items():
        points = [(r, r.cells[y]) for r in members if r.cells[y].n > 0]
        if not points:
            continue
        xs = [_as_number(r.values[x]) if numeric else categories.index(r.labels[x]) for r, _ in points]
        means = [c.mean * scale for _, c in points]
        errs = [(c.std or 0.0) * scale for _, c in points]
        label = ", ".join(f"{a}={v}" for a, v in zip(line_axes, key)) or None
        ax.errorbar(xs, means, yerr=errs, marker="o", capsize=3, label=label)
    if not numeric:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (%)" if percent else y)
    if title:
        ax.set_title(title)
    if line_axes:
        ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    figure.tight_layout()
    from rsvlm.io.pictures import save_figure

    # A table's plot is regenerated from the runs, so a newer one replaces the old.
    return save_figure(path, figure, overwrite=True)
