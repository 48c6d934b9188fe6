"""The GeoMag ablation recipes (``recipes/ablations/geomag/``): every cell expands, the paper forms
build on the meta device, and a demo cell of each runs through ``rsvlm sweep`` at a tiny size into
a table laid out as the paper's (Table 7: rows with / without MagCrop)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO

from rsvlm.experiments.sweep import (
    expand_grid,
    load_sweep,
    parse_sweep,
    plan_needs,
    resolve_config,
    run_sweep,
    sweep_main,
)
from rsvlm.experiments.table import metric_key, table_main

RECIPES = REPO / "recipes" / "ablations" / "geomag"
MAGCROP_ROWS = ["w/o MagCrop", "w/ MagCrop"]  # the paper's order: "GeoMag w/o MagCrop", then "GeoMag"
TABLE7_COLUMNS = [
    "P@0.5",
    "oIoU",
    "mIoU",
    "referring_classification/accuracy",
    "referring_classification/S-IoU",
    "vqa/accuracy",
]
CROSS_ROWS = ["TCP (K=4)", "[SEG] codebook (N=2)"]  # SPEX's bridge, then GeoMag's
RUN_LIMITS = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 1,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 1,
    "trainer.log_every_n_steps": 1,
    "model.init_args.generation": {"max_new_tokens": 8},
    "data.init_args.generate": {"n_train": 4, "n_val": 2, "n_test": 2},
}


def logged_test_metrics(config: dict[str, Any]) -> set[str]:
    """The ``test/...`` names a recipe's VisionLanguageModel logs (task_scoring's naming: the first
    task as ``test/<metric>``, the others as ``test/<task>/<metric>``)."""
    from rsvlm.models.task_scoring import build_task_metrics

    init = config["model"]["init_args"]
    tasks = init["tasks"]
    names = set()
    with warnings.catch_warnings():  # compute() before update() warns; only the keys matter
        warnings.simplefilter("ignore")
        for task, metric in build_task_metrics(tasks, init.get("task_metrics"), "global")["test"].items():
            if hasattr(metric, "compute"):
                prefix = "test" if task == tasks[0] else f"test/{task}"
                names |= {f"{prefix}/{key}" for key in metric.compute()}
    return names


def markdown_rows(markdown: str) -> list[list[str]]:
    """The header and body rows of a Markdown table, as lists of cell texts (the separator left out)."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("| ").split(" | ")] for line in lines]


def dry_run_cells(recipe: Path, runs: int, out: Path, capsys) -> tuple[Any, list[tuple[Any, dict[str, Any]]]]:
    """``rsvlm sweep --dry-run`` of ``recipe`` into ``out``, checked to announce and write ``runs`` cells,
    each config as the sweep resolves it; the spec and ``(run, written config)`` per cell."""
    assert sweep_main([str(recipe), "--dry-run", "--out", str(out)]) == 0
    assert f"{runs} runs, configs in {out}" in capsys.readouterr().out
    spec = load_sweep(recipe, out=out)
    grid = plan_needs(spec, expand_grid(spec)).cells  # {needs.NAME} put in, as the sweep writes them
    assert len(grid) == runs
    cells = []
    for run in grid:
        written = yaml.safe_load((out / run.name / "config.yaml").read_text())
        assert written == resolve_config(spec.base, run.overrides)
        cells.append((run, written))
    return spec, cells


