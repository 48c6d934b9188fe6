"""The EarthGPT-X ablation recipes (``recipes/ablations/earthgptx/``): every cell expands, the paper
forms build on the meta device (with their data sections), the table columns are names the models
log, and demo cells run through ``rsvlm sweep`` at a tiny size into tables with the rows in order."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO
from test_geomag_ablations import cell_text, dry_run_cells, printed_table, run_tiny

from rsvlm.experiments.sweep import (
    expand_grid,
    load_sweep,
    parse_sweep,
    resolve_config,
)
from rsvlm.experiments.table import metric_key

RECIPES = REPO / "recipes" / "ablations" / "earthgptx"
PROMPT_ROWS = [
    "dense (SAE + hybrid fusion)",
    "sparse (SAM-style tokens)",
    "region pool (RoIAlign / mask pooling)",
    "overlay (drawn on the image)",
]
#: The class of each row's prompt encoder (None: no prompt encoder) and whether it has the hybrid fusion.
PROMPT_CLASSES = {
    PROMPT_ROWS[0]: ("rsvlm.prompts.spatial.SpatialAwarePromptEncoder", True),
    PROMPT_ROWS[1]: ("rsvlm.prompts.sparse.SparsePromptEncoder", False),
    PROMPT_ROWS[2]: ("rsvlm.prompts.region_pool.RegionPoolPromptEncoder", False),
    PROMPT_ROWS[3]: (None, False),
}
MODALITY_ROWS = ["optical only", "SAR only", "infrared only", "all three (one-stage multi-domain)"]
TRAIN_MODALITIES = {"optical only": ["optical"], "SAR only": ["sar"], "infrared only": ["infrared"]}
CROSS_ROWS = ["SAM prompt encoder only (SPEX)", "+ SAE + hybrid fusion (EarthGPT-X)"]
ROWS = {"prompt-encoder": PROMPT_ROWS, "modality-mix": MODALITY_ROWS, "cross-system": CROSS_ROWS}
AXES = {"prompt-encoder": "prompt_encoder", "modality-mix": "train_modalities", "cross-system": "prompts"}
RUN_LIMITS = {
    "trainer.max_epochs": 1,
    "trainer.check_val_every_n_epoch": 1,
    "trainer.limit_train_batches": 1,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 1,
    "trainer.log_every_n_steps": 1,
    "model.init_args.generation": {"max_new_tokens": 8},
}
#: Tiny generated EarthGPT-X data: 2 scenes per modality for training, 1 for validation; 3 for test, all of
#: it tested (27 records in 4 batches), so that each modality meets each prompt kind in each prompted task
#: and every column of the tables has a value.
MULTISOURCE_SIZE = {
    "data.init_args.generate.init_args": {"n_train": 6, "n_val": 3, "n_test": 9},
    "trainer.limit_test_batches": 1.0,
}


def stem(name: str) -> str:
    """``prompt-encoder-demo.yaml`` → ``prompt-encoder``."""
    return name.removesuffix(".yaml").removesuffix("-demo")


def logged_test_metrics(config: dict[str, Any]) -> set[str]:
    """The ``test/...`` names a recipe's VisionLanguageModel logs (task_scoring's naming: the first task
    as ``test/<metric>``, the others as ``test/<task>/<metric>``, metric groups as
    ``test/<task>/<field>=<value>/<metric>``)."""
    from rsvlm.models.task_scoring import GROUPED, build_task_metrics

    init = config["model"]["init_args"]
    tasks = init["tasks"]
    metrics = build_task_metrics(tasks, init.get("task_metrics"), "global", groups=init.get("metric_groups"))["test"]
    named = [("test" if task == tasks[0] else f"test/{task}", m) for task, m in metrics.items() if task != GROUPED]
    if GROUPED in metrics:
        named += [(f"test/{name}", m) for name, m in metrics[GROUPED].named_groups()]
    names = set()
    with warnings.catch_warnings():  # compute() before update() warns; only the keys matter
        warnings.simplefilter("ignore")
        for prefix, metric in named:
            if hasattr(metric, "compute"):
                names |= {f"{prefix}/{key}" for key in metric.compute()}
    return names


ALL = [
    ("prompt-encoder-demo.yaml", 12),
    ("prompt-encoder.yaml", 4),
    ("modality-mix-demo.yaml", 12),
    ("modality-mix.yaml", 4),
    ("cross-system-demo.yaml", 6),
    ("cross-system.yaml", 2),
]


@pytest.mark.parametrize(("name", "runs"), ALL)
def test_every_recipe_expands_with_a_dry_run(name, runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the paper cross-system's MVPNet need writes into runs/mvpnet of the cwd
    spec, cells = dry_run_cells(RECIPES / name, runs, tmp_path / "sweep", capsys)
    axis = AXES[stem(name)]
    assert [a.labels for a in spec.axes if a.name == axis] == [ROWS[stem(name)]]
    assert spec.table["rows"] == [axis]
    if name.endswith("-demo.yaml"):  # 3 seeds, averaged in the table
        assert spec.table["seeds_axis"] == "seed"
        assert [a.labels for a in spec.axes if a.name == "seed"] == [["0", "1", "2"]]
    for run, written in cells:
        check_cell(stem(name), run.labels[axis], written)


def check_cell(kind: str, label: str, config: dict[str, Any]) -> None:
    """What the row ``label`` of the ``kind`` sweep changes in its resolved ``config``."""
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    encoder = (model.get("prompt_encoder") or {}).get("class_path")
    if kind == "prompt-encoder":
        expected, hybrid = PROMPT_CLASSES[label]
        assert encoder == expected
        assert (model.get("prompt_fusion") is not None) == hybrid
        overlay = data.get("overlay")
        assert (overlay or {}).get("class_path") == (
            "rsvlm.prompts.overlay.OverlayPrompts" if expected is None else None
        )
        tokens = model["llm"]["init_args"]["special_tokens"]
        spliced = label.startswith(("sparse", "region"))
        # Other rows may keep the demo base's "<Region 1>" token: there it is a word that carries no region.
        if spliced:  # the tokens go where the generated questions name the prompt, at the LLM's width
            assert "<Region 1>" in tokens
            assert model["prompt_encoder"]["init_args"]["placeholder"] == "<Region 1>"
            assert model["prompt_encoder"]["init_args"]["out_dim"] == model["projector"]["init_args"]["out_dim"]
        assert model["decoder"]["init_args"]["use_visual_prompts"] is True  # SAM reads the prompts in every row
    elif kind == "modality-mix":
        kept = TRAIN_MODALITIES.get(label)
        assert data.get("split_modalities") == (None if kept is None else {"train": kept})  # val / test: all
        generate = data.get("generate", {}).get("init_args")
        if generate is not None:  # demo: the one-modality rows train as many steps as the base
            expected = None if kept is None else generate["n_train"] * len(model["tasks"])
            assert data.get("epoch_size") == expected
    else:
        assert (encoder == "rsvlm.prompts.spatial.SpatialAwarePromptEncoder") == (label == CROSS_ROWS[1])
        assert model["tasks"] == ["land_cover", "prompted"] and data["prompts"] is not None
        assert model["decoder"]["init_args"]["use_visual_prompts"] is True
        groups = {c for g in model["optimizer_groups"].values() for c in g["components"]}
        assert {"prompt_encoder", "prompt_fusion"} <= groups or encoder is None


@pytest.mark.parametrize("name", [n for n, _ in ALL])
def test_table_columns_are_logged_test_metrics(name):
    spec = load_sweep(RECIPES / name)
    columns = spec.table["columns"]
    assert len(columns) == len(set(columns))
    for run in expand_grid(spec):
        logged = logged_test_metrics(resolve_config(spec.base, run.overrides))
        for column in columns:
            assert metric_key(dict.fromkeys(logged, 0.0), column) == f"test/{column}", (run.labels, column)
    if stem(name) == "modality-mix":  # every test modality has its column for each task
        for modality in ("optical", "sar", "infrared"):
            assert sum(f"/modality={modality}/" in c for c in columns) == 3


@pytest.mark.parametrize("name", ["prompt-encoder.yaml", "modality-mix.yaml", "cross-system.yaml"])
def test_paper_forms_build_on_the_meta_device(name):
    import lightning as L
    from jsonargparse import ArgumentParser

    from rsvlm.experiments.summarize import build_model_on_meta
    from rsvlm.fusion.hybrid_prompt import HybridPromptFusion
    from rsvlm.prompts.overlay import OverlayPrompts
    from rsvlm.prompts.region_pool import RegionPoolPromptEncoder
    from rsvlm.prompts.sparse import SparsePromptEncoder
    from rsvlm.prompts.spatial import SpatialAwarePromptEncoder

    spec = load_sweep(RECIPES / name, out="unused")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    for run in expand_grid(spec):
        config = resolve_config(spec.base, run.overrides)
        model = build_model_on_meta(config["model"])
        # the data section parses and builds as well (no file is read before setup)
        data = parser.instantiate_classes(parser.parse_object({"data": config["data"]})).data
        label = next(iter(run.labels.values()))
        if name == "prompt-encoder.yaml":
            expected = {
                PROMPT_ROWS[0]: SpatialAwarePromptEncoder,
                PROMPT_ROWS[1]: SparsePromptEncoder,
                PROMPT_ROWS[2]: RegionPoolPromptEncoder,
            }.get(label)
            assert type(model.prompt_encoder) is expected if expected else model.prompt_encoder is None
            assert isinstance(model.prompt_fusion, HybridPromptFusion) == (label == PROMPT_ROWS[0])
            assert isinstance(data.overlay, OverlayPrompts) == (label == PROMPT_ROWS[3])
            if expected in (SparsePromptEncoder, RegionPoolPromptEncoder):
                assert model.prompt_encoder.out_dim == model.llm.hidden_size == 5120
                assert model.prompt_encoder.placeholder == "<Region 1>" and model.prompt_encoder.max_prompts == 10
            if expected is SparsePromptEncoder:
                assert model.prompt_encoder.skip_unprompted and model.prompt_encoder.pe_dim == 256
            if expected is RegionPoolPromptEncoder:
                assert model.prompt_encoder.in_channels == model.fusion.out_channels == 1024
                assert model.prompt_encoder.num_views == model.encoder.num_views == 5  # pools the global view
        elif name == "modality-mix.yaml":
            assert isinstance(model.prompt_encoder, SpatialAwarePromptEncoder)
            kept = TRAIN_MODALITIES.get(label)
            assert data.split_modalities == (None if kept is None else {"train": frozenset(kept)})
        else:
            sae = label == CROSS_ROWS[1]
            assert isinstance(model.prompt_encoder, SpatialAwarePromptEncoder) == sae
            assert isinstance(model.prompt_fusion, HybridPromptFusion) == sae
            assert model.decoder.use_visual_prompts and data.prompts.probability == 0.5
            if sae:  # the SAE's grid is MSAM's token grid at 1/16 of 512 px, at MSAM's width
                assert model.prompt_encoder.canvas_size // model.prompt_encoder.patch_size == 512 // 16
                assert model.prompt_encoder.out_dim == model.prompt_fusion.dim == model.fusion.out_channels
                assert "prompt_fusion" in model.stages["mask"] and "prompt_fusion" in model.stages["text"]


def build_demo_cell(config: dict[str, Any], root: Path) -> tuple[Any, Any]:
    """The model and the set-up datamodule of a demo cell's resolved ``config`` (as ``rsvlm fit`` builds
    them), its generated data in ``root`` at the tiny size."""
    import lightning as L
    from jsonargparse import ArgumentParser

    from rsvlm.bridges.positions import with_response_suffix

    config = copy.deepcopy(config)
    generate = config["data"]["init_args"]["generate"]["init_args"]
    generate.update(MULTISOURCE_SIZE["data.init_args.generate.init_args"], root=str(root), progress=False)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    built = parser.instantiate_classes(parser.parse_object({"model": config["model"], "data": config["data"]}))
    model, data = built.model, built.data
    data.prepare_data()
    data.setup("fit")
    data.set_text_formatter(with_response_suffix(model.llm.formatter, model.positions.response_suffix))
    return model, data


def test_prompt_encoder_demo_cells_put_the_prompt_where_their_row_says(tmp_path):
    spec = load_sweep(RECIPES / "prompt-encoder-demo.yaml", out="unused")
    cells = {r.labels["prompt_encoder"]: r for r in expand_grid(spec) if r.labels["seed"] == "0"}
    images = {}
    for label, run in cells.items():
        torch.manual_seed(0)
        model, data = build_demo_cell(resolve_config(spec.base, run.overrides), tmp_path / "data")
        dataset = data.datasets["test"]
        batch = data.collate_fn()([dataset[i] for i in range(9)])  # 3 scenes × (ROC, grounding, gcg)
        prompted = batch["visual_prompts"].valid.any(dim=1)
        assert prompted.tolist() == [task != "grounding" for task in batch["task"]]
        region = model.llm.special_token_ids.get("<Region 1>")
        # Every row keeps the demo base's special token: the generated questions name the prompt with it
        # (in the dense and overlay rows a word that carries no region, so nothing is spliced there).
        assert region is not None
        assert (batch["input_ids"] == region).sum(dim=1).tolist() == prompted.long().tolist()
        with torch.no_grad():
            fused, visual, _ = model.encode_image(batch["image"], batch)
            extra = model.placeholders(batch, fused)
            out = model.llm(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                visual_tokens=visual,
                labels=batch["labels"],
                response_mask=batch["response_mask"],
                **({"placeholders": extra} if extra else {}),
            )
        grown = (out.attention_mask.sum(dim=1) - batch["attention_mask"].sum(dim=1)).tolist()
        # <image> → N visual tokens; sparse: "<Region 1>" → start, 1 slot, end; region pool: → 1 token
        added = {"sparse": 2, "region": 0}.get(label.split()[0], 0)
        assert grown == [visual.shape[1] - 1 + added * bool(p) for p in prompted.tolist()], label
        assert set(extra) == ({"<Region 1>"} if label.startswith(("sparse", "region")) else set())
        images[label] = batch["image"]
    dense, overlay = images[PROMPT_ROWS[0]], images[PROMPT_ROWS[3]]
    # the overlay row's images carry the marks on the prompted records only
    differs = (overlay != dense).flatten(1).any(dim=1)
    assert differs.tolist() == [task != "grounding" for task in batch["task"]]
    assert torch.equal(images[PROMPT_ROWS[1]], dense) and torch.equal(images[PROMPT_ROWS[2]], dense)


def tiny_sweep(name: str, out: Path, extra: dict[str, Any]) -> Any:
    """The sweep file ``name`` as it is, with tiny run limits added to its overrides."""
    raw = yaml.safe_load((RECIPES / name).read_text())
    raw["overrides"] = {**(raw.get("overrides") or {}), **RUN_LIMITS, **extra}
    return parse_sweep(raw, RECIPES / name, out=out)


def run_metrics(spec: Any, labels: dict[str, str]) -> tuple[dict[str, Any], str]:
    """The ``metrics.json`` and ``log.txt`` of the run with ``labels``."""
    run = next(r for r in expand_grid(spec) if r.labels == labels)
    folder = spec.out_dir / run.name
    return json.loads((folder / "metrics.json").read_text()), (folder / "log.txt").read_text()


def check_table(spec: Any, capsys, ran: list[str]) -> dict[str, dict[str, Any]]:
    """``rsvlm table`` of a sweep of which the rows ``ran`` ran seed 0: rows in the recipe's order, each
    ran row's cells its run's metrics, the others pending. Returns each ran row's metrics."""
    axis = spec.table["rows"][0]
    header, body = printed_table(spec.out_dir, capsys)
    columns = spec.table["columns"]
    assert header[: 1 + len(columns)] == [axis, *columns]
    assert [row[0] for row in body] == [a.labels for a in spec.axes if a.name == axis][0]
    metrics = {}
    for row in body:
        if row[0] not in ran:
            assert row[1 : 1 + len(columns)] == ["pending"] * len(columns)
            continue
        metrics[row[0]], _ = run_metrics(spec, {axis: row[0], "seed": "0"})
        assert row[1 : 1 + len(columns)] == [cell_text(metrics[row[0]], c) for c in columns]
        assert row[1 + len(columns)] == "1/3" and row[-1] == "2 pending"  # seeds 1 and 2 were not run
    return metrics


