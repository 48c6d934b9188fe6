"""The index baseline as a table row: spectral index + Otsu per image on the runs' test images.

``rsvlm table SWEEP --baseline [RECORDS]`` adds the row ``Index + Otsu``
(:class:`rsvlm.data.baseline.IndexBaseline`). For every column group (or once, for a table
without groups) it scores the baseline on the test split of the records the group's runs were
tested on:

* records file: ``RECORDS`` (a ``spie.jsonl``, or a recipe YAML whose ``data.init_args.records``
  names one), or, when ``--baseline`` is given without a value, the ``data.init_args.records``
  of the group's runs (their ``config.yaml`` in the sweep folder);
* datasets and categories: the runs' ``data.init_args.datasets`` and ``categories``; when the
  runs do not name datasets and the group label is a dataset of the records, that dataset;
* averaging: the runs' ``metric_average`` (from their ``metrics.json``, else their recipe's
  ``model.init_args.metric_average``, else ``global``), so the baseline is averaged as they are.

Each record is scored at its own resolution with its own bands (``bands`` field) and category;
the baseline has no seed, so its cells carry no ± std.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from rsvlm.contracts import RsvlmError
from rsvlm.data.base import canonical_split
from rsvlm.data.baseline import METRIC_NAMES, IndexBaseline, ScoreAccumulator
from rsvlm.data.indices import normalize_category
from rsvlm.data.raster import read_mask, read_raster
from rsvlm.data.spie.records import SpieRecord, read_records, select_datasets
from rsvlm.experiments.sweep import CONFIG_FILE
from rsvlm.experiments.table.results import RunResult, TableError
from rsvlm.experiments.table.stats import EXTRA_KEYS, Cell, Table, TableRow, metric_key
from rsvlm.io.yaml_file import YamlFileError, read_yaml

BASELINE_LABEL = "Index + Otsu"


def _data_args(config: dict[str, Any]) -> dict[str, Any]:
    data = config.get("data") or {}
    return dict(data.get("init_args", data)) if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = read_yaml(path)
    except (OSError, YamlFileError) as err:
        raise TableError(str(err)) from err
    return loaded if isinstance(loaded, dict) else {}


def records_of(source: str | os.PathLike[str]) -> Path:
    """The records file named by ``--baseline``: a records file, or a recipe naming one."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        records = _data_args(_read_yaml(path)).get("records")
        if not records:
            raise TableError(f"{path}: field data.init_args.records is not set; give the records file itself")
        path = Path(records)
    if not path.is_file():
        raise TableError(f"--baseline: records file not found: {path}")
    return path


def _run_config(run: RunResult) -> dict[str, Any]:
    path = run.dir / CONFIG_FILE
    return _read_yaml(path) if path.is_file() else {}


def _averaging(runs: Sequence[RunResult], configs: Sequence[dict[str, Any]], where: str) -> str:
    recorded = {str(r.metrics["metric_average"]) for r in runs if r.metrics.get("metric_average")}
    if not recorded:
        for config in configs:
            model = config.get("model") or {}
            value = (model.get("init_args", model) if isinstance(model, dict) else {}).get("metric_average")
            if value:
                recorded.add(str(value))
    if len(recorded) > 1:
        raise TableError(f"{where}: runs differ in metric_average ({', '.join(sorted(recorded))}); cannot match them")
    return recorded.pop() if recorded else "global"


