"""``rsvlm sweep``: expand a grid of recipe overrides, write each run's config, run them.

A sweep file (YAML) names a base recipe and axes of overrides::

    base: ../spex-demo.yaml          # relative to the sweep file
    name: spex-components-demo       # default: the sweep file's stem
    out_dir: runs/ablations/spex-components-demo   # relative to the cwd; --out overrides it
    command: fit                     # LightningCLI subcommand (default: fit)
    overrides: {trainer.max_epochs: 3}             # applied to every run, before the axes
    axes:
      spectral_prompt:               # label -> overrides (dotted keys); {} or null: no change
        "w/o SP": {data.init_args.template: plain}
        "w/ SP": {data.init_args.template: spectral}
      num_tokens: {key: model.init_args.bridge.init_args.num_tokens, values: [1, 2, 4, 8]}
      seed_everything: [0, 1, 2]     # a plain list: the axis name is the dotted key
    table: {rows: [spectral_prompt], columns: [F1, IoU], seeds_axis: seed_everything,
            plot: {x: num_tokens, y: F1}}          # hints for ``rsvlm table``
    launcher: ["{python}", "-m", "rsvlm.cli", "{command}", "--config", "{config}",
               "--trainer.default_root_dir", "{run_dir}"]   # optional; this is the default
    slurm: {partition: gpu, gres: "gpu:1", time: "04:00:00"}   # optional #SBATCH lines

A plain-list axis named ``seed`` sets ``seed_everything`` (the one alias). ``{key, values}``
axes may add ``labels: [...]`` (needed when the values are not scalars).

Grid: the cartesian product of the axes in file order (first axis outermost). A run's
overrides are the sweep's ``overrides`` followed by each axis's, later ones winning. An
override key is a dotted path into the recipe (``model.init_args.fusion``); missing levels are
created, an integer part indexes a list. Its value replaces the old one, except that a dict
*without* ``class_path`` is merged into an existing dict (recursively); a dict *with*
``class_path`` always replaces the whole subtree, so the old component's ``init_args`` never
leak into the new one.

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

Relative paths inside the base recipe: every run command is started from the directory in
which ``rsvlm sweep`` was invoked (recorded as ``workdir`` in ``sweep.json`` and as a ``cd``
in ``commands.sh``), exactly as ``rsvlm fit --config BASE`` would have been, so a recipe's
relative data paths mean the same for the sweep as for a single run. Run from the repository
root, like the recipes in ``recipes/`` expect. (jsonargparse resolves plain ``str`` and
``pathlib.Path`` values against the process's cwd, not the config file's folder, so moving the
resolved config into the run folder does not change them.)
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime as _dt
import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

import yaml

from rsvlm.contracts import RsvlmError
from rsvlm.experiments.runrecord import METRICS_FILE, atomic_write_json, atomic_write_text

MANIFEST_FILE = "sweep.json"
COMMANDS_FILE = "commands.sh"
SBATCH_FILE = "sweep.sbatch"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.txt"
FAILED_FILE = "FAILED"
STATUS_FILE = "status.json"

DEFAULT_LAUNCHER: tuple[str, ...] = (
    "{python}",
    "-m",
    "rsvlm.cli",
    "{command}",
    "--config",
    "{config}",
    "--trainer.default_root_dir",
    "{run_dir}",
)
_LAUNCHER_TOKENS = ("{python}", "{command}", "{config}", "{run_dir}")
_SWEEP_KEYS = ("base", "name", "out_dir", "command", "overrides", "axes", "table", "launcher", "slurm")
_AXIS_ALIASES = {"seed": "seed_everything"}
_CLASS_FIELDS = ("class_path", "init_args", "dict_kwargs")
_LOG_TAIL_LINES = 40
_MAX_NAME = 180


class SweepError(RsvlmError, ValueError):
    """A sweep file, its base recipe or an output folder is not what the sweep expects."""


@dataclass
class Axis:
    """One axis of the grid.

    Attributes:
        name: axis name (as in the sweep file).
        labels: one label per value, in file order.
        overrides: per label, the dotted-key overrides it applies.
        values: per label, the raw value (``{key, values}`` and list axes) or the label itself.
    """

    name: str
    labels: list[str]
    overrides: list[dict[str, Any]]
    values: list[Any]


@dataclass
class SweepSpec:
    """A parsed sweep file; paths are absolute."""

    path: Path
    base: Path
    name: str
    out_dir: Path
    command: str
    overrides: dict[str, Any]
    axes: list[Axis]
    table: dict[str, Any] = field(default_factory=dict)
    launcher: tuple[str, ...] = DEFAULT_LAUNCHER
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """One point of the grid.

    Attributes:
        name: the run's folder name, e.g. ``spectral_prompt=w-o-SP__fusion=w-MSAM__seed=0``.
        labels: axis name -> label.
        values: axis name -> raw value (the label for label-dict axes).
        overrides: dotted key -> value, in the order they are applied.
    """

    name: str
    labels: dict[str, str]
    values: dict[str, Any]
    overrides: dict[str, Any]


# --------------------------------------------------------------------------- sweep file


def sanitize(text: str) -> str:
    """A folder-name-safe form of ``text``: runs of other characters than ``[A-Za-z0-9._+-]`` become ``-``."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-")
    return cleaned or "_"


