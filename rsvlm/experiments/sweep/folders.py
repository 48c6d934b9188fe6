"""The sweep's output folder: run statuses, resolved configs and the ``sweep.json`` manifest.

Layout of the output folder::

    OUT/sweep.json            manifest: runs, labels, overrides, statuses
    OUT/commands.sh           one shell line per run (skips finished runs, marks failures)
    OUT/sweep.sbatch          SLURM job array over commands.sh (--script slurm)
    OUT/<run>/config.yaml     the run's full resolved recipe: ``rsvlm fit --config`` reruns it
    OUT/<run>/log.txt         the run's stdout + stderr (appended per attempt)
    OUT/<run>/metrics.json    written by the run itself at the end (rsvlm.experiments.runrecord): finished
    OUT/<run>/FAILED          exit code and log tail of a failed attempt
    OUT/<run>/status.json     the runner's record of the last attempt

A run is *finished* when its ``metrics.json`` exists, *failed* when ``FAILED`` exists, and
*pending* otherwise (never started, or killed mid-way: it is rerun). Finished runs are never
rerun nor their config rewritten; failed ones are rerun only with ``--retry-failed``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from rsvlm.experiments.runrecord import METRICS_FILE, atomic_write_json
from rsvlm.experiments.sweep.overrides import dump_config, resolve_config
from rsvlm.experiments.sweep.spec import Run, SweepError, SweepSpec
from rsvlm.io.atomic import atomic_write_text

MANIFEST_FILE = "sweep.json"
COMMANDS_FILE = "commands.sh"
SBATCH_FILE = "sweep.sbatch"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.txt"
FAILED_FILE = "FAILED"
STATUS_FILE = "status.json"


def run_status(run_dir: str | os.PathLike[str]) -> str:
    """``finished`` (metrics.json), ``failed`` (FAILED) or ``pending`` (anything else)."""
    run_dir = Path(run_dir)
    if (run_dir / METRICS_FILE).is_file():
        return "finished"
    if (run_dir / FAILED_FILE).is_file():
        return "failed"
    return "pending"


def failure_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return code, reason and log tail of a failed run, from status.json or FAILED."""
    run_dir = Path(run_dir)
    info: dict[str, Any] = {"returncode": None, "reason": None, "log_tail": None}
    status_path = run_dir / STATUS_FILE
    if status_path.is_file():
        try:
            status = json.loads(status_path.read_text(encoding="utf-8"))
            if status.get("status") == "failed":
                info.update({k: status.get(k) for k in info})
                return info
        except (json.JSONDecodeError, AttributeError):
            pass
    failed = run_dir / FAILED_FILE
    if failed.is_file():
        text = failed.read_text(encoding="utf-8", errors="replace")
        match = re.search(r"exit code (-?\d+)", text)
        info["returncode"] = int(match.group(1)) if match else None
        info["reason"] = text.splitlines()[0] if text.strip() else "failed"
        info["log_tail"] = text
    return info


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``sweep.json`` from a sweep output folder.

    Raises:
        SweepError: the file is missing, is not JSON, or has no ``runs`` list.
    """
    path = Path(out_dir) / MANIFEST_FILE
    if not path.is_file():
        raise SweepError(f"{path}: no sweep manifest; run `rsvlm sweep` (or --dry-run) first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SweepError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise SweepError(f"{path}: expected an object with a `runs` list")
    return manifest


def _previous_hashes(spec: SweepSpec) -> dict[str, str]:
    """Config hashes recorded by an earlier invocation's ``sweep.json`` (empty when none)."""
    try:
        manifest = read_manifest(spec.out_dir)
        return {e["name"]: e["config_sha256"] for e in manifest["runs"] if "config_sha256" in e}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def prepare_runs(spec: SweepSpec, runs: Sequence[Run]) -> dict[str, str]:
    """Write each run's ``config.yaml``; a finished run's config must be unchanged.

    A finished run is checked against the config hash the earlier sweep recorded in
    ``sweep.json`` (so a trainer that rewrites ``config.yaml`` in its folder, e.g.
    LightningCLI's SaveConfigCallback with ``overwrite=True``, does not break resuming), or,
    without one, against its ``config.yaml``.

    Returns:
        run name -> SHA-256 of its resolved config text (recorded in ``sweep.json``).

    Raises:
        SweepError: finished runs whose config differs from what the sweep now resolves
            (their metrics would be mislabelled); nothing is written then.
    """
    texts = {run.name: dump_config(resolve_config(spec.base, run.overrides)) for run in runs}
    hashes = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in texts.items()}
    previous = _previous_hashes(spec)
    stale = []
    for run in runs:
        run_dir = spec.out_dir / run.name
        if run_status(run_dir) != "finished":
            continue
        if run.name in previous:
            same = previous[run.name] == hashes[run.name]
        else:
            stored_path = run_dir / CONFIG_FILE
            stored = yaml.safe_load(stored_path.read_text(encoding="utf-8")) if stored_path.is_file() else None
            same = stored == yaml.safe_load(texts[run.name])
        if not same:
            stale.append(run.name)
    if stale:
        raise SweepError(
            f"{spec.out_dir}: finished runs {stale} were made with a different config than the sweep "
            f"{spec.path} now resolves; use another --out, or move those run folders away"
        )
    for run in runs:
        run_dir = spec.out_dir / run.name
        if run_status(run_dir) == "finished":
            continue  # never touch a finished run
        config_path = run_dir / CONFIG_FILE
        if not config_path.is_file() or config_path.read_text(encoding="utf-8") != texts[run.name]:
            atomic_write_text(config_path, texts[run.name])
    return hashes


def write_manifest(
    spec: SweepSpec,
    runs: Sequence[Run],
    extra: Optional[dict[str, dict[str, Any]]] = None,
    needs: Sequence[Any] = (),
) -> Path:
    """Write ``sweep.json``: the sweep and every run with its current status.

    ``extra`` maps run names to fields to add (the runner's duration, return code); ``needs``
    are the needs' runs (:class:`rsvlm.experiments.sweep.needs.NeedRun`), listed apart from
    ``runs`` so that tables never mix them in.
    """
    extra = extra or {}
    entries = []
    for run in runs:
        run_dir = spec.out_dir / run.name
        entry: dict[str, Any] = {
            "name": run.name,
            "dir": run.name,
            "labels": run.labels,
            "values": run.values,
            "overrides": run.overrides,
            "status": run_status(run_dir),
        }
        if entry["status"] == "failed":
            entry["returncode"] = failure_info(run_dir)["returncode"]
        entry.update(extra.get(run.name, {}))
        entries.append(entry)
    manifest = {
        "format": 1,
        "name": spec.name,
        "sweep_file": str(spec.path),
        "base": str(spec.base),
        "command": spec.command,
        "workdir": os.getcwd(),
        "out_dir": str(spec.out_dir),
        "axes": [{"name": a.name, "labels": a.labels, "values": a.values} for a in spec.axes],
        "table": spec.table,
        "updated_utc": utc_now(),
        "needs": [
            {
                "name": nr.name,
                "need": nr.need.name,
                "labels": nr.labels,
                "dir": str(nr.run_dir),
                "checkpoint": str(nr.checkpoint),
                "status": nr.status(),
            }
            for nr in needs
        ],
        "runs": entries,
    }
    path = spec.out_dir / MANIFEST_FILE
    atomic_write_json(path, manifest)
    return path


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
