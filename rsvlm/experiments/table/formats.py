"""Rendering a :class:`~rsvlm.experiments.table.stats.Table` as Markdown, CSV or LaTeX.

Metrics are stored as fractions in [0, 1] (torchmetrics' convention) and shown as percentages
with two decimals, as the SPEX paper prints them (``Table.percent = False`` shows the stored
values with four decimals). CSV keeps the numbers unrounded; LaTeX is a booktabs ``tabular``.

A table with column groups (``Table.group_axis``) repeats the metric columns once per group:
Markdown and CSV name them ``<group>: <metric>``, LaTeX puts the group names in a first header
line over their columns (``\\multicolumn`` + ``\\cmidrule``). A row without runs in a group
shows ``–`` there.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Optional

from rsvlm.experiments.table.stats import EXTRA_KEYS, Table, TableRow


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


def _metric_columns(table: Table) -> list[tuple[Optional[str], str]]:
    """(column group or None, metric) of every metric column, in order."""
    if table.group_axis is None:
        return [(None, m) for m in table.metrics]
    return [(g, m) for g in table.group_labels for m in table.metrics]


def _column_name(group: Optional[str], metric: str) -> str:
    return metric if group is None else f"{group}: {metric}"


def _cell_text(table: Table, row: TableRow, group: Optional[str], metric: str, pm: str) -> str:
    if group is None:
        return _metric_text(table, row, metric, pm)
    part = row.parts.get(group)
    return "–" if part is None else _metric_text(table, part, metric, pm)


def _header(table: Table, grouped_names: bool = True) -> list[str]:
    metric_names = [_column_name(g, m) if grouped_names else m for g, m in _metric_columns(table)]
    head = list(table.row_axes) + metric_names + ["runs"]
    if table.extra:
        head += ["runtime", "peak memory", "params", "trainable"]
    return head + ["status"]


def _body(table: Table, pm: str) -> list[list[str]]:
    body = []
    for row in table.rows:
        line = [row.labels[a] for a in table.row_axes]
        line += [_cell_text(table, row, g, m, pm) for g, m in _metric_columns(table)]
        line.append(f"{row.n_finished}/{row.n_runs}" if row.n_runs else "–")
        if table.extra:
            line += _extra_texts(row)
        body.append(line + [row.status])
    return body


def caption(table: Table) -> str:
    """One sentence saying what the numbers are."""
    unit = "in %" if table.percent else "as stored"
    seeds = f"mean ± sample std over the `{table.seeds_axis}` axis" if table.seeds_axis else "one run per row"
    prefix = f"{table.title}: " if table.title else ""
    averaging = {
        None: "",
        "global": ", scores from one confusion matrix over the split (global)",
        "image": ", scores averaged over images (per image)",
    }.get(table.averaging, f", runs differ in averaging ({table.averaging})")
    grouped = f", columns grouped by `{table.group_axis}`" if table.group_axis else ""
    notes = "".join(f" {note}" for note in table.notes)
    return f"{prefix}metrics {unit}, {seeds}{averaging}{grouped}.{notes}"


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
    for group, name in _metric_columns(table):
        column = _column_name(group, name)
        head += [f"{column}{unit}", f"{column} std{unit}"]
    extras = list(EXTRA_KEYS) if table.extra else []
    head += ["n_finished", "n_failed", "n_pending", *extras, "status"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)

    def num(value: Optional[float], scale: float = 1.0) -> str:
        return "" if value is None else repr(value * scale)

    for row in table.rows:
        line: list[str] = [row.labels[a] for a in table.row_axes]
        for group, name in _metric_columns(table):
            part = row if group is None else row.parts.get(group)
            cell = None if part is None else part.cells[name]
            line += ["", ""] if cell is None else [num(cell.mean, _scale(table)), num(cell.std, _scale(table))]
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


def _latex_group_header(table: Table, n_columns: int) -> list[str]:
    """The header line with one ``\\multicolumn`` per column group, and its ``\\cmidrule`` s."""
    width = len(table.metrics)
    first = len(table.row_axes) + 1  # 1-based column of the first metric
    cells = [""] * len(table.row_axes)
    rules = []
    for i, group in enumerate(table.group_labels):
        cells.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(group)}}}")
        start = first + i * width
        rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
    cells += [""] * (n_columns - len(table.row_axes) - width * len(table.group_labels))
    return [" & ".join(cells) + r" \\", " ".join(rules)]


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), caption as a comment."""
    head = _header(table, grouped_names=False)
    n_labels = len(table.row_axes)
    spec = "l" * n_labels + "c" * (len(head) - n_labels)
    lines = [f"% {caption(table)}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    if table.group_axis is not None:
        lines += _latex_group_header(table, len(head))
    lines += [" & ".join(latex_escape(h) for h in head) + r" \\", "\\midrule"]
    for line in _body(table, " $\\pm$ "):
        cells = [latex_escape(c) for c in line[:n_labels]]
        cells += [c if "$\\pm$" in c else latex_escape(c) for c in line[n_labels:]]
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"