def _value_label(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise SweepError(f"{where}: value {value!r} is not a scalar; give the axis `labels: [...]`")


def _check_overrides(obj: Any, where: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise SweepError(f"{where}: expected a mapping of dotted recipe keys to values, got {type(obj).__name__}")
    for key in obj:
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise SweepError(f"{where}: override key {key!r} is not a dotted recipe key such as `trainer.max_epochs`")
    return dict(obj)


def _parse_axis(name: str, spec: Any, where: str) -> Axis:
    where = f"{where}: axes.{name}"
    if isinstance(spec, dict) and isinstance(spec.get("key"), str) and isinstance(spec.get("values"), list):
        unknown = set(spec) - {"key", "values", "labels"}
        if unknown:
            raise SweepError(
                f"{where}: unknown fields {sorted(unknown)}; a key/values axis takes `key`, `values`, `labels`"
            )
        key, values = spec["key"], list(spec["values"])
        labels = spec.get("labels")
        if labels is None:
            labels = [_value_label(v, f"{where}.values[{i}]") for i, v in enumerate(values)]
        elif not isinstance(labels, list) or len(labels) != len(values):
            raise SweepError(f"{where}.labels: expected a list of {len(values)} labels, one per value")
        axis = Axis(name, [str(lab) for lab in labels], [{key: v} for v in values], values)
    elif isinstance(spec, list):
        key = _AXIS_ALIASES.get(name, name)
        labels = [_value_label(v, f"{where}[{i}]") for i, v in enumerate(spec)]
        axis = Axis(name, labels, [{key: v} for v in spec], list(spec))
    elif isinstance(spec, dict):
        labels = [str(label) for label in spec]
        overrides = [_check_overrides(spec[label], f"{where}.{label}") for label in spec]
        axis = Axis(name, labels, overrides, list(labels))
    else:
        raise SweepError(
            f"{where}: expected a mapping label -> overrides, a list of values, or {{key: ..., values: [...]}}; "
            f"got {type(spec).__name__}"
        )
    _check_overrides({k: None for o in axis.overrides for k in o}, where)
    if not axis.labels:
        raise SweepError(f"{where}: the axis has no values")
    seen: dict[str, str] = {}
    for label in axis.labels:
        safe = sanitize(label)
        if safe in seen:
            raise SweepError(f"{where}: labels {seen[safe]!r} and {label!r} give the same folder name {safe!r}")
        seen[safe] = label
    return axis


def parse_sweep(raw: Any, path: str | os.PathLike[str], out: Optional[str | os.PathLike[str]] = None) -> SweepSpec:
    """Validate a loaded sweep mapping; ``path`` is the sweep file (for relative ``base``).

    ``out`` replaces ``out_dir``; both are taken relative to the current directory.
    """
    path = Path(path).resolve()
    where = str(path)
    if not isinstance(raw, dict):
        raise SweepError(f"{where}: expected a YAML mapping with keys {list(_SWEEP_KEYS)}")
    unknown = sorted(set(raw) - set(_SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{where}: unknown keys {unknown}; expected some of {list(_SWEEP_KEYS)}")
    if not isinstance(raw.get("base"), str):
        raise SweepError(f"{where}: `base` must name the base recipe (a path relative to the sweep file)")
    base = (path.parent / raw["base"]).resolve()
    if not base.is_file():
        raise SweepError(f"{where}: base recipe {raw['base']!r} not found (looked for {base})")
    name = str(raw.get("name") or path.stem)
    out_dir = Path(out if out is not None else raw.get("out_dir") or Path("runs") / sanitize(name)).resolve()
    command = raw.get("command", "fit")
    if not isinstance(command, str) or not command:
        raise SweepError(f"{where}: `command` must be a LightningCLI subcommand such as `fit`")
    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, dict):
        raise SweepError(f"{where}: `axes` must be a mapping of axis name -> values")
    axes = [_parse_axis(str(axis_name), spec, where) for axis_name, spec in axes_raw.items()]
    table = raw.get("table") or {}
    if not isinstance(table, dict):
        raise SweepError(f"{where}: `table` must be a mapping (rows, columns, seeds_axis, plot)")
    launcher = raw.get("launcher", list(DEFAULT_LAUNCHER))
    if not isinstance(launcher, list) or not launcher or not all(isinstance(a, str) for a in launcher):
        raise SweepError(f"{where}: `launcher` must be a list of strings using {list(_LAUNCHER_TOKENS)}")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise SweepError(f"{where}: `slurm` must be a mapping of sbatch option -> value")
    return SweepSpec(
        path=path,
        base=base,
        name=name,
        out_dir=out_dir,
        command=command,
        overrides=_check_overrides(raw.get("overrides"), f"{where}: overrides"),
        axes=axes,
        table=table,
        launcher=tuple(launcher),
        slurm=slurm,
    )


def load_sweep(path: str | os.PathLike[str], out: Optional[str | os.PathLike[str]] = None) -> SweepSpec:
    """Read and validate a sweep file (see the module docstring for its format)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML ({err})") from err
    return parse_sweep(raw, path, out)


def _run_name(labels: dict[str, str]) -> str:
    if not labels:
        return "run"
    name = "__".join(f"{sanitize(axis)}={sanitize(label)}" for axis, label in labels.items())
    if len(name) > _MAX_NAME:  # file systems cap names at 255 bytes
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 12]}__{digest}"
    return name


def expand_grid(sweep: SweepSpec) -> list[Run]:
    """All runs of the grid: the cartesian product of the axes, first axis outermost."""
    runs = []
    for choice in itertools.product(*(range(len(axis.labels)) for axis in sweep.axes)):
        labels, values = {}, {}
        overrides: dict[str, Any] = {}
        layers = [sweep.overrides] + [axis.overrides[i] for axis, i in zip(sweep.axes, choice)]
        for axis, i in zip(sweep.axes, choice):
            labels[axis.name] = axis.labels[i]
            values[axis.name] = axis.values[i]
        for layer in layers:
            for key, value in layer.items():
                overrides.pop(key, None)  # a repeated key moves to the end: it is applied last
                overrides[key] = copy.deepcopy(value)
        runs.append(Run(_run_name(labels), labels, values, overrides))
    return runs


# --------------------------------------------------------------------------- overrides


def _is_class_spec(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        old = dst.get(key)
        if (
            isinstance(old, str)
            and isinstance(value, dict)
            and not _is_class_spec(value)
            and set(value) <= set(_CLASS_FIELDS)
        ):
            old = dst[key] = {"class_path": old}  # jsonargparse's `key: some.Class` shorthand
        if isinstance(value, dict) and not _is_class_spec(value) and isinstance(old, dict):
            _merge(old, value)
        else:
            dst[key] = copy.deepcopy(value)


def apply_override(config: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` of ``config`` to ``value`` in place (rules in the module docstring)."""
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, here)]
        else:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, str) and parts[depth + 1] in _CLASS_FIELDS:
                child = node[part] = {"class_path": child}
            node = child
        if not isinstance(node, (dict, list)):
            raise SweepError(
                f"override {key!r}: {here!r} holds a {type(node).__name__} value, cannot set a key inside it"
            )
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = copy.deepcopy(value)
    else:
        _merge(node, {last: value})


