"""Reading a sweep's runs as the table sees them: labels, status, metrics, failure reasons."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rsvlm.contracts import RsvlmError
from rsvlm.experiments.runrecord import read_run_record
from rsvlm.experiments.sweep import SweepError, failure_info, load_sweep, read_manifest, run_status


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


def resolve_sweep_dir(target: str | os.PathLike[str]) -> Path:
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
    try:
        return read_manifest(sweep_dir)
    except SweepError as err:
        raise TableError(str(err)) from err


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
