"""``rsvlm table``: aggregation against statistics computed independently, the three formats, the plot."""

from __future__ import annotations

import csv
import io
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from rsvlm.experiments.runrecord import write_run_record
from rsvlm.experiments.sweep import SweepSpec, expand_grid, parse_sweep, run_sweep
from rsvlm.experiments.table import (
    TableError,
    aggregate,
    collect,
    metric_key,
    plot,
    table_main,
    to_csv,
    to_latex,
    to_markdown,
)

METRICS = ["F1", "Recall", "Precision", "OA", "IoU"]
SP = ["w/o SP", "w/ SP_v2"]  # the underscore checks LaTeX escaping
FUSION = ["w/o MSAM", "w/ MSAM"]

# (spectral_prompt, fusion) -> per seed 0, 1, 2: finished / failed / pending
PLAN = {
    (SP[0], FUSION[0]): ["finished", "finished", "finished"],
    (SP[0], FUSION[1]): ["finished", "finished", "pending"],
    (SP[1], FUSION[0]): ["failed", "failed", "failed"],
    (SP[1], FUSION[1]): ["finished", "failed", "pending"],
}


def make_sweep(root: Path, axes: dict, table: dict | None = None) -> SweepSpec:
    """Dry-run a sweep into root/out (configs + manifest), as `rsvlm sweep --dry-run` would."""
    base = root / "base.yaml"
    base.write_text(yaml.safe_dump({"seed_everything": 0, "model": {"init_args": {}}}))
    raw = {"base": "base.yaml", "name": "components", "out_dir": str(root / "out"), "axes": axes, "table": table or {}}
    spec = parse_sweep(raw, root / "sweep.yaml")
    (root / "sweep.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run_sweep(spec, dry_run=True, out=io.StringIO()) == 0
    return spec


@pytest.fixture
def components(tmp_path):
    """A Table VII-like sweep with fixture metrics; returns (sweep_dir, reference values)."""
    axes = {
        "spectral_prompt": {label: {"data.template": label} for label in SP},
        "fusion": {label: {"model.fusion": label} for label in FUSION},
        "seed": [0, 1, 2],
    }
    spec = make_sweep(tmp_path, axes)
    sweep_dir = spec.out_dir
    rng = np.random.default_rng(0)
    reference: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in PLAN}
    for run in expand_grid(spec):
        key = (run.labels["spectral_prompt"], run.labels["fusion"])
        status = PLAN[key][run.values["seed"]]
        run_dir = sweep_dir / run.name
        if status == "finished":
            metrics = {f"test/{m}": float(rng.uniform(0.5, 0.95)) for m in METRICS}
            extra = {
                "runtime_s": float(rng.uniform(10, 20)),
                "peak_memory_mb": 100.0,
                "params_total": 2_500_000,
                "params_trainable": 12_000,
            }
            write_run_record(run_dir, metrics, None, extra)
            reference[key].append({**metrics, **extra})
        elif status == "failed":
            (run_dir / "FAILED").write_text("exit code 1\n")
    return sweep_dir, reference


def parse_pm(text: str) -> tuple[float, float | None]:
    mean, _, std = text.partition(" ± ")
    return float(mean), (float(std) if std else None)


def markdown_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_collect_reads_statuses(components):
    sweep_dir, _ = components
    results = collect(sweep_dir)
    assert len(results) == 12
    expected = [status for key in PLAN for status in PLAN[key]]
    assert [r.status for r in results] == expected
    failed = next(r for r in results if r.status == "failed")
    assert failed.returncode == 1 and failed.metrics == {}


def test_aggregate_matches_independent_statistics(components):
    sweep_dir, reference = components
    table = aggregate(collect(sweep_dir), rows=["spectral_prompt", "fusion"], seeds_axis="seed", metrics=METRICS)
    assert [tuple(row.labels.values()) for row in table.rows] == list(PLAN)
    for row in table.rows:
        key = (row.labels["spectral_prompt"], row.labels["fusion"])
        values = reference[key]
        assert (row.n_finished, row.n_failed, row.n_pending) == tuple(
            PLAN[key].count(s) for s in ("finished", "failed", "pending")
        )
        for metric in METRICS:
            cell = row.cells[metric]
            samples = [v[f"test/{metric}"] for v in values]
            assert cell.n == len(samples)
            if not samples:
                assert cell.mean is None and cell.std is None
                continue
            assert cell.mean == pytest.approx(statistics.mean(samples), rel=1e-12)
            if len(samples) > 1:
                assert cell.std == pytest.approx(statistics.stdev(samples), rel=1e-9)  # sample std, ddof=1
            else:
                assert cell.std is None
        if values:
            assert row.extras["runtime_s"].mean == pytest.approx(statistics.mean(v["runtime_s"] for v in values))


