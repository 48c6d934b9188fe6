"""Rendering a :class:`~rsvlm.experiments.table.stats.Table` as Markdown, CSV or LaTeX.

Metrics are stored as fractions in [0, 1] (torchmetrics' convention) and shown as percentages
with two decimals, as the SPEX paper prints them (``Table.percent = False`` shows the stored
values with four decimals). CSV keeps the numbers unrounded; LaTeX is a booktabs ``tabular``.
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
    averaging = {
        None: "",
        "global": ", scores from one confusion matrix over the split (global)",
        "image": ", scores averaged over images (per image)",
    }.get(table.averaging, f", runs differ in averaging ({table.averaging})")
    return f"{prefix}metrics {unit}, {seeds}{averaging}."


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
    extras = list(EXTRA_KEYS) if table.extra else []
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
