"""Per-subset SPIE data: the records' ``dataset`` field and SpieDataModule(datasets=...)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from rsvlm.data.baseline import IndexBaseline
from rsvlm.data.generated import GeneratedData
from rsvlm.data.raster import read_mask, read_raster
from rsvlm.data.spie.datamodule import SpieDataModule
from rsvlm.data.spie.records import RecordError, append_records, dataset_of_source, read_records
from rsvlm.experiments.runrecord import write_run_record
from rsvlm.experiments.sweep import expand_grid, parse_sweep, run_sweep
from rsvlm.experiments.table import table_main

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
NAMES = ("segmunich", "gid15")
METRICS = ("F1", "Recall", "Precision", "OA", "IoU")


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> Path:
    """A generated build whose records alternate between two datasets; returns the records file."""
    gen = GeneratedData(n_train=4, n_val=2, n_test=2, size=32, seed=3)
    dm = SpieDataModule(generate=gen, image_size=32)
    dm.prepare_data()
    folder = tmp_path_factory.mktemp("subsets") / "spie"
    shutil.copytree(Path(dm.generated_dir()) / "spie", folder)
    path = folder / "spie.jsonl"
    records = [replace(r, dataset=NAMES[i % 2]) for i, r in enumerate(read_records(path))]
    path.unlink()
    append_records(path, records)
    return path


def _brute_force(path: Path, name: str) -> dict[str, set[tuple[str, str]]]:
    """split -> {(image file name, category)} of the file's lines whose dataset is ``name``."""
    out: dict[str, set[tuple[str, str]]] = {}
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d["dataset"] == name:
            out.setdefault(d["split"], set()).add((Path(d["image"]).name, d["category"]))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_filter_keeps_exactly_the_datasets_records(two_datasets, name):
    expected = _brute_force(two_datasets, name)
    assert set(expected) == {"train", "val", "test"}  # the fixture covers every split
    dm = SpieDataModule(records=str(two_datasets), image_size=32, datasets=[name])
    dm.setup(None)
    for split, keys in expected.items():
        got = {(Path(r.image).name, r.category) for r in dm.datasets[split].records}
        assert got == keys, split
        assert len(dm.datasets[split]) == len(keys)
        assert {r.dataset for r in dm.datasets[split].records} == {name}


def test_no_filter_and_both_names_keep_everything(two_datasets):
    n_lines = len(two_datasets.read_text().splitlines())
    for datasets in (None, list(NAMES)):
        dm = SpieDataModule(records=str(two_datasets), image_size=32, datasets=datasets)
        dm.setup(None)
        assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == n_lines


def test_unknown_dataset_is_a_one_line_error_listing_the_names(two_datasets):
    dm = SpieDataModule(records=str(two_datasets), image_size=32, datasets=["segmunich", "Chesapeake"])
    with pytest.raises(RecordError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message and str(two_datasets) in message
    assert "'Chesapeake'" in message and "datasets present: gid15, segmunich" in message


def test_empty_selection_is_an_error(two_datasets):
    with pytest.raises(RecordError, match="no records left"):
        SpieDataModule(records=str(two_datasets), image_size=32, datasets=[]).setup("test")
    recs = read_records(two_datasets)
    category = next(r.category for r in recs if r.dataset == "gid15")
    path = two_datasets.parent / "without-one-category.jsonl"  # beside stats.json
    append_records(path, [r for r in recs if not (r.dataset == "gid15" and r.category == category)])
    dm = SpieDataModule(records=str(path), image_size=32, datasets=["gid15"], categories=[category])
    with pytest.raises(RecordError, match=rf"no records of categories \['{category}'\] among datasets \['gid15'\]"):
        dm.setup("test")


def test_dataset_field_round_trips_and_older_files_infer_it(tmp_path):
    base = {
        "image": "a.tif",
        "mask": "a_water.tif",
        "category": "water",
        "bands": ["green", "nir"],
        "spectral_prompt": "",
        "instruction": "i",
        "response": "r",
        "split": "test",
    }
    lines = [
        {**base, "source": "segmunich-train"},  # default `<kind>-<folder>` name: the kind
        {**base, "source": "gid15"},
        {**base, "source": "binary-floods"},  # a binary source is its own dataset
        {**base, "source": "Sen1Floods11"},
        {**base, "source": "gid15-x", "dataset": "GID-15"},  # an explicit field wins
    ]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    recs = read_records(path)
    assert [r.dataset for r in recs] == ["segmunich", "gid15", "binary-floods", "Sen1Floods11", "GID-15"]
    assert [dataset_of_source(d["source"]) for d in lines[:4]] == [r.dataset for r in recs[:4]]
    out = tmp_path / "new.jsonl"
    append_records(out, recs)
    assert [json.loads(line)["dataset"] for line in out.read_text().splitlines()] == [r.dataset for r in recs]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**base, "source": "s", "dataset": 3}) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:1: field 'dataset'"):
        read_records(bad)


# ------------------------------------------------------------------ the index baseline as a table row