@pytest.mark.slow
def test_prompt_encoder_demo_spliced_and_overlay_cells_run_and_table(tmp_path, monkeypatch, capsys):
    ran = [PROMPT_ROWS[1], PROMPT_ROWS[3]]  # tokens spliced at "<Region 1>", and prompts drawn by the data
    spec = tiny_sweep("prompt-encoder-demo.yaml", tmp_path / "prompt-encoder-demo", MULTISOURCE_SIZE)
    run_tiny(spec, [f"prompt_encoder={label}" for label in ran] + ["seed=0"], tmp_path, monkeypatch)
    check_table(spec, capsys, ran)
    _, sparse_log = run_metrics(spec, {"prompt_encoder": ran[0], "seed": "0"})
    _, overlay_log = run_metrics(spec, {"prompt_encoder": ran[1], "seed": "0"})
    assert "| prompt_encoder | SparsePromptEncoder |" in sparse_log  # rsvlm prints each stage's components
    assert "| prompt_encoder |" not in overlay_log and "| prompt_fusion |" not in overlay_log

    # One step of training generates no [SEG] (mIoU 0 in every row); the teacher-forced masks are not 0:
    # the ran rows must show each its own run's values, the others pending.
    forced = ["test_teacher_forced/mIoU", "test_teacher_forced/oIoU"]
    _, body = printed_table(spec.out_dir, capsys, "--metrics", ",".join(forced))
    assert [row[0] for row in body] == PROMPT_ROWS
    values = {label: run_metrics(spec, {"prompt_encoder": label, "seed": "0"})[0] for label in ran}
    for row in body:
        expected = [cell_text(values[row[0]], c) for c in forced] if row[0] in ran else ["pending"] * 2
        assert row[1:3] == expected, row
    assert all(values[label][c] > 0 for label in ran for c in forced)