def _list_index(node: list[Any], part: str, here: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise SweepError(f"override {here!r}: this level is a list; expected an integer index, got {part!r}") from None
    if not -len(node) <= index < len(node):
        raise SweepError(f"override {here!r}: index {index} out of range for a list of {len(node)}")
    return index


def resolve_config(base_path: str | os.PathLike[str], overrides: dict[str, Any]) -> dict[str, Any]:
    """Load the base recipe and apply ``overrides`` (dotted key -> value) in order."""
    base_path = Path(base_path)
    try:
        config = yaml.safe_load(base_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise SweepError(f"{base_path}: cannot read the base recipe ({err})") from err
    if not isinstance(config, dict):
        raise SweepError(f"{base_path}: expected a recipe mapping (seed_everything, trainer, model, data)")
    for key, value in overrides.items():
        apply_override(config, key, value)
    return config


def dump_config(config: dict[str, Any]) -> str:
    """YAML text of a resolved config, keys in recipe order."""
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- run folders


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


def launch_command(spec: SweepSpec, run_dir: Path, launcher: Optional[Sequence[str]] = None) -> list[str]:
    """The argv that runs one run, from the launcher template."""
    subs = {
        "{python}": sys.executable,
        "{command}": spec.command,
        "{config}": str(run_dir / CONFIG_FILE),
        "{run_dir}": str(run_dir),
    }
    argv = []
    for arg in launcher if launcher is not None else spec.launcher:
        for token, value in subs.items():
            arg = arg.replace(token, value)
        argv.append(arg)
    return argv


def _previous_hashes(spec: SweepSpec) -> dict[str, str]:
    """Config hashes recorded by an earlier invocation's ``sweep.json`` (empty when none)."""
    try:
        manifest = json.loads((spec.out_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
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


def write_manifest(spec: SweepSpec, runs: Sequence[Run], extra: Optional[dict[str, dict[str, Any]]] = None) -> Path:
    """Write ``sweep.json``: the sweep and every run with its current status.

    ``extra`` maps run names to fields to add (the runner's duration, return code).
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
        "updated_utc": _now(),
        "runs": entries,
    }
    path = spec.out_dir / MANIFEST_FILE
    atomic_write_json(path, manifest)
    return path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- scripts


def command_line(spec: SweepSpec, run_dir: Path, launcher: Optional[Sequence[str]] = None) -> str:
    """One self-contained shell line for a run.

    It starts from the sweep's workdir, skips the run if ``metrics.json`` exists, appends the
    output to ``log.txt``, writes ``FAILED`` with the exit code on failure, and exits non-zero
    unless the run finished (so a SLURM array task shows the failure).
    """
    q = shlex.quote
    cmd = shlex.join(launch_command(spec, run_dir, launcher))
    metrics, failed, log = (q(str(run_dir / f)) for f in (METRICS_FILE, FAILED_FILE, LOG_FILE))
    return (
        f"cd {q(os.getcwd())} && {{ test -f {metrics} || {{ rm -f {failed}; "
        f'{cmd} >> {log} 2>&1 || {{ echo "exit code $?" > {failed}; false; }}; }}; }}'
    )


def write_scripts(
    spec: SweepSpec,
    runs: Sequence[Run],
    script: str = "bash",
    launcher: Optional[Sequence[str]] = None,
) -> list[Path]:
    """Write ``commands.sh`` (one line per run) and, for ``script="slurm"``, ``sweep.sbatch``."""
    if script not in ("bash", "slurm"):
        raise SweepError(f"--script: expected `bash` or `slurm`, got {script!r}")
    lines = [command_line(spec, spec.out_dir / run.name, launcher) for run in runs]
    commands = spec.out_dir / COMMANDS_FILE
    atomic_write_text(commands, "".join(line + "\n" for line in lines))
    written = [commands]
    if script == "slurm":
        logs = spec.out_dir / "slurm"
        logs.mkdir(parents=True, exist_ok=True)
        options = [f"#SBATCH --job-name={sanitize(spec.name)}", f"#SBATCH --array=0-{max(len(lines) - 1, 0)}"]
        options.append(f"#SBATCH --output={logs}/%A_%a.out")
        options += [f"#SBATCH --{key}={value}" for key, value in spec.slurm.items()]
        body = [
            "#!/bin/bash",
            *options,
            f"# Sweep {spec.name}: one array task per line of {COMMANDS_FILE} (task id 0 = line 1).",
            f"# Submit with: sbatch {shlex.quote(str(spec.out_dir / SBATCH_FILE))}",
            "set -u",
            f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(commands))})',
            'if [ -z "$line" ]; then echo "no line $((SLURM_ARRAY_TASK_ID + 1)) in commands.sh" >&2; exit 2; fi',
            'eval "$line"',
        ]
        sbatch = spec.out_dir / SBATCH_FILE
        atomic_write_text(sbatch, "\n".join(body) + "\n")
        written.append(sbatch)
    return written


# --------------------------------------------------------------------------- runner


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def select_runs(spec: SweepSpec, runs: Sequence[Run], only: Iterable[str]) -> list[Run]:
    """Keep the runs matching ``AXIS=LABEL`` filters (same axis: any of; different axes: all)."""
    wanted: dict[str, set[str]] = collections.defaultdict(set)
    axes = {axis.name: axis for axis in spec.axes}
    for item in only:
        axis_name, sep, label = item.partition("=")
        if not sep or axis_name not in axes:
            raise SweepError(f"--only {item!r}: expected AXIS=LABEL with AXIS one of {list(axes)}")
        matches = [lab for lab in axes[axis_name].labels if label in (lab, sanitize(lab))]
        if not matches:
            raise SweepError(f"--only {item!r}: axis {axis_name!r} has labels {axes[axis_name].labels}")
        wanted[axis_name].update(matches)
    return [run for run in runs if all(run.labels[a] in labels for a, labels in wanted.items())]


def _tee(proc: subprocess.Popen[bytes], log: Any, echo: Optional[TextIO]) -> collections.deque[bytes]:
    """Copy the child's output to ``log`` (and ``echo``); keep the last lines for the failure record."""
    tail: collections.deque[bytes] = collections.deque(maxlen=_LOG_TAIL_LINES)
    partial = b""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        log.write(chunk)
        log.flush()
        if echo is not None:
            buffer = getattr(echo, "buffer", None)
            if buffer is not None:
                echo.flush()
                buffer.write(chunk)
                buffer.flush()
            else:
                echo.write(chunk.decode("utf-8", errors="replace"))
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        tail.extend(lines)
    if partial:
        tail.append(partial)
    return tail


def execute_run(
    spec: SweepSpec,
    run: Run,
    launcher: Optional[Sequence[str]] = None,
    echo: Optional[TextIO] = None,
) -> dict[str, Any]:
    """Run one run as a subprocess from the cwd; return its status record (also in status.json).

    A non-zero exit, or a zero exit without ``metrics.json``, marks the run failed
    (``FAILED`` + status.json). Ctrl-C stops the child, records ``interrupted`` and re-raises.
    """
    run_dir = spec.out_dir / run.name
    (run_dir / FAILED_FILE).unlink(missing_ok=True)
    argv = launch_command(spec, run_dir, launcher)
    started = time.monotonic()
    record: dict[str, Any] = {"status": "running", "started_utc": _now(), "argv": argv, "pid": os.getpid()}
    atomic_write_json(run_dir / STATUS_FILE, record)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(run_dir / LOG_FILE, "ab") as log:
        log.write(f"=== {record['started_utc']} {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            tail = _tee(proc, log, echo)
            returncode = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            record.update(status="interrupted", duration_s=time.monotonic() - started)
            atomic_write_json(run_dir / STATUS_FILE, record)
            raise
    record["returncode"] = returncode
    record["duration_s"] = round(time.monotonic() - started, 3)
    record["finished_utc"] = _now()
    if returncode == 0 and (run_dir / METRICS_FILE).is_file():
        record["status"] = "finished"
    else:
        reason = f"exit code {returncode}" if returncode != 0 else f"exit code 0 but no {METRICS_FILE} was written"
        log_tail = b"\n".join(tail).decode("utf-8", errors="replace")
        record.update(status="failed", reason=reason, log_tail=log_tail)
        atomic_write_text(run_dir / FAILED_FILE, f"{reason}\n--- last lines of {LOG_FILE} ---\n{log_tail}\n")
    atomic_write_json(run_dir / STATUS_FILE, record)
    return record


def run_sweep(
    spec: SweepSpec,
    *,
    only: Sequence[str] = (),
    retry_failed: bool = False,
    dry_run: bool = False,
    script: Optional[str] = None,
    launcher: Optional[Sequence[str]] = None,
    echo_output: bool = True,
    out: Optional[TextIO] = None,
) -> int:
    """Expand, write configs and the manifest, then run (or only script) the selected runs.

    Args:
        spec: the parsed sweep.
        only: ``AXIS=LABEL`` filters (see :func:`select_runs`).
        retry_failed: rerun runs marked failed by an earlier sweep.
        dry_run: write configs, manifest and ``commands.sh`` only.
        script: ``"bash"`` or ``"slurm"``: like ``dry_run``, plus ``sweep.sbatch`` for slurm.
        launcher: argv template replacing the sweep's (tests inject fake trainers here).
        echo_output: also copy each run's output to ``out``.
        out: where progress lines go (default: sys.stdout).

    Returns:
        0 when every selected run is finished (or only scripts were written), 1 when some
        failed, 130 when interrupted.
    """
    out = out if out is not None else sys.stdout
    runs = expand_grid(spec)
    selected = select_runs(spec, runs, only)
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    hashes = prepare_runs(spec, runs)
    write_scripts(spec, selected, script or "bash", launcher)
    manifest_extra: dict[str, dict[str, Any]] = {name: {"config_sha256": sha} for name, sha in hashes.items()}
    manifest = write_manifest(spec, runs, manifest_extra)
    say = lambda text: print(text, file=out, flush=True)  # noqa: E731

    if dry_run or script:
        say(f"sweep {spec.name}: {len(runs)} runs, configs in {spec.out_dir}")
        for path in [manifest, spec.out_dir / COMMANDS_FILE] + (
            [spec.out_dir / SBATCH_FILE] if script == "slurm" else []
        ):
            say(f"  wrote {path}")
        if script == "slurm":
            say(f"submit with: sbatch {spec.out_dir / SBATCH_FILE}")
        return 0

    say(f"sweep {spec.name}: {len(selected)} of {len(runs)} runs selected, output in {spec.out_dir}")
    runnable = ("pending", "failed") if retry_failed else ("pending",)
    todo = [r for r in selected if run_status(spec.out_dir / r.name) in runnable]
    t0 = time.monotonic()
    durations: list[float] = []
    executed = 0
    for index, run in enumerate(selected, start=1):
        run_dir = spec.out_dir / run.name
        head = f"[{index}/{len(selected)}] {run.name}"
        status = run_status(run_dir)
        if status == "finished":
            say(f"{head}: finished earlier, skipped")
            continue
        if status == "failed" and not retry_failed:
            say(f"{head}: failed earlier ({failure_info(run_dir)['reason']}), skipped; --retry-failed reruns it")
            continue
        remaining = len(todo) - executed
        eta = _fmt_seconds(sum(durations) / len(durations) * remaining) if durations else "?"
        say(f"{head}: running (elapsed {_fmt_seconds(time.monotonic() - t0)}, ETA {eta}) log: {run_dir / LOG_FILE}")
        try:
            record = execute_run(spec, run, launcher, out if echo_output else None)
        except KeyboardInterrupt:
            write_manifest(spec, runs, manifest_extra)
            say(f"{head}: interrupted; rerun the sweep to continue (finished runs are kept)")
            return 130
        executed += 1
        durations.append(record["duration_s"])
        manifest_extra[run.name].update({k: record[k] for k in ("duration_s", "returncode") if k in record})
        write_manifest(spec, runs, manifest_extra)
        if record["status"] == "finished":
            say(f"{head}: finished in {_fmt_seconds(record['duration_s'])}")
        else:
            say(
                f"{head}: FAILED ({record['reason']}) after {_fmt_seconds(record['duration_s'])}; see {run_dir / FAILED_FILE}"
            )

    statuses = {run.name: run_status(spec.out_dir / run.name) for run in selected}
    counts = collections.Counter(statuses.values())
    say(
        f"sweep {spec.name} done in {_fmt_seconds(time.monotonic() - t0)}: "
        f"{counts['finished']} finished, {counts['failed']} failed, {counts['pending']} pending"
    )
    for name, status in statuses.items():
        if status == "failed":
            say(f"  failed: {name} ({failure_info(spec.out_dir / name)['reason']})")
    return 1 if counts["failed"] or counts["pending"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsvlm sweep",
        description="Expand a sweep file into runs, write their configs and run them one after another.",
    )
    parser.add_argument("sweep", help="sweep YAML file (base recipe + axes of overrides)")
    parser.add_argument("--out", help="output folder (default: the sweep file's out_dir)")
    parser.add_argument("--dry-run", action="store_true", help="only write configs, sweep.json and commands.sh")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AXIS=LABEL",
        help="run only runs with this label (repeatable; same axis: any, different axes: all)",
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


if __name__ == "__main__":
    sys.exit(sweep_main(sys.argv[1:]))
