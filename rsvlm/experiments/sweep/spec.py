"""The sweep file: its format, its validation, and the grid of runs it expands to.

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

Runs the cells depend on (a pre-training, a stage-1 run) are declared under ``needs:``, run
first and referred to by name in overrides, ``{needs.NAME}``: see
:mod:`rsvlm.experiments.sweep.needs`.

A plain-list axis named ``seed`` sets ``seed_everything`` (the one alias). ``{key, values}``
axes may add ``labels: [...]`` (needed when the values are not scalars).

Grid: the cartesian product of the axes in file order (first axis outermost). A run's
overrides are the sweep's ``overrides`` followed by each axis's, later ones winning (how an
override changes the recipe: :mod:`rsvlm.experiments.sweep.overrides`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from rsvlm.contracts import RsvlmError
from rsvlm.io.yaml_file import YamlFileError, read_yaml

if TYPE_CHECKING:
    from rsvlm.experiments.sweep.needs import Need

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
_SWEEP_KEYS = ("base", "name", "out_dir", "command", "needs", "overrides", "axes", "table", "launcher", "slurm")
_AXIS_ALIASES = {"seed": "seed_everything"}
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
    needs: list[Need] = field(default_factory=list)


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


def check_overrides(obj: Any, where: str) -> dict[str, Any]:
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
        overrides = [check_overrides(spec[label], f"{where}.{label}") for label in spec]
        axis = Axis(name, labels, overrides, list(labels))
    else:
        raise SweepError(
            f"{where}: expected a mapping label -> overrides, a list of values, or {{key: ..., values: [...]}}; "
            f"got {type(spec).__name__}"
        )
    check_overrides({k: None for o in axis.overrides for k in o}, where)
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
    from rsvlm.experiments.sweep.needs import parse_needs  # needs.py builds on this module

    needs = parse_needs(raw.get("needs"), where, path.parent, out_dir, axes)
    return SweepSpec(
        path=path,
        base=base,
        name=name,
        out_dir=out_dir,
        command=command,
        overrides=check_overrides(raw.get("overrides"), f"{where}: overrides"),
        axes=axes,
        table=table,
        launcher=tuple(launcher),
        slurm=slurm,
        needs=needs,
    )


def load_sweep(path: str | os.PathLike[str], out: Optional[str | os.PathLike[str]] = None) -> SweepSpec:
    """Read and validate a sweep file (see the module docstring for its format)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found")
    try:
        raw = read_yaml(path, "sweep file")
    except YamlFileError as err:
        raise SweepError(str(err)) from err
    return parse_sweep(raw, path, out)


def run_name(labels: dict[str, str]) -> str:
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
        runs.append(Run(run_name(labels), labels, values, overrides))
    return runs