@pytest.mark.slow
def test_modality_mix_demo_sar_cell_is_tested_on_every_modality(tmp_path, monkeypatch, capsys):
    spec = tiny_sweep("modality-mix-demo.yaml", tmp_path / "modality-mix-demo", MULTISOURCE_SIZE)
    run_tiny(spec, ["train_modalities=SAR only", "seed=0"], tmp_path, monkeypatch)
    metrics = check_table(spec, capsys, ["SAR only"])["SAR only"]
    for modality in ("optical", "sar", "infrared"):
        for key in ("referring_classification/modality={}/accuracy", "gcg/modality={}/mIoU"):
            assert f"test/{key.format(modality)}" in metrics


@pytest.mark.slow
def test_cross_system_demo_sae_cell_runs_and_tables_beside_spex(tmp_path, monkeypatch, capsys):
    small = {
        "model.init_args.schedule": [{"stage": "joint", "epochs": 1}],
        "data.init_args.generate": {"n_train": 4, "n_val": 2, "n_test": 4},
        "trainer.limit_test_batches": 1.0,  # every test record: about half are prompted
        "data.init_args.batch_size": 2,
    }
    spec = tiny_sweep("cross-system-demo.yaml", tmp_path / "cross-system-demo", small)
    run_tiny(spec, ["prompts=+ SAE + hybrid fusion (EarthGPT-X)", "seed=0"], tmp_path, monkeypatch)
    check_table(spec, capsys, [CROSS_ROWS[1]])
    _, log = run_metrics(spec, {"prompts": CROSS_ROWS[1], "seed": "0"})
    assert "| prompt_encoder | SpatialAwarePromptEncoder |" in log and "| prompt_fusion | HybridPromptFusion |" in log