@pytest.mark.parametrize(
    ("name", "runs"),
    [("magcrop-demo.yaml", 6), ("magcrop.yaml", 2), ("cross-system-demo.yaml", 6), ("cross-system.yaml", 2)],
)
def test_every_recipe_expands_with_a_dry_run(name, runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the paper sweeps' MVPNet need writes into runs/mvpnet of the cwd
    _, cells = dry_run_cells(RECIPES / name, runs, tmp_path / "sweep", capsys)
    for run, written in cells:
        model = written["model"]["init_args"]
        if name.startswith("magcrop"):
            with_crop = run.labels["magcrop"] == "w/ MagCrop"
            assert (model["cropper"] is not None) == with_crop
            assert model["cropper"] is None or model["cropper"]["class_path"] == "rsvlm.crops.magcrop.MagCrop"
        else:
            codebook = run.labels["bridge"].startswith("[SEG]")
            bridge = model["bridge"]["class_path"].rsplit(".", 1)[-1]
            assert bridge == ("SegCodebookBridge" if codebook else "TokenCompressionProjector")
            assert ("[SEG]" in model["llm"]["init_args"].get("special_tokens", [])) == codebook


@pytest.mark.parametrize("name", ["magcrop-demo.yaml", "magcrop.yaml"])
def test_magcrop_tables_have_table_7s_rows_and_logged_columns(name):
    spec = load_sweep(RECIPES / name)
    (axis,) = [a for a in spec.axes if a.name == "magcrop"]
    assert axis.labels == MAGCROP_ROWS
    assert spec.table["rows"] == ["magcrop"]
    assert spec.table["columns"][: len(TABLE7_COLUMNS)] == TABLE7_COLUMNS
    if name.endswith("-demo.yaml"):
        assert spec.table["seeds_axis"] == "seed"
        assert [a.labels for a in spec.axes if a.name == "seed"] == [["0", "1", "2"]]
    logged = logged_test_metrics(resolve_config(spec.base, {}))
    for column in spec.table["columns"]:
        assert metric_key(dict.fromkeys(logged, 0.0), column) == f"test/{column}", column


@pytest.mark.parametrize("name", ["magcrop.yaml", "cross-system.yaml"])
def test_paper_forms_build_on_the_meta_device(name):
    from rsvlm.bridges.positions import SpecialToken
    from rsvlm.bridges.seg_codebook import SegCodebookBridge
    from rsvlm.bridges.tcp import TokenCompressionProjector
    from rsvlm.crops.magcrop import MagCrop
    from rsvlm.experiments.summarize import build_model_on_meta

    spec = load_sweep(RECIPES / name, out="unused")
    for run in expand_grid(spec):
        model = build_model_on_meta(resolve_config(spec.base, run.overrides)["model"])
        label = next(iter(run.labels.values()))
        if name == "magcrop.yaml":
            assert isinstance(model.cropper, MagCrop) if label == "w/ MagCrop" else model.cropper is None
            assert isinstance(model.bridge, SegCodebookBridge) and model.bridge.num_tokens == 3
        elif label.startswith("[SEG]"):
            assert isinstance(model.bridge, SegCodebookBridge) and model.bridge.num_tokens == 3
            assert isinstance(model.positions, SpecialToken) and model.positions.count == 3
            assert model.bridge.out_dim == model.decoder.prompt_dim == 256
        else:
            assert isinstance(model.bridge, TokenCompressionProjector) and model.bridge.num_tokens == 4


def tiny_sweep(name: str, out: Path, extra: dict[str, Any]) -> Any:
    """The sweep file ``name`` as it is, with tiny run limits added to its overrides."""
    raw = yaml.safe_load((RECIPES / name).read_text())
    raw["overrides"] = {**(raw.get("overrides") or {}), **RUN_LIMITS, **extra}
    return parse_sweep(raw, RECIPES / name, out=out)


def run_tiny(spec: Any, only: list[str], tmp_path: Path, monkeypatch) -> None:
    """Run the selected cells as ``rsvlm sweep`` does (subprocesses of ``rsvlm fit``) from ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the runs import this checkout
    progress = io.StringIO()
    code = run_sweep(spec, only=only, echo_output=False, out=progress)
    failed = sorted(spec.out_dir.glob("*/FAILED"))
    assert code == 0, progress.getvalue() + "".join(p.read_text()[-3000:] for p in failed)


def printed_table(sweep_dir: Path, capsys, *options: str) -> tuple[list[str], list[list[str]]]:
    """``rsvlm table SWEEP_DIR [OPTIONS]`` as printed: header and body rows of the Markdown table."""
    capsys.readouterr()
    assert table_main([str(sweep_dir), "--format", "markdown", *options]) == 0
    header, *body = markdown_rows(capsys.readouterr().out)
    return header, body


def cell_text(metrics: dict[str, Any], column: str) -> str:
    """How ``rsvlm table`` prints one run's metric: a percentage with two decimals."""
    return f"{float(metrics[metric_key(metrics, column)]) * 100:.2f}"


@pytest.mark.slow
def test_magcrop_demo_runs_and_tables_as_table_7(tmp_path, monkeypatch, capsys):
    spec = tiny_sweep("magcrop-demo.yaml", tmp_path / "magcrop-demo", {})
    run_tiny(spec, ["seed=0"], tmp_path, monkeypatch)
    header, body = printed_table(spec.out_dir, capsys)
    columns = spec.table["columns"]
    assert header[: 1 + len(columns)] == ["magcrop", *columns]
    assert [row[0] for row in body] == MAGCROP_ROWS
    runs = {r.labels["magcrop"]: spec.out_dir / r.name for r in expand_grid(spec) if r.labels["seed"] == "0"}
    for row in body:
        metrics = json.loads((runs[row[0]] / "metrics.json").read_text())
        assert row[1 : 1 + len(columns)] == [cell_text(metrics, c) for c in columns]
        assert row[1 + len(columns)] == "1/3" and row[-1] == "2 pending"  # seeds 1 and 2 were not run
        summary = (runs[row[0]] / "log.txt").read_text()  # rsvlm prints each stage's components
        assert ("| cropper | MagCrop |" in summary) == (row[0] == "w/ MagCrop")

    # One step of training scores ~0 on the generated answers; the teacher-forced masks are not 0:
    # the two rows must show each its own run's values.
    forced = ["test_teacher_forced/oIoU", "test_teacher_forced/mIoU_full_mask"]
    _, body = printed_table(spec.out_dir, capsys, "--metrics", ",".join(forced))
    values = [json.loads((runs[row[0]] / "metrics.json").read_text()) for row in body]
    assert [row[1:3] for row in body] == [[cell_text(v, c) for c in forced] for v in values]
    assert any(v[c] > 0 for v in values for c in forced)


@pytest.mark.slow
def test_cross_system_demo_codebook_cell_runs_and_tables_beside_tcp(tmp_path, monkeypatch, capsys):
    small = {
        "model.init_args.schedule": [{"stage": "joint", "epochs": 1}],
        "data.init_args.batch_size": 2,
    }
    spec = tiny_sweep("cross-system-demo.yaml", tmp_path / "cross-system-demo", small)
    run_tiny(spec, ["bridge=[SEG] codebook (N=2)", "seed=0"], tmp_path, monkeypatch)
    header, body = printed_table(spec.out_dir, capsys)
    columns = spec.table["columns"]
    assert header[: 1 + len(columns)] == ["bridge", *columns]
    assert [row[0] for row in body] == CROSS_ROWS
    tcp, codebook = body
    assert tcp[1 : 1 + len(columns)] == ["pending"] * len(columns)
    run = next(r for r in expand_grid(spec) if r.labels == {"bridge": "[SEG] codebook (N=2)", "seed": "0"})
    metrics = json.loads((spec.out_dir / run.name / "metrics.json").read_text())
    assert codebook[1 : 1 + len(columns)] == [cell_text(metrics, c) for c in columns]
    log = (spec.out_dir / run.name / "log.txt").read_text()
    assert "SegCodebookBridge" in log
