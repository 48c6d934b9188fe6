"""A run's training curves as one picture, read from the ``metrics.csv`` its CSV logger writes.

``rsvlm fit`` draws ``curves.png`` beside the logs when it ends; ``rsvlm curves RUN`` draws it for
any run folder, log folder or ``metrics.csv`` (a run still going, or one that was killed). Panels,
each left out when nothing was logged for it:

* **loss** by optimizer step: every ``train/…loss…`` and ``val…/…loss…`` column;
* **validation** by epoch (1 = after the first epoch): every other ``val…/`` column (F1, IoU, ...,
  the teacher-forced upper bound ``val_teacher_forced/…`` dashed);
* **learning rate** by step: the ``lr-…`` columns of ``LearningRateMonitor``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from rsvlm.contracts import RsvlmError

Curves = dict[str, dict[str, tuple[list[float], list[float]]]]
#: Series per panel beyond which the rest are left out (named in the panel's title).
MAX_SERIES = 10


class CurvesError(RsvlmError, ValueError):
    """No metrics file, or nothing in it to draw."""


def find_metrics_csv(path: str | Path) -> Path:
    """``metrics.csv`` itself, or the newest ``logs/version_N/metrics.csv`` (or ``version_N``'s) under a folder."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "metrics.csv").is_file():
        return path / "metrics.csv"
    found = sorted(path.glob("logs/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CurvesError(
            f"{path}: no metrics.csv (looked for {path}/metrics.csv and {path}/logs/version_*/metrics.csv)"
        )
    return found[-1]


def read_curves(csv_path: str | Path) -> Curves:
    """Panel (``loss``, ``validation``, ``learning rate``) → series name → ``(xs, ys)``.

    Rows of Lightning's ``CSVLogger``: ``epoch``, ``step`` and one column per logged name, empty
    where a row did not log it. Losses and learning rates are drawn by ``step``, validation scores
    by ``epoch + 1``. Empty panels are left out.
    """
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    curves: Curves = {"loss": {}, "validation": {}, "learning rate": {}}
    for row in rows:
        for name, text in row.items():
            value = _number(text)
            if value is None or name in ("epoch", "step"):
                continue
            panel = _panel(name)
            x = _number(row.get("epoch")) if panel == "validation" else _number(row.get("step"))
            if panel is None or x is None:
                continue
            xs, ys = curves[panel].setdefault(name, ([], []))
            xs.append(x + 1 if panel == "validation" else x)
            ys.append(value)
    return {panel: series for panel, series in curves.items() if series}


def save_curves(csv_path: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Draw :func:`read_curves` of ``csv_path`` into the PNG ``out`` (panels side by side).

    Raises:
        CurvesError: the file logged no loss, validation score or learning rate.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    from matplotlib.figure import Figure

    from rsvlm.io.pictures import save_figure

    curves = read_curves(csv_path)
    if not curves:
        raise CurvesError(f"{csv_path}: no loss, validation or learning-rate column to draw")
    fig = Figure(figsize=(5.0 * len(curves), 3.8), dpi=100)
    for i, (panel, series) in enumerate(curves.items()):
        ax = fig.add_subplot(1, len(curves), i + 1)
        names = sorted(series)
        # One colour per metric (F1, IoU, ...), so its teacher-forced bound (dashed) matches it.
        metrics = sorted({name.split("/", 1)[-1] for name in names[:MAX_SERIES]})
        for name in names[:MAX_SERIES]:
            xs, ys = series[name]
            style = "--" if "teacher_forced" in name else "-"
            colour = f"C{metrics.index(name.split('/', 1)[-1]) % 10}"
            marker = "o" if panel == "validation" else None
            ax.plot(xs, ys, style, color=colour, marker=marker, markersize=3, label=name)
        left_out = len(names) - MAX_SERIES
        ax.set_title(panel + (f" ({left_out} more not drawn)" if left_out > 0 else ""), fontsize=10)
        ax.set_xlabel("epoch" if panel == "validation" else "step")
        if panel == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(str(csv_path), fontsize=8)
    fig.tight_layout()
    return save_figure(out, fig, overwrite)


def curves_main(argv: list[str]) -> int:
    """``rsvlm curves RUN [--out curves.png] [--overwrite]``."""
    parser = argparse.ArgumentParser(
        prog="rsvlm curves",
        description="Draw a run's loss, validation scores and learning rate by step and epoch as a PNG.",
    )
    parser.add_argument("run", help="a run folder (default_root_dir), a logs/version_N folder or a metrics.csv")
    parser.add_argument("--out", help="the PNG (default: curves.png beside metrics.csv)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    csv_path = find_metrics_csv(args.run)
    out = Path(args.out) if args.out else csv_path.parent / "curves.png"
    if out.exists() and not args.overwrite:
        raise CurvesError(f"{out} exists; pass --overwrite to replace it")
    save_curves(csv_path, out, overwrite=True)
    print(f"curves: {out}", file=sys.stderr)
    return 0


def _panel(name: str) -> str | None:
    if name.startswith("lr-"):
        return "learning rate"
    if name.startswith(("train/", "val")) and "loss" in name:
        return "loss"
    if name.startswith("val"):
        return "validation"
    return None


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
