"""``rsvlm table``: print a sweep's table and write its Markdown, CSV, LaTeX and plot files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from rsvlm.experiments.sweep import MANIFEST_FILE, SweepError, sanitize
from rsvlm.experiments.table.formats import to_csv, to_latex, to_markdown
from rsvlm.experiments.table.plotting import plot
from rsvlm.experiments.table.results import TableError, collect, load_manifest, resolve_sweep_dir
from rsvlm.experiments.table.stats import aggregate
from rsvlm.io.atomic import atomic_write_text


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
    add(
        "--groups",
        help="axis whose labels become column groups, e.g. the dataset axis of a per-subset sweep "
        "(default: the sweep's table.groups; `none`: no groups)",
    )
    add(
        "--baseline",
        nargs="?",
        const="",
        metavar="RECORDS",
        help="add an `Index + Otsu` row scored on the runs' test images; RECORDS: the records file "
        "(or a recipe naming it) they were tested on, default: the runs' own data.init_args.records",
    )
    add("--plot", help="also write a PNG: x=AXIS,y=METRIC (default: the sweep's table.plot)")
    add("--no-percent", action="store_true", help="show metrics as stored instead of as percentages")
    add("--no-extra", action="store_true", help="leave out runtime, memory and parameter columns")
    return parser


def table_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``rsvlm table``; returns the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        sweep_dir = resolve_sweep_dir(args.sweep)
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
        groups = args.groups if args.groups is not None else hints.get("groups")
        if groups in ("none", ""):
            groups = None
        table = aggregate(results, rows=rows, seeds_axis=seeds_axis, metrics=metrics, groups=groups)
        if args.baseline is not None:
            # Imported here: it reads rasters (rasterio, torch), which a plain table never needs.
            from rsvlm.experiments.table.baseline import add_baseline_row

            add_baseline_row(table, results, args.baseline or None)
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