def test_markdown_layout(components):
    sweep_dir, reference = components
    table = aggregate(collect(sweep_dir), seeds_axis="seed")  # default rows: all but the seeds axis
    header, *body = markdown_rows(to_markdown(table))
    assert header[:7] == ["spectral_prompt", "fusion", *METRICS]
    assert len(body) == len(PLAN)
    for line in body:
        key = (line[0], line[1])
        values = reference[key]
        status = line[header.index("status")]
        assert line[header.index("runs")] == f"{len(values)}/3"
        if not values:
            assert line[2:7] == ["failed"] * 5 and status == "3 failed"
            continue
        for metric in METRICS:
            samples = [100 * v[f"test/{metric}"] for v in values]
            mean, std = parse_pm(line[header.index(metric)])
            assert mean == pytest.approx(statistics.mean(samples), abs=0.0051)
            if len(samples) > 1:
                assert std == pytest.approx(statistics.stdev(samples), abs=0.0051)
            else:
                assert std is None  # one seed: plain value
            assert re.fullmatch(r"\d+\.\d\d( ± \d+\.\d\d)?", line[header.index(metric)])
        assert status == {3: "ok", 2: "1 pending", 1: "1 failed, 1 pending"}[len(values)]
    assert "2.50M" in body[0] and "12.00K" in body[0]


def test_csv_round_trip(components):
    sweep_dir, reference = components
    table = aggregate(collect(sweep_dir), seeds_axis="seed")
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert len(rows) == len(PLAN)
    for row in rows:
        values = reference[(row["spectral_prompt"], row["fusion"])]
        assert int(row["n_finished"]) == len(values)
        for metric in METRICS:
            samples = [100 * v[f"test/{metric}"] for v in values]
            if not samples:
                assert row[f"{metric} (%)"] == "" and row[f"{metric} std (%)"] == ""
                continue
            assert float(row[f"{metric} (%)"]) == pytest.approx(statistics.mean(samples), rel=1e-12)
            if len(samples) > 1:
                assert float(row[f"{metric} std (%)"]) == pytest.approx(statistics.stdev(samples), rel=1e-9)
    assert rows[2]["status"] == "3 failed"


def test_pending_cells(tmp_path):
    sweep_dir = make_sweep(tmp_path, {"fusion": {label: {} for label in FUSION}}).out_dir
    header, *body = markdown_rows(to_markdown(aggregate(collect(sweep_dir))))
    assert [line[header.index("F1")] for line in body] == ["pending", "pending"]
    assert [line[header.index("status")] for line in body] == ["1 pending", "1 pending"]


def test_latex_booktabs(components):
    sweep_dir, _ = components
    latex = to_latex(aggregate(collect(sweep_dir), seeds_axis="seed"))
    lines = latex.splitlines()
    assert lines[1].startswith(r"\begin{tabular}{ll") and lines[-1] == r"\end{tabular}"
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert lines.index(r"\toprule") < lines.index(r"\midrule")
    assert len(body) == len(PLAN)
    assert all(line.endswith(r" \\") for line in body)
    assert body[0].startswith("w/o SP & w/o MSAM & ") and r"$\pm$" in body[0]
    assert body[2].startswith(r"w/ SP\_v2 & w/o MSAM & failed & ")
    assert "±" not in latex.split("\n", 1)[1]  # only the caption comment uses the Unicode sign
    columns = len(lines[1][len(r"\begin{tabular}{") : -1])
    assert all(len(line[: -len(r" \\")].split(" & ")) == columns for line in body)


def test_layout_errors(components):
    sweep_dir, _ = components
    results = collect(sweep_dir)
    with pytest.raises(TableError, match=r"axes \['fusion'\] vary"):
        aggregate(results, rows=["spectral_prompt"], seeds_axis="seed")
    with pytest.raises(TableError, match="mIoU"):
        aggregate(results, seeds_axis="seed", metrics=["mIoU"])
    with pytest.raises(TableError, match="not an axis"):
        aggregate(results, seeds_axis="seeds")
    assert metric_key({"test/F1": 1, "val/iou": 2}, "F1") == "test/F1"
    assert metric_key({"val/iou": 2}, "IoU") == "val/iou"
    assert metric_key({"F1": 1}, "IoU") is None


