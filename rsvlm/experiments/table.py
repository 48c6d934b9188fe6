"""``rsvlm table``: turn a sweep's run metrics into the table a paper prints.

Reads ``sweep.json`` (written by ``rsvlm sweep``) and each run's ``metrics.json``, groups the
runs by the row axes and averages over the seeds axis. A cell is ``mean ± std`` (sample
standard deviation, ``ddof=1``) when several seeds finished, the plain mean for one.

Metrics are stored as fractions in [0, 1] (torchmetrics' convention) and shown as percentages
with two decimals, as the SPEX paper prints them (``--no-percent`` shows the stored values
with four decimals). A column name ``F1`` is looked up in ``metrics.json`` as ``F1``, then
``test/F1``, then case-insensitively on the part after the last ``/``.

Runs are never dropped: a row whose runs all failed shows ``failed`` in its metric cells, one
with no finished run yet shows ``pending``; a row with some seeds missing shows the mean over
the finished ones, the ``runs`` column says how many (``2/3``) and ``status`` why. Extra
columns give the mean runtime, the mean peak memory and the parameter counts.

Outputs: Markdown (always printed; ``PREFIX.md``), CSV (``PREFIX.csv``, numbers unrounded),
LaTeX (``PREFIX.tex``, a booktabs ``tabular``), and with ``--plot x=AXIS,y=METRIC`` a PNG line
plot of the metric against the axis with std error bars, one line per combination of the
other row axes (``PREFIX_<y>_vs_<x>.png``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from rsvlm.contracts import RsvlmError
from rsvlm.experiments.runrecord import atomic_write_text, read_run_record
from rsvlm.experiments.sweep import MANIFEST_FILE, SweepError, failure_info, load_sweep, run_status, sanitize

DEFAULT_METRICS: tuple[str, ...] = ("F1", "Recall", "Precision", "OA", "IoU")
_EXTRA_KEYS = ("runtime_s", "peak_memory_mb", "params_total", "params_trainable")


class TableError(RsvlmError, ValueError):
    """The sweep folder, its runs or the requested layout do not fit together."""


@dataclass
class RunResult:
    """One run as the table sees it.

    Attributes:
        name: the run folder name.
        dir: the run folder.
        labels: axis name -> label.
        values: axis name -> raw value (numbers for ``{key, values}`` axes).
        status: ``finished``, ``failed`` or ``pending``.
        metrics: the run's ``metrics.json`` (empty unless finished).
        returncode: exit code of a failed run, when known.
        reason: why a failed run failed, when known.
    """

    name: str
    dir: Path
    labels: dict[str, str]
    values: dict[str, Any]
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    returncode: Optional[int] = None
    reason: Optional[str] = None


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


# --------------------------------------------------------------------------- collect


def _resolve_dir(target: str | os.PathLike[str]) -> Path:
    """A sweep output folder from a folder or a sweep file (whose ``out_dir`` is used)."""
    target = Path(target)
    if target.is_dir():
        return target
    if target.is_file():
        try:
            return load_sweep(target).out_dir
        except SweepError as err:
            raise TableError(str(err)) from err
    raise TableError(f"{target}: neither a sweep output folder nor a sweep file")


def load_manifest(sweep_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``sweep.json`` from a sweep output folder."""
    path = Path(sweep_dir) / MANIFEST_FILE
    if not path.is_file():
        raise TableError(f"{path}: no sweep manifest; run `rsvlm sweep` (or --dry-run) first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TableError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise TableError(f"{path}: expected an object with a `runs` list")
    return manifest


def collect(sweep_dir: str | os.PathLike[str]) -> list[RunResult]:
    """Every run of the sweep in grid order, with its status read from its folder."""
    sweep_dir = Path(sweep_dir)
    results = []
    for entry in load_manifest(sweep_dir)["runs"]:
        run_dir = sweep_dir / entry["dir"]
        result = RunResult(
            name=entry["name"],
            dir=run_dir,
            labels=dict(entry.get("labels", {})),
            values=dict(entry.get("values", {})),
            status=run_status(run_dir),
        )
        if result.status == "finished":
            try:
                result.metrics = read_run_record(run_dir).metrics
            except ValueError as err:
                raise TableError(str(err)) from err
        elif result.status == "failed":
            info = failure_info(run_dir)
            result.returncode, result.reason = info["returncode"], info["reason"]
        results.append(result)
    return results


# --------------------------------------------------------------------------- aggregate


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
        extras = {k: _cell([float(r.metrics[k]) for r in done if r.metrics.get(k) is not None]) for k in _EXTRA_KEYS}
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
    return Table(row_axes=rows, metrics=metrics, rows=table_rows, seeds_axis=seeds_axis)


# --------------------------------------------------------------------------- formatting


def _scale(table: Table) -> float:
    return 100.0 if table.percent else 1.0


def _metric_text(table: Table, row: TableRow, name: str, pm: str) -> str:
    cell = row.cells[name]
    if cell.n == 0:
        return row.empty_word if row.n_finished == 0 else "n/a"
    digits = 2 if table.percent else 4
    text = f"{cell.mean * _scale(table):.{digits}f}"
    if cell.std is not None:
        text += f"{pm}{cell.std * _scale(table):.{digits}f}"
    return text


def _human_count(n: Optional[float]) -> str:
    if n is None or math.isnan(n):
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _human_seconds(s: Optional[float]) -> str:
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _extra_texts(row: TableRow) -> list[str]:
    memory = row.extras["peak_memory_mb"].mean
    return [
        _human_seconds(row.extras["runtime_s"].mean),
        "–" if memory is None else f"{memory:.0f} MB",
        _human_count(row.extras["params_total"].mean),
        _human_count(row.extras["params_trainable"].mean),
    ]


def _header(table: Table) -> list[str]:
    head = list(table.row_axes) + list(table.metrics) + ["runs"]
    if table.extra:
        head += ["runtime", "peak memory", "params", "trainable"]
    return head + ["status"]


def _body(table: Table, pm: str) -> list[list[str]]:
    body = []
    for row in table.rows:
        line = [row.labels[a] for a in table.row_axes]
        line += [_metric_text(table, row, m, pm) for m in table.metrics]
        line.append(f"{row.n_finished}/{row.n_runs}")
        if table.extra:
            line += _extra_texts(row)
        body.append(line + [row.status])
    return body


def caption(table: Table) -> str:
    """One sentence saying what the numbers are."""
    unit = "in %" if table.percent else "as stored"
    seeds = f"mean ± sample std over the `{table.seeds_axis}` axis" if table.seeds_axis else "one run per row"
    prefix = f"{table.title}: " if table.title else ""
    return f"{prefix}metrics {unit}, {seeds}."


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table preceded by its caption."""

    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    head = _header(table)
    lines = [caption(table), "", "| " + " | ".join(esc(h) for h in head) + " |"]
    n_labels = len(table.row_axes)
    lines.append("|" + "|".join(":---" if i < n_labels else "---:" for i in range(len(head))) + "|")
    for line in _body(table, " ± "):
        lines.append("| " + " | ".join(esc(c) for c in line) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """CSV with one numeric column per metric mean and std (unrounded, scaled like the table)."""
    unit = " (%)" if table.percent else ""
    head = list(table.row_axes)
    for name in table.metrics:
        head += [f"{name}{unit}", f"{name} std{unit}"]
    extras = list(_EXTRA_KEYS) if table.extra else []
    head += ["n_finished", "n_failed", "n_pending", *extras, "status"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)

    def num(value: Optional[float], scale: float = 1.0) -> str:
        return "" if value is None else repr(value * scale)

    for row in table.rows:
        line: list[str] = [row.labels[a] for a in table.row_axes]
        for name in table.metrics:
            cell = row.cells[name]
            line += [num(cell.mean, _scale(table)), num(cell.std, _scale(table))]
        line += [str(row.n_finished), str(row.n_failed), str(row.n_pending)]
        line += [num(row.extras[k].mean) for k in extras]
        writer.writerow(line + [row.status])
    return buffer.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in a label."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), caption as a comment."""
    head = _header(table)
    n_labels = len(table.row_axes)
    spec = "l" * n_labels + "c" * (len(head) - n_labels)
    lines = [
        f"% {caption(table)}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in head) + r" \\",
        "\\midrule",
    ]
    for line in _body(table, " $\\pm$ "):
        cells = [latex_escape(c) for c in line[:n_labels]]
        cells += [c if "$\\pm$" in c else latex_escape(c) for c in line[n_labels:]]
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plot


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# --------------------------------------------------------------------------- CLI


def _split(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _parse_plot(text: str) -> dict[str, str]:
    spec = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("x", "y"):
            raise TableError(f"--plot {text!r}: expected x=AXIS,y=METRIC")
        spec[key.strip()] = value.strip()
    if set(spec) != {"x", "y"}:
        raise TableError(f"--plot {text!r}: give both x=AXIS and y=METRIC")
    return spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsvlm table", description="Tabulate a sweep's metrics as the paper prints them."
    )
    add = parser.add_argument
    add("sweep", help="sweep output folder (with sweep.json) or the sweep file")
    add(
        "--format",
        choices=("markdown", "csv", "latex", "all"),
        default="all",
        help="files to write (Markdown is always printed)",
    )
    add("--out", help="output path prefix (default: SWEEP_DIR/table)")
    add("--rows", help="row axes, comma-separated (default: the sweep's table.rows, else all but the seeds axis)")
    add("--metrics", help="metric columns, comma-separated (default: table.columns, else F1,Recall,Precision,OA,IoU)")
    add("--seeds-axis", help="axis averaged over (default: table.seeds_axis, else an axis named seed; `none`: none)")
    add("--plot", help="also write a PNG: x=AXIS,y=METRIC (default: the sweep's table.plot)")
    add("--no-percent", action="store_true", help="show metrics as stored instead of as percentages")
    add("--no-extra", action="store_true", help="leave out runtime, memory and parameter columns")
    return parser


def table_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``rsvlm table``; returns the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        sweep_dir = _resolve_dir(args.sweep)
        manifest = load_manifest(sweep_dir)
        hints = manifest.get("table") or {}
        axes = [a["name"] for a in manifest.get("axes", [])]
        seeds_axis = args.seeds_axis
        if seeds_axis is None:
            seeds_axis = hints.get("seeds_axis", "seed" if "seed" in axes else None)
        if seeds_axis in ("none", ""):
            seeds_axis = None
        rows = _split(args.rows) or hints.get("rows")
        metrics = _split(args.metrics) or hints.get("columns")
        results = collect(sweep_dir)
        table = aggregate(results, rows=rows, seeds_axis=seeds_axis, metrics=metrics)
        table.percent, table.extra = not args.no_percent, not args.no_extra
        table.title = str(manifest.get("name") or "")
        prefix = Path(args.out) if args.out else sweep_dir / "table"

        markdown = to_markdown(table)
        print(markdown, end="")
        writers = {
            "markdown": (".md", lambda: markdown),
            "csv": (".csv", lambda: to_csv(table)),
            "latex": (".tex", lambda: to_latex(table)),
        }
        for fmt, (suffix, render) in writers.items():
            if args.format in (fmt, "all"):
                path = prefix.with_name(prefix.name + suffix)
                atomic_write_text(path, render())
                print(f"wrote {path}", file=sys.stderr)

        plot_spec = _parse_plot(args.plot) if args.plot else hints.get("plot")
        if plot_spec:
            if not isinstance(plot_spec, dict) or not {"x", "y"} <= set(plot_spec):
                raise TableError(f"{sweep_dir / MANIFEST_FILE}: table.plot must be {{x: AXIS, y: METRIC}}")
            x, y = plot_spec["x"], plot_spec["y"]
            target = prefix.with_name(f"{prefix.name}_{sanitize(y)}_vs_{sanitize(x)}.png")
            plot(results, x, y, target, rows=rows, seeds_axis=seeds_axis, percent=table.percent, title=table.title)
            print(f"wrote {target}", file=sys.stderr)
    except (TableError, SweepError) as err:
        print(f"rsvlm table: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(table_main(sys.argv[1:]))
