"""Aggregating runs into table rows: group by the row axes, mean ± sample std over the seeds axis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from rsvlm.experiments.table.results import RunResult, TableError

DEFAULT_METRICS: tuple[str, ...] = ("F1", "Recall", "Precision", "OA", "IoU")
EXTRA_KEYS = ("runtime_s", "peak_memory_mb", "params_total", "params_trainable")


@dataclass
class Cell:
    """Statistics of one quantity over a row's finished runs (``mean``/``std`` are None when unknown)."""

    mean: Optional[float]
    std: Optional[float]
    n: int


@dataclass
class TableRow:
    """One variant: its row-axis labels, metric cells and run counts."""

    labels: dict[str, str]
    values: dict[str, Any]
    cells: dict[str, Cell]
    extras: dict[str, Cell]
    n_finished: int
    n_failed: int
    n_pending: int

    @property
    def n_runs(self) -> int:
        return self.n_finished + self.n_failed + self.n_pending

    @property
    def status(self) -> str:
        """``ok`` when every run finished, else e.g. ``1 failed, 2 pending``."""
        parts = [f"{n} {word}" for n, word in ((self.n_failed, "failed"), (self.n_pending, "pending")) if n]
        return ", ".join(parts) if parts else "ok"

    @property
    def empty_word(self) -> str:
        """What a metric cell says when no run of the row finished."""
        return "failed" if self.n_failed else "pending"


@dataclass
class Table:
    """An aggregated table; formatting choices travel with it."""

    row_axes: list[str]
    metrics: list[str]
    rows: list[TableRow]
    seeds_axis: Optional[str] = None
    percent: bool = True
    extra: bool = True
    title: str = ""
    #: How the finished runs averaged their scores (``metric_average`` of their records):
    #: ``"global"``, ``"image"``, several joined by " / ", or None when no run recorded it.
    averaging: Optional[str] = None


def metric_key(metrics: dict[str, Any], name: str) -> Optional[str]:
    """The key of ``metrics`` that holds column ``name`` (see the module docstring), or None."""
    for key in (name, f"test/{name}"):
        if key in metrics:
            return key
    lowered = name.lower()
    for key in metrics:
        if key.rsplit("/", 1)[-1].lower() == lowered:
            return key
    return None


def _cell(values: list[float]) -> Cell:
    if not values:
        return Cell(None, None, 0)
    array = np.asarray(values, dtype=float)
    std = float(np.std(array, ddof=1)) if array.size > 1 else None
    return Cell(float(np.mean(array)), std, int(array.size))


def aggregate(
    results: Sequence[RunResult],
    rows: Optional[Sequence[str]] = None,
    seeds_axis: Optional[str] = None,
    metrics: Optional[Sequence[str]] = None,
) -> Table:
    """Group runs by the ``rows`` axes and average over ``seeds_axis``.

    Args:
        results: runs from :func:`collect`, in grid order.
        rows: row axes (default: every axis but the seeds axis).
        seeds_axis: the axis averaged over (None: every group must hold one run).
        metrics: metric columns (default ``F1, Recall, Precision, OA, IoU``).

    Raises:
        TableError: unknown axes; an axis that varies but is neither a row nor the seeds axis
            (its runs would be averaged together silently); a metric no finished run reports.
    """
    metrics = list(metrics or DEFAULT_METRICS)
    axes: list[str] = []
    label_order: dict[str, dict[str, int]] = {}
    for result in results:
        for axis, label in result.labels.items():
            if axis not in label_order:
                axes.append(axis)
                label_order[axis] = {}
            label_order[axis].setdefault(label, len(label_order[axis]))
    if seeds_axis is not None and seeds_axis not in label_order:
        raise TableError(f"seeds axis {seeds_axis!r} is not an axis of the sweep; axes: {axes}")
    rows = [a for a in axes if a != seeds_axis] if rows is None else list(rows)
    unknown = [a for a in rows if a not in label_order]
    if unknown:
        raise TableError(f"row axes {unknown} are not axes of the sweep; axes: {axes}")
    if seeds_axis in rows:
        raise TableError(f"axis {seeds_axis!r} is the seeds axis; it cannot also be a row axis")
    mixed = [a for a in axes if a not in rows and a != seeds_axis and len(label_order[a]) > 1]
    if mixed:
        raise TableError(
            f"axes {mixed} vary across runs but are neither row axes {rows} nor the seeds axis "
            f"{seeds_axis!r}; add them to the rows (--rows) so their runs are not averaged together"
        )

    finished = [r for r in results if r.status == "finished"]
    for name in metrics:
        if finished and not any(metric_key(r.metrics, name) for r in finished):
            available = sorted(finished[0].metrics)
            raise TableError(f"metric {name!r} is in no finished run's metrics.json; {finished[0].dir} has {available}")

    groups: dict[tuple[str, ...], list[RunResult]] = {}
    for result in results:
        groups.setdefault(tuple(result.labels.get(a, "") for a in rows), []).append(result)
    ordered = sorted(groups, key=lambda key: tuple(label_order[a].get(lab, -1) for a, lab in zip(rows, key)))

    table_rows = []
    for key in ordered:
        members = groups[key]
        done = [r for r in members if r.status == "finished"]
        cells = {}
        for name in metrics:
            keys = [(r, metric_key(r.metrics, name)) for r in done]
            cells[name] = _cell([float(r.metrics[k]) for r, k in keys if k is not None and r.metrics[k] is not None])
        extras = {k: _cell([float(r.metrics[k]) for r in done if r.metrics.get(k) is not None]) for k in EXTRA_KEYS}
        table_rows.append(
            TableRow(
                labels=dict(zip(rows, key)),
                values={a: members[0].values.get(a) for a in rows},
                cells=cells,
                extras=extras,
                n_finished=len(done),
                n_failed=sum(r.status == "failed" for r in members),
                n_pending=sum(r.status == "pending" for r in members),
            )
        )
    averages = sorted({str(r.metrics["metric_average"]) for r in results if r.metrics.get("metric_average")})
    return Table(
        row_axes=rows,
        metrics=metrics,
        rows=table_rows,
        seeds_axis=seeds_axis,
        averaging=" / ".join(averages) if averages else None,
    )