def test_a_missing_or_broken_manifest_is_a_table_error(tmp_path):
    with pytest.raises(TableError, match="no sweep manifest"):
        collect(tmp_path)
    (tmp_path / "sweep.json").write_text("{not json")
    with pytest.raises(TableError, match="not valid JSON"):
        collect(tmp_path)
    (tmp_path / "sweep.json").write_text('{"name": "x"}')
    with pytest.raises(TableError, match="`runs` list"):
        collect(tmp_path)
    assert table_main([str(tmp_path)]) == 2


def test_plot_and_table_main(tmp_path, monkeypatch, capsys):
    axes = {
        "fusion": {label: {} for label in FUSION},
        "num_tokens": {"key": "model.tokens", "values": [1, 2, 4, 8]},
        "seed": [0, 1],
    }
    sweep_dir = make_sweep(
        tmp_path, axes, table={"columns": ["F1", "IoU"], "plot": {"x": "num_tokens", "y": "F1"}}
    ).out_dir
    rng = np.random.default_rng(1)
    for entry in collect(sweep_dir):
        write_run_record(entry.dir, {"test/F1": float(rng.uniform()), "test/IoU": float(rng.uniform())}, None, {})

    png = plot(collect(sweep_dir), "num_tokens", "F1", tmp_path / "fig.png", seeds_axis="seed")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.image import imread

    assert imread(png).shape[2] in (3, 4)

    monkeypatch.chdir(tmp_path)
    assert table_main(["sweep.yaml", "--out", str(tmp_path / "res" / "t")]) == 0  # the sweep file works too
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "res" / "t.md").read_text()
    header, *body = markdown_rows(printed)
    assert header[:4] == ["fusion", "num_tokens", "F1", "IoU"] and len(body) == 8
    assert (tmp_path / "res" / "t.csv").is_file() and (tmp_path / "res" / "t.tex").is_file()
    assert (tmp_path / "res" / "t_F1_vs_num_tokens.png").read_bytes()[:4] == b"\x89PNG"

    assert (
        table_main([str(sweep_dir), "--format", "csv", "--rows", "fusion,num_tokens", "--metrics", "IoU", "--no-extra"])
        == 0
    )
    rows = list(csv.DictReader(io.StringIO((sweep_dir / "table.csv").read_text())))
    assert len(rows) == 8 and "IoU (%)" in rows[0] and "F1 (%)" not in rows[0]
    assert not (sweep_dir / "table.tex").exists()
    assert table_main([str(sweep_dir), "--rows", "fusion"]) == 2  # num_tokens would be averaged: refused


@pytest.mark.parametrize(
    ("recorded", "said"),
    [
        (["image", "image"], "scores averaged over images (per image)"),
        (["global", None], "scores from one confusion matrix over the split (global)"),
        (["global", "image"], "runs differ in averaging (global / image)"),
        ([None, None], None),
    ],
)
def test_caption_says_how_the_runs_averaged_their_scores(tmp_path, recorded, said):
    spec = make_sweep(tmp_path, {"seed": [0, 1]}, {"seeds_axis": "seed"})
    for run, average in zip(expand_grid(spec), recorded):
        extra = {"metric_average": average} if average else {}
        write_run_record(spec.out_dir / run.name, {f"test/{m}": 0.5 for m in METRICS}, None, extra)
    markdown = to_markdown(aggregate(collect(spec.out_dir), rows=[], seeds_axis="seed"))
    caption = markdown.splitlines()[0]
    if said is None:
        assert "averag" not in caption and "confusion" not in caption
    else:
        assert said in caption


# ------------------------------------------------------------------ column groups (Tables II–VI side by side)
METHODS = ["Index_Otsu", "LISA", "SPEX"]
DATASETS = ["segmunich", "gid15", "spacenet2"]


@pytest.fixture
def per_dataset(tmp_path):
    """methods × datasets × 2 seeds, with (SPEX, gid15) pending; returns (sweep_dir, reference)."""
    axes = {
        "method": {m: {"model.name": m} for m in METHODS},
        "dataset": {d: {"data.init_args.datasets": [d]} for d in DATASETS},
        "seed": [0, 1],
    }
    spec = make_sweep(tmp_path, axes, table={"groups": "dataset", "seeds_axis": "seed"})
    rng = np.random.default_rng(5)
    reference: dict[tuple[str, str], list[dict[str, float]]] = {}
    for run in expand_grid(spec):
        key = (run.labels["method"], run.labels["dataset"])
        reference.setdefault(key, [])
        if key == ("SPEX", "gid15"):
            continue
        metrics = {f"test/{m}": float(rng.uniform(0.3, 0.95)) for m in METRICS}
        write_run_record(spec.out_dir / run.name, metrics, None, {"metric_average": "image"})
        reference[key].append(metrics)
    return spec.out_dir, reference


