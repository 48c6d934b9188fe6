"""Runs a sweep depends on (a visual pre-training, a stage-1 run), named and run first.

A sweep file may declare, before its grid, the runs its cells need::

    needs:
      mvpnet:                                  # the name overrides refer to: {needs.mvpnet}
        recipe: ../../mvpnet.yaml              # relative to the sweep file
        out_dir: runs/mvpnet                   # its run folder (default: OUT/needs/<name>)
        checkpoint: checkpoints/last.ckpt      # what {needs.mvpnet} stands for, in its run folder
      stage1:
        recipe: ../../spex.yaml
        checkpoint: checkpoints/last.ckpt
        axes: [fusion]                         # one stage-1 run per label of these sweep axes,
                                               # with that label's overrides
        overrides:                             # may use {run_dir} and earlier needs
          model.init_args.stage: text
          model.init_args.encoder_init: "{needs.mvpnet}"
          trainer.callbacks.0.init_args.dirpath: "{run_dir}/checkpoints"
    overrides: {model.init_args.init_from: "{needs.stage1}"}

Tokens in override values (strings, also inside lists and mappings): ``{needs.NAME}`` is the
need's checkpoint (``<run folder>/<checkpoint>``), ``{needs.NAME.dir}`` its run folder, and
``{run_dir}`` the folder of the run being configured. Other braces (``best-{epoch}``) are left
alone. A need may refer only to needs declared before it, and only to needs whose ``axes`` it
has too (a cell has every axis).

A need run is *finished* like a cell (``metrics.json`` in its run folder) and then skipped; a
finished need without its checkpoint is an error. ``rsvlm sweep --need NAME=PATH`` points a
need at an existing checkpoint instead of running it. The checkpoint paths are known before
the needs run (the ``dirpath`` override above puts them there), so every config is final at
``--dry-run`` and ``commands.sh`` runs the needs' lines first.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from rsvlm.experiments.sweep.overrides import dump_config, resolve_config
from rsvlm.experiments.sweep.spec import Axis, Run, SweepError, SweepSpec, check_overrides, run_name, sanitize
from rsvlm.io.atomic import atomic_write_text

_NEED_KEYS = ("recipe", "out_dir", "checkpoint", "overrides", "axes")
_TOKEN = re.compile(r"\{(run_dir|needs\.([A-Za-z0-9_-]+)(\.dir)?)\}")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_CONFIG_FILE = "config.yaml"
_METRICS_FILE = "metrics.json"


@dataclass
class Need:
    """One declared need (see the module docstring); paths are absolute."""

    name: str
    recipe: Path
    out_dir: Path
    checkpoint: str
    overrides: dict[str, Any]
    axes: list[str]
    given: Optional[Path] = None


@dataclass(eq=False)  # compared and hashed by identity: one object per run folder
class NeedRun:
    """One run of a need: for a need with ``axes``, one per combination of their labels."""

    need: Need
    labels: dict[str, str]
    run_dir: Path
    raw_overrides: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    after: list[NeedRun] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``stage1`` or ``stage1[fusion=UperNet]``."""
        inner = ",".join(f"{axis}={label}" for axis, label in self.labels.items())
        return f"{self.need.name}[{inner}]" if inner else self.need.name

    @property
    def checkpoint(self) -> Path:
        """What ``{needs.NAME}`` stands for: the given path, or the checkpoint in the run folder."""
        return self.need.given if self.need.given is not None else self.run_dir / self.need.checkpoint

    def status(self) -> str:
        """``given``, ``finished`` (metrics.json), ``failed`` (FAILED) or ``pending``."""
        if self.need.given is not None:
            return "given"
        if (self.run_dir / _METRICS_FILE).is_file():
            return "finished"
        return "failed" if (self.run_dir / "FAILED").is_file() else "pending"


@dataclass
class Plan:
    """The needs' runs in order, the cells with their tokens replaced, and who needs what."""

    need_runs: list[NeedRun]
    cells: list[Run]
    cell_needs: dict[str, list[NeedRun]]

    def required(self, cells: Iterable[Run]) -> list[NeedRun]:
        """The need runs ``cells`` depend on, directly or through other needs, in run order."""
        wanted: set[NeedRun] = set()
        stack = [nr for cell in cells for nr in self.cell_needs[cell.name]]
        while stack:
            need_run = stack.pop()
            if need_run not in wanted:
                wanted.add(need_run)
                stack.extend(need_run.after)
        return [nr for nr in self.need_runs if nr in wanted]