def _sweep(root: Path, records: Path | None, averages: dict[str, str]) -> Path:
    """methods × datasets with finished runs, as a per-subset sweep writes them; returns the sweep dir."""
    base = {"seed_everything": 0, "model": {"init_args": {}}, "data": {"init_args": {}}}
    if records is not None:
        base["data"]["init_args"]["records"] = str(records)
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    raw = {
        "base": "base.yaml",
        "name": "subsets",
        "out_dir": str(root / "out"),
        "axes": {
            "method": {"A": {}, "B": {}},
            "dataset": {d: {"data.init_args.datasets": [d]} for d in NAMES},
        },
        "table": {"groups": "dataset"},
    }
    spec = parse_sweep(raw, root / "sweep.yaml")
    assert run_sweep(spec, dry_run=True, out=io.StringIO()) == 0
    for run in expand_grid(spec):
        metrics = {f"test/{m}": 0.5 for m in METRICS}
        write_run_record(spec.out_dir / run.name, metrics, None, {"metric_average": averages[run.labels["dataset"]]})
    return spec.out_dir


def _sklearn_baseline(path: Path, dataset: str | None, average: str) -> list[float]:
    """F1, Recall, Precision, OA, IoU of index + Otsu on the dataset's test records, with sklearn."""
    per_image, ys, ps = [], [], []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if dataset not in (None, d["dataset"]) or d["split"] != "test":
            continue
        raster = read_raster(path.parent / d["image"])
        labels, label_valid = read_mask(path.parent / d["mask"], like=raster)
        valid = raster.valid & label_valid
        y = labels[valid] > 0
        p = IndexBaseline(d["category"], d["bands"]).predict(raster.data, valid)[valid]
        ys.append(y)
        ps.append(p)
        z = 1 if average == "image" else 0
        per_image.append(
            [
                f1_score(y, p, zero_division=z),
                recall_score(y, p, zero_division=z),
                precision_score(y, p, zero_division=z),
                accuracy_score(y, p),
                jaccard_score(y, p, zero_division=z),
            ]
        )
    assert per_image, dataset
    if average == "image":
        return list(np.mean(per_image, axis=0))
    y, p = np.concatenate(ys), np.concatenate(ps)
    return [
        f1_score(y, p, zero_division=0),
        recall_score(y, p, zero_division=0),
        precision_score(y, p, zero_division=0),
        accuracy_score(y, p),
        jaccard_score(y, p, zero_division=0),
    ]


@pytest.mark.parametrize("from_runs", [True, False])
def test_baseline_row_equals_index_otsu_scored_with_sklearn(two_datasets, tmp_path, capsys, from_runs):
    averages = {"segmunich": "image", "gid15": "global"}  # each group is averaged as its runs were
    sweep_dir = _sweep(tmp_path, two_datasets if from_runs else None, averages)
    argv = [str(sweep_dir), "--format", "csv", "--baseline"] + ([] if from_runs else [str(two_datasets)])
    assert table_main(argv) == 0
    assert "Index + Otsu" in capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "table.csv").read_text())))
    assert [r["method"] for r in rows] == ["A", "B", "Index + Otsu"]
    for dataset in NAMES:
        expected = _sklearn_baseline(two_datasets, dataset, averages[dataset])
        got = [float(rows[-1][f"{dataset}: {m} (%)"]) / 100 for m in METRICS]
        assert got == pytest.approx(expected, abs=1e-9), dataset
        assert rows[-1][f"{dataset}: F1 std (%)"] == ""
        assert float(rows[0][f"{dataset}: F1 (%)"]) == pytest.approx(50.0)  # the runs' cells are untouched


def test_baseline_errors(two_datasets, tmp_path, capsys):
    sweep_dir = _sweep(tmp_path, None, {"segmunich": "image", "gid15": "image"})
    assert table_main([str(sweep_dir), "--baseline"]) == 2
    assert "has no data.init_args.records; give --baseline RECORDS" in capsys.readouterr().err
    assert table_main([str(sweep_dir), "--baseline", str(tmp_path / "nope.jsonl")]) == 2
    assert "records file not found" in capsys.readouterr().err


def test_baseline_row_without_groups_from_a_recipe(two_datasets, tmp_path):
    """One set of columns: the baseline covers every test record the runs saw; a recipe names the file."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"init_args": {"records": str(two_datasets)}}}))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"seed_everything": 0, "model": {"init_args": {}}}))
    raw = {"base": "base.yaml", "name": "all", "out_dir": str(tmp_path / "out"), "axes": {"method": {"A": {}}}}
    spec = parse_sweep(raw, tmp_path / "sweep.yaml")
    assert run_sweep(spec, dry_run=True, out=io.StringIO()) == 0
    for run in expand_grid(spec):
        write_run_record(
            spec.out_dir / run.name, {f"test/{m}": 0.5 for m in METRICS}, None, {"metric_average": "image"}
        )
    assert table_main([str(spec.out_dir), "--format", "csv", "--baseline", str(recipe)]) == 0
    rows = list(csv.DictReader(io.StringIO((spec.out_dir / "table.csv").read_text())))
    assert rows[-1]["method"] == "Index + Otsu"
    got = [float(rows[-1][f"{m} (%)"]) / 100 for m in METRICS]
    assert got == pytest.approx(_sklearn_baseline(two_datasets, None, "image"), abs=1e-9)