def _expected(reference, method, dataset, metric):
    samples = [100 * v[f"test/{metric}"] for v in reference[(method, dataset)]]
    return statistics.mean(samples), statistics.stdev(samples)


def test_grouped_markdown_places_every_cell(per_dataset, monkeypatch, capsys):
    sweep_dir, reference = per_dataset
    assert table_main([str(sweep_dir), "--format", "all"]) == 0  # groups from the sweep's table hint
    markdown = capsys.readouterr().out
    assert "columns grouped by `dataset`" in markdown.splitlines()[0]
    assert "averaged over images" in markdown.splitlines()[0]
    header, *body = markdown_rows(markdown)
    assert header[: 1 + len(METRICS) * len(DATASETS)] == ["method"] + [f"{d}: {m}" for d in DATASETS for m in METRICS]
    assert [line[0] for line in body] == METHODS
    for line in body:
        for dataset in DATASETS:
            for metric in METRICS:
                text = line[header.index(f"{dataset}: {metric}")]
                if not reference[(line[0], dataset)]:
                    assert text == "pending"
                    continue
                mean, std = parse_pm(text)
                expected_mean, expected_std = _expected(reference, line[0], dataset, metric)
                assert mean == pytest.approx(expected_mean, abs=0.0051)
                assert std == pytest.approx(expected_std, abs=0.0051)
    assert body[2][header.index("runs")] == "4/6" and body[2][header.index("status")] == "2 pending"

    rows = list(csv.DictReader(io.StringIO((sweep_dir / "table.csv").read_text())))
    for row in rows:
        for dataset in DATASETS:
            for metric in METRICS:
                value = row[f"{dataset}: {metric} (%)"]
                if not reference[(row["method"], dataset)]:
                    assert value == ""
                    continue
                assert float(value) == pytest.approx(_expected(reference, row["method"], dataset, metric)[0], rel=1e-12)


def test_grouped_latex_has_multicolumn_headers(per_dataset):
    sweep_dir, reference = per_dataset
    table = aggregate(collect(sweep_dir), seeds_axis="seed", groups="dataset")
    lines = to_latex(table).splitlines()
    top = lines.index(r"\toprule")
    groups_line, rules, names = lines[top + 1 : top + 4]
    n = len(METRICS)
    assert groups_line.split(" & ")[:4] == ["", *(rf"\multicolumn{{{n}}}{{c}}{{{d}}}" for d in DATASETS)]
    assert rules == " ".join(rf"\cmidrule(lr){{{2 + i * n}-{1 + (i + 1) * n}}}" for i in range(len(DATASETS)))
    assert names.split(" & ")[: 1 + n * len(DATASETS)] == ["method", *METRICS * len(DATASETS)]
    columns = len(lines[1][len(r"\begin{tabular}{") : -1])
    # the group line spans the columns: row axes + one multicolumn per group + the rest
    assert len(groups_line[: -len(r" \\")].split(" & ")) == columns - (n - 1) * len(DATASETS)
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    for line in body:
        cells = line[: -len(r" \\")].split(" & ")
        assert len(cells) == columns
        method = cells[0].replace(r"\_", "_")  # LaTeX-escaped label
        for i, dataset in enumerate(DATASETS):
            f1 = cells[1 + i * n]
            if reference[(method, dataset)]:
                assert float(f1.split(" $\\pm$ ")[0]) == pytest.approx(
                    _expected(reference, method, dataset, "F1")[0], abs=0.0051
                )
            else:
                assert f1 == "pending"


def test_group_axis_errors(per_dataset):
    sweep_dir, _ = per_dataset
    results = collect(sweep_dir)
    with pytest.raises(TableError, match="column-group axis 'data' is not an axis"):
        aggregate(results, seeds_axis="seed", groups="data")
    with pytest.raises(TableError, match="cannot also be a row axis"):
        aggregate(results, rows=["method", "dataset"], seeds_axis="seed", groups="dataset")
    with pytest.raises(TableError, match=r"axes \['dataset'\] vary"):
        aggregate(results, seeds_axis="seed", groups=None, rows=["method"])
    assert table_main([str(sweep_dir), "--groups", "none", "--format", "markdown"]) == 0  # dataset becomes a row axis