def parse_needs(raw: Any, where: str, sweep_dir: Path, out_dir: Path, axes: Sequence[Axis]) -> list[Need]:
    """Validate the ``needs`` mapping of a sweep file (``where`` names the file in errors)."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise SweepError(f"{where}: `needs` must be a mapping of need name -> {{recipe, checkpoint, ...}}")
    axis_names = [axis.name for axis in axes]
    needs: list[Need] = []
    for name, spec in raw.items():
        here = f"{where}: needs.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise SweepError(f"{here}: a need's name may use letters, digits, `_` and `-` only")
        if not isinstance(spec, dict):
            raise SweepError(f"{here}: expected a mapping with keys {list(_NEED_KEYS)}")
        unknown = sorted(set(spec) - set(_NEED_KEYS))
        if unknown:
            raise SweepError(f"{here}: unknown keys {unknown}; expected some of {list(_NEED_KEYS)}")
        if not isinstance(spec.get("recipe"), str):
            raise SweepError(f"{here}.recipe: name the recipe to run (a path relative to the sweep file)")
        recipe = (sweep_dir / spec["recipe"]).resolve()
        if not recipe.is_file():
            raise SweepError(f"{here}.recipe: {spec['recipe']!r} not found (looked for {recipe})")
        checkpoint = spec.get("checkpoint")
        if not isinstance(checkpoint, str) or not checkpoint:
            raise SweepError(f"{here}.checkpoint: give the checkpoint's path inside the need's run folder")
        need_axes = spec.get("axes") or []
        if not isinstance(need_axes, list) or any(a not in axis_names for a in need_axes):
            raise SweepError(f"{here}.axes: expected a list of the sweep's axes {axis_names}, got {need_axes!r}")
        need_out = Path(spec["out_dir"]).resolve() if spec.get("out_dir") else out_dir / "needs" / sanitize(name)
        overrides = check_overrides(spec.get("overrides"), f"{here}.overrides")
        needs.append(Need(name, recipe, need_out, checkpoint, overrides, list(need_axes)))
    return needs


def give_needs(spec: SweepSpec, items: Sequence[str]) -> None:
    """Apply ``--need NAME=PATH``: the need is that existing checkpoint and is not run."""
    by_name = {need.name: need for need in spec.needs}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in by_name:
            raise SweepError(f"{spec.path}: --need {item!r}: expected NAME=PATH with NAME one of {list(by_name)}")
        given = Path(path).resolve()
        if not given.exists():
            raise SweepError(f"{spec.path}: need {name!r}: --need path {given} does not exist")
        by_name[name].given = given


def substitute(value: Any, lookup: Callable[[str, bool], str], run_dir: Path) -> Any:
    """``value`` with its ``{needs.NAME}``, ``{needs.NAME.dir}`` and ``{run_dir}`` tokens replaced."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(1) == "run_dir":
                return str(run_dir)
            return lookup(match.group(2), match.group(3) is not None)

        return _TOKEN.sub(replace, value)
    if isinstance(value, list):
        return [substitute(item, lookup, run_dir) for item in value]
    if isinstance(value, dict):
        return {key: substitute(item, lookup, run_dir) for key, item in value.items()}
    return value