def _test_records(
    runs: Sequence[RunResult], group: Optional[str], records: Optional[Path], where: str
) -> tuple[list[SpieRecord], Path, list[dict[str, Any]]]:
    configs = [_run_config(r) for r in runs]
    data = next((_data_args(c) for c in configs if _data_args(c)), {})
    if records is None:
        if not data.get("records"):
            raise TableError(
                f"{where}: the runs' config.yaml has no data.init_args.records; give --baseline RECORDS "
                "(the records file they were tested on)"
            )
        records = Path(data["records"])
        if not records.is_file():
            raise TableError(f"{where}: records file {records} (data.init_args.records of its runs) not found")
    everything = read_records(records)
    datasets = data.get("datasets")
    if datasets is None and group is not None and group in {r.dataset for r in everything}:
        datasets = [group]
    chosen = [r for r in select_datasets(everything, datasets, where=records) if canonical_split(r.split) == "test"]
    categories = data.get("categories")
    if categories is not None:
        wanted = {normalize_category(c) for c in categories}
        chosen = [r for r in chosen if normalize_category(r.category) in wanted]
    if not chosen:
        raise TableError(f"{where}: no test records in {records} for datasets {datasets} and categories {categories}")
    return chosen, records, configs


def score_records(records: Sequence[SpieRecord], average: str) -> dict[str, float | int]:
    """Index + Otsu scores over records (their images, masks, bands and categories)."""
    accumulator = ScoreAccumulator(average)  # type: ignore[arg-type]
    predictors: dict[tuple[str, tuple[str, ...]], IndexBaseline] = {}
    for record in records:
        raster = read_raster(record.image)
        labels, label_valid = read_mask(record.mask, like=raster)
        valid = raster.valid & label_valid
        key = (record.category, tuple(record.bands))
        if key not in predictors:
            predictors[key] = IndexBaseline(record.category, list(record.bands))
        accumulator.add(predictors[key].predict(raster.data, valid), np.asarray(labels) > 0, valid)
    return accumulator.result()


def _row_from_scores(table: Table, scores: dict[str, float | int], note: str) -> TableRow:
    cells = {}
    for name in table.metrics:
        key = metric_key({k: scores[k] for k in METRIC_NAMES}, name)
        cells[name] = Cell(None, None, 0) if key is None else Cell(float(scores[key]), None, 1)
    labels = {axis: (BASELINE_LABEL if i == 0 else "") for i, axis in enumerate(table.row_axes)}
    return TableRow(
        labels=labels,
        values={},
        cells=cells,
        extras={k: Cell(None, None, 0) for k in EXTRA_KEYS},
        n_finished=0,  # not made of runs: the runs column shows –
        n_failed=0,
        n_pending=0,
        note=note,
    )


def add_baseline_row(table: Table, results: Sequence[RunResult], records: Optional[str]) -> TableRow:
    """Append the ``Index + Otsu`` row to ``table`` (see the module docstring) and return it.

    Args:
        table: the aggregated table (its metrics and column groups decide the cells).
        results: the sweep's runs.
        records: ``--baseline``'s value (records file or recipe), or None to take each group's
            records file from its runs.

    Raises:
        TableError: no records file, a dataset missing from it, no test records, runs that
            disagree on the averaging, or a record the index cannot be computed on.
    """
    source = records_of(records) if records else None
    groups: list[Optional[str]] = list(table.group_labels) if table.group_axis else [None]
    parts: dict[str, TableRow] = {}
    scores: dict[str, float | int] = {}
    counts: list[str] = []
    for group in groups:
        runs = [r for r in results if group is None or r.labels.get(str(table.group_axis)) == group]
        where = "the sweep" if group is None else f"column group {group!r}"
        chosen, path, configs = _test_records(runs, group, source, where)
        average = _averaging(runs, configs, where)
        try:
            scores = score_records(chosen, average)
        except (RsvlmError, ValueError) as err:
            raise TableError(f"--baseline on {path}: {err}") from err
        counted = f"{scores['images']} images, {average} average"
        counts.append(counted if group is None else f"{group}: {counted}")
        if group is not None:
            parts[group] = _row_from_scores(table, scores, "baseline")
    row = _row_from_scores(table, scores, "baseline")
    if table.group_axis:
        row.parts = parts
        row.cells = {name: Cell(None, None, 0) for name in table.metrics}
    table.rows.append(row)
    table.notes.append(
        f"{BASELINE_LABEL}: spectral index > Otsu threshold of each image, on the runs' test images, "
        f"averaged as they are ({'; '.join(counts)})."
    )
    return row
