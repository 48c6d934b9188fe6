"""Aggregating runs into table rows: group by the row axes, mean ± sample std over the seeds axis.

With a column-group axis (``groups``), each row holds one set of metric cells per label of that
axis (:attr:`TableRow.parts`): the SPEX paper's Tables II–VI side by side, one row per method
and one column group per dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    #: Column group label -> the row's cells over that group's runs (grouped tables only; a
    #: group without runs for this row is absent).
    parts: dict[str, TableRow] = field(default_factory=dict)
    #: Replaces the status text (e.g. for a row that is not made of runs, like the baseline).
    note: Optional[str] = None

    @property
    def n_runs(self) -> int:
        return self.n_finished + self.n_failed + self.n_pending

    @property
    def status(self) -> str:
        """``ok`` when every run finished, else e.g. ``1 failed, 2 pending``."""
        if self.note is not None:
            return self.note
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
    #: The axis whose labels make the column groups (None: one set of metric columns).
    group_axis: Optional[str] = None
    #: The column groups' labels, in sweep order.
    group_labels: list[str] = field(default_factory=list)
    #: What extra rows (e.g. the index baseline) are, for the caption.
    notes: list[str] = field(default_factory=list)


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


def _row(members: Sequence[RunResult], labels: dict[str, str], metrics: Sequence[str]) -> TableRow:
    """One row's cells and counts over its runs."""
    done = [r for r in members if r.status == "finished"]
    cells = {}
    for name in metrics:
        keys = [(r, metric_key(r.metrics, name)) for r in done]
        cells[name] = _cell([float(r.metrics[k]) for r, k in keys if k is not None and r.metrics[k] is not None])
    extras = {k: _cell([float(r.metrics[k]) for r in done if r.metrics.get(k) is not None]) for k in EXTRA_KEYS}
    return TableRow(
        labels=labels,
        values={a: members[0].values.get(a) for a in labels},
        cells=cells,
        extras=extras,
        n_finished=len(done),
        n_failed=sum(r.status == "failed" for r in members),
        n_pending=sum(r.status == "pending" for r in members),
    )


def aggregate(
    results: Sequence[RunResult],
    rows: Optional[Sequence[str]] = None,
    seeds_axis: Optional[str] = None,
    metrics: Optional[Sequence[str]] = None,
    groups: Optional[str] = None,
) -> Table:
    """Group runs by the ``rows`` axes and average over ``seeds_axis``.

    Args:
        results: runs from :func:`collect`, in grid order.
        rows: row axes (default: every axis but the seeds and the groups axis).
        seeds_axis: the axis averaged over (None: every group must hold one run).
        metrics: metric columns (default ``F1, Recall, Precision, OA, IoU``).
        groups: the axis whose labels become column groups, each with its own metric columns
            (e.g. the dataset axis of a per-subset sweep); None: no groups.

    Raises:
        TableError: unknown axes; an axis used twice (row, seeds, groups); an axis that varies
            but is none of them (its runs would be averaged together silently); a metric no
            finished run reports.
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
    if groups is not None and groups not in label_order:
        raise TableError(f"column-group axis {groups!r} is not an axis of the sweep; axes: {axes}")
    if groups is not None and groups == seeds_axis:
        raise TableError(f"axis {groups!r} is the seeds axis; it cannot also make the column groups")
    rows = [a for a in axes if a not in (seeds_axis, groups)] if rows is None else list(rows)
    unknown = [a for a in rows if a not in label_order]
    if unknown:
        raise TableError(f"row axes {unknown} are not axes of the sweep; axes: {axes}")
    for axis, role in ((seeds_axis, "the seeds axis"), (groups, "the column-group axis")):
        if axis is not None and axis in rows:
            raise TableError(f"axis {axis!r} is {role}; it cannot also be a row axis")
    mixed = [a for a in axes if a not in rows and a not in (seeds_axis, groups) and len(label_order[a]) > 1]
    if mixed:
        raise TableError(
            f"axes {mixed} vary across runs but are neither row axes {rows}, the seeds axis "
            f"{seeds_axis!r} nor the column-group axis {groups!r}; add them to the rows (--rows) "
            f"so their runs are not averaged together"
        )

    finished = [r for r in results if r.status == "finished"]
    for name in metrics:
        if finished and not any(metric_key(r.metrics, name) for r in finished):
            available = sorted(finished[0].metrics)
            raise TableError(f"metric {name!r} is in no finished run's metrics.json; {finished[0].dir} has {available}")

    row_groups: dict[tuple[str, ...], list[RunResult]] = {}
    for result in results:
        row_groups.setdefault(tuple(result.labels.get(a, "") for a in rows), []).append(result)
    ordered = sorted(row_groups, key=lambda key: tuple(label_order[a].get(lab, -1) for a, lab in zip(rows, key)))
    group_labels = sorted(label_order[groups], key=label_order[groups].get) if groups is not None else []

    table_rows = []
    for key in ordered:
        members = row_groups[key]
        row = _row(members, dict(zip(rows, key)), metrics)
        for label in group_labels:
            part = [r for r in members if r.labels.get(groups) == label]  # type: ignore[arg-type]
            if part:
                row.parts[label] = _row(part, row.labels, metrics)
        table_rows.append(row)
    averages = sorted({str(r.metrics["metric_average"]) for r in results if r.metrics.get("metric_average")})
    return Table(
        row_axes=rows,
        metrics=metrics,
        rows=table_rows,
        seeds_axis=seeds_axis,
        averaging=" / ".join(averages) if averages else None,
        group_axis=groups,
        group_labels=group_labels,
    )