def plan_needs(spec: SweepSpec, cells: Sequence[Run]) -> Plan:
    """Expand every need into its runs and replace the tokens of needs and cells.

    Raises:
        SweepError: a token names an unknown or later need, or one with an axis the referring
            run does not have; a need no cell uses.
    """
    axes = {axis.name: axis for axis in spec.axes}
    runs_by_need: dict[str, dict[tuple[tuple[str, str], ...], NeedRun]] = {}
    need_runs: list[NeedRun] = []

    def resolver(who: str, labels: dict[str, str], known: Sequence[str], used: list[NeedRun]):
        def lookup(name: str, want_dir: bool) -> str:
            if name not in known:
                why = "a need declared after it" if name in _names(spec) else "not a declared need"
                raise SweepError(f"{spec.path}: {who} refers to {{needs.{name}}}, {why}")
            need = next(n for n in spec.needs if n.name == name)
            missing = [a for a in need.axes if a not in labels]
            if missing:
                raise SweepError(
                    f"{spec.path}: {who} refers to {{needs.{name}}}, a need per {need.axes}, without axes {missing}"
                )
            need_run = runs_by_need[name][tuple((a, labels[a]) for a in need.axes)]
            used.append(need_run)
            return str(need_run.run_dir if want_dir else need_run.checkpoint)

        return lookup

    for index, need in enumerate(spec.needs):
        known = [n.name for n in spec.needs[:index]]
        runs_by_need[need.name] = {}
        choices = [range(len(axes[a].labels)) for a in need.axes]
        for choice in itertools.product(*choices):
            labels = {a: axes[a].labels[i] for a, i in zip(need.axes, choice)}
            folder = need.out_dir / run_name(labels) if labels else need.out_dir
            need_run = NeedRun(need, labels, folder)
            layers = [need.overrides] + [axes[a].overrides[i] for a, i in zip(need.axes, choice)]
            lookup = resolver(f"need {need_run.name}", labels, known, need_run.after)
            for layer in layers:
                for key, value in layer.items():
                    need_run.raw_overrides.pop(key, None)
                    need_run.raw_overrides[key] = value
            need_run.overrides = {k: substitute(v, lookup, folder) for k, v in need_run.raw_overrides.items()}
            runs_by_need[need.name][tuple(labels.items())] = need_run
            need_runs.append(need_run)

    names = [n.name for n in spec.needs]
    resolved, cell_needs = [], {}
    for cell in cells:
        used: list[NeedRun] = []
        lookup = resolver(f"run {cell.name}", cell.labels, names, used)
        overrides = {k: substitute(v, lookup, spec.out_dir / cell.name) for k, v in cell.overrides.items()}
        resolved.append(Run(cell.name, cell.labels, cell.values, overrides))
        cell_needs[cell.name] = list(dict.fromkeys(used))
    plan = Plan(need_runs, resolved, cell_needs)
    unused = [n.name for n in spec.needs if not any(nr.need is n for nr in plan.required(resolved))]
    if unused:
        raise SweepError(f"{spec.path}: needs {unused} are used by no override ({{needs.NAME}}); remove them")
    return plan


def _names(spec: SweepSpec) -> list[str]:
    return [n.name for n in spec.needs]


def check_ready(spec: SweepSpec, need_run: NeedRun) -> None:
    """A finished (or given) need must have its checkpoint; else a one-line SweepError."""
    status = need_run.status()
    if status in ("finished", "given") and not need_run.checkpoint.exists():
        raise SweepError(
            f"{spec.path}: need {need_run.name!r} is {status} but its checkpoint {need_run.checkpoint} is missing"
        )


def prepare_need_runs(spec: SweepSpec, need_runs: Sequence[NeedRun]) -> None:
    """Write each pending need run's ``config.yaml``; a finished one must match what the sweep
    now resolves when it recorded a config (a run made by hand without one is taken as is)."""
    for need_run in need_runs:
        if need_run.status() == "given":
            check_ready(spec, need_run)
            continue
        text = dump_config(resolve_config(need_run.need.recipe, need_run.overrides))
        config_path = need_run.run_dir / _CONFIG_FILE
        if need_run.status() == "finished":
            check_ready(spec, need_run)
            if config_path.is_file() and yaml.safe_load(config_path.read_text(encoding="utf-8")) != yaml.safe_load(
                text
            ):
                raise SweepError(
                    f"{spec.path}: need {need_run.name!r} finished in {need_run.run_dir} with another config than "
                    f"the sweep now resolves; move that folder away or give --need {need_run.need.name}=CKPT"
                )
            continue
        if not config_path.is_file() or config_path.read_text(encoding="utf-8") != text:
            atomic_write_text(config_path, text)


def relative(path: Path) -> str:
    """``path`` relative to the cwd when below it (shorter chain lines), else absolute."""
    try:
        return str(path.relative_to(os.getcwd()))
    except ValueError:
        return str(path)


def run_summary(config: dict[str, Any]) -> str:
    """One line of what a resolved config trains and where its weights start: the model's
    stages (``schedule`` or ``stage``), ``encoder_init``, ``init_from``, the data's
    ``datasets``, the metric averaging and sampled decoding, each when set (what the chain of
    a two-stage sweep has to show)."""
    model = (config.get("model") or {}).get("init_args") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    parts = []
    if model.get("schedule"):
        parts.append("stages " + " → ".join(f"{p['stage']} ({p['epochs']} ep.)" for p in model["schedule"]))
    elif model.get("stage"):
        parts.append(f"stage {model['stage']}")
    for key in ("encoder_init", "init_from"):
        if model.get(key):
            parts.append(f"{key} {relative(Path(model[key]))}")
    if data.get("datasets"):
        parts.append(f"datasets {data['datasets']}")
    if model.get("metric_average"):
        parts.append(f"metrics averaged per {model['metric_average']}")
    generation = model.get("generation") or {}
    if generation.get("do_sample"):
        parts.append(f"decoding: sampling T {generation.get('temperature')}, top-p {generation.get('top_p')}")
    return "; ".join(parts)
