"""``rsvlm sweep``: expand a sweep file into runs, write their configs and run them.

The sweep file's format: :mod:`rsvlm.experiments.sweep.spec`; the output folder's layout:
:mod:`rsvlm.experiments.sweep.folders`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

from rsvlm.experiments.sweep.needs import give_needs
from rsvlm.experiments.sweep.runner import run_sweep
from rsvlm.experiments.sweep.spec import SweepError, load_sweep


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsvlm sweep",
        description="Expand a sweep file into runs, write their configs and run them one after another.",
    )
    parser.add_argument("sweep", help="sweep YAML file (base recipe + axes of overrides)")
    parser.add_argument("--out", help="output folder (default: the sweep file's out_dir)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the chain (needed runs, then runs, with the paths they get) and only write configs, sweep.json and commands.sh",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AXIS=LABEL",
        help="run only runs with this label (repeatable; same axis: any, different axes: all)",
    )
    parser.add_argument(
        "--need",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="use this existing checkpoint for the sweep's need NAME instead of running it (repeatable)",
    )
    parser.add_argument("--retry-failed", action="store_true", help="rerun runs that failed before")
    parser.add_argument(
        "--script",
        choices=("bash", "slurm"),
        help="only write commands.sh (bash) or commands.sh + a SLURM job-array sweep.sbatch (slurm)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo the runs' output (it still goes to log.txt)")
    return parser


def sweep_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``rsvlm sweep``; returns the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        spec = load_sweep(args.sweep, args.out)
        give_needs(spec, args.need)
        return run_sweep(
            spec,
            only=args.only,
            retry_failed=args.retry_failed,
            dry_run=args.dry_run,
            script=args.script,
            echo_output=not args.quiet,
        )
    except SweepError as err:
        print(f"rsvlm sweep: error: {err}", file=sys.stderr)
        return 2
