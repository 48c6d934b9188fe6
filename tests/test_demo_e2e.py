"""`rsvlm fit --config recipes/spex-demo.yaml` end to end at a reduced size: it trains both stages,
checkpoints, tests the best checkpoint with generation and leaves a run record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from conftest import REPO


def fit_demo(root: Path, *overrides: str, recipe: str = "spex-demo.yaml") -> subprocess.CompletedProcess:
    """``rsvlm fit --config recipes/<recipe>`` into ``root`` with command-line overrides, in a
    subprocess as a user runs it; the run must succeed."""
    args = [
        sys.executable,
        "-m",
        "rsvlm.cli",
        "fit",
        "--config",
        str(REPO / "recipes" / recipe),
        f"--trainer.default_root_dir={root}",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(args, capture_output=True, text=True, cwd=root.parent, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_demo_recipe_runs_end_to_end(tmp_path: Path, _offline_cache):
    root = tmp_path / "run"
    result = fit_demo(
        root,
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--model.init_args.schedule=[{stage: text, epochs: 1}, {stage: joint, epochs: 1}]",
        "--model.init_args.generation.max_new_tokens=8",
        "--data.init_args.generate.n_train=16",
        "--data.init_args.generate.n_val=4",
        "--data.init_args.generate.n_test=4",
    )
    assert "switching to stage 'joint'" in result.stdout

    metrics = json.loads((root / "metrics.json").read_text())
    for name in ("F1", "Recall", "Precision", "OA", "IoU"):
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0
    assert metrics["params_total"] > metrics["params_trainable"] > 0

    version = root / "logs" / "version_0"
    assert (version / "config.yaml").is_file() and (version / "metrics.csv").is_file()
    assert list(version.glob("events.out.tfevents.*")), "TensorBoard logs missing"
    assert list(root.rglob("last.ckpt")), "no last checkpoint"
    # The run's curves, drawn from its metrics.csv when fit ends: the validation F1 of both epochs.
    from rsvlm.experiments.curves import read_curves

    assert f"curves: {version / 'curves.png'}" in result.stdout and (version / "curves.png").is_file()
    assert read_curves(version / "metrics.csv")["validation"]["val/F1"][0] == [1.0, 2.0]


def test_the_demo_recipe_on_two_ddp_processes_tests_and_leaves_one_record(tmp_path: Path, _offline_cache):
    """`rsvlm fit` under DDP (2 CPU processes, gloo): after the test, every rank reaches the run
    record's collective (the log folder is broadcast from rank 0), so the run ends cleanly and
    rank 0 alone writes and announces metrics.json."""
    root = tmp_path / "run"
    result = fit_demo(
        root,
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false",
        "--model.init_args.generation.max_new_tokens=4",
        "--data.init_args.generate.n_train=16",
        "--data.init_args.generate.n_val=4",
        "--data.init_args.generate.n_test=4",
    )
    metrics = json.loads((root / "metrics.json").read_text())
    assert 0.0 <= metrics["test/F1"] <= 1.0
    assert result.stdout.count("run record: ") == 1, result.stdout[-2000:]


def _decoder_without_prior() -> str:
    """The demo recipe's SAM decoder on its own, without the index + Otsu prior around it, as a
    command-line value. The prior alone already predicts the index baseline, which beats the
    trivial predictors, so with it a run that learnt nothing would pass (measured: a short run
    with the prior tested at exactly the baseline's F1)."""
    recipe = yaml.safe_load((REPO / "recipes" / "spex-demo.yaml").read_text())
    return json.dumps(recipe["model"]["init_args"]["decoder"]["init_args"]["decoder"])  # JSON is YAML


def _index_otsu_water(image_path: str, valid: np.ndarray) -> np.ndarray:
    """NDWI (green − NIR) / (green + NIR) of a demo raster above scikit-image's Otsu threshold of
    its valid pixels: H×W bool."""
    import rasterio
    from skimage.filters import threshold_otsu

    from rsvlm.data.bands import band_spec

    names = list(band_spec("demo").names)
    with rasterio.open(image_path) as src:
        green, nir = (src.read(names.index(b) + 1).astype(np.float64) for b in ("green", "nir"))
    ndwi = (green - nir) / np.maximum(green + nir, 1e-12)
    return (ndwi > threshold_otsu(ndwi[valid])) & valid


def test_a_short_demo_run_learns_masks_that_beat_trivial_predictors_and_the_index_baseline(
    tmp_path: Path, _offline_cache
):
    """A short run of the demo recipe on one category (water), fixed seed, its decoder trained
    without the index prior and scored with the paper's generation protocol, must beat predicting
    everything or nothing and NDWI + Otsu on the same test pixels (the three computed here from
    the test rasters and masks, with scikit-learn's scores). The run's settings were chosen on its
    validation scenes (five joint epochs from the start learnt nothing; a text epoch then seven
    joint ones reach validation F1 0.76)."""
    import torch
    from sklearn.metrics import f1_score

    from rsvlm.data.generated import GeneratedData
    from rsvlm.data.spie.datamodule import SpieDataModule

    generate = {"n_train": 160, "n_val": 8, "n_test": 12, "size": 64, "seed": 0, "prompt_regions": 3}
    generate["response_regions"] = 2
    root = tmp_path / "run"
    fit_demo(
        root,
        "--trainer.max_epochs=8",
        "--model.init_args.schedule=[{stage: text, epochs: 1}, {stage: joint, epochs: 7}]",
        f"--model.init_args.decoder={_decoder_without_prior()}",
        "--model.init_args.generation.max_new_tokens=48",
        "--data.init_args.categories=[water]",
        *[f"--data.init_args.generate.{k}={v}" for k, v in generate.items()],
    )
    metrics = json.loads((root / "metrics.json").read_text())

    data = SpieDataModule(generate=GeneratedData(**generate), bands="demo", image_size=64, categories=["water"])
    data.prepare_data()
    data.setup("test")
    targets, baseline = [], []
    for i in range(len(data.datasets["test"])):
        sample = data.datasets["test"][i]
        valid = sample["valid"][0].numpy()
        targets.append(sample["mask"][0].numpy()[valid] > 0)
        baseline.append(_index_otsu_water(sample["meta"]["image"], valid)[valid])
    target, index_otsu = np.concatenate(targets), np.concatenate(baseline)
    everything_f1 = f1_score(target, np.ones_like(target))
    everything_iou = target.mean()  # all foreground: TP = positives, FP + TP = every pixel
    baseline_f1 = f1_score(target, index_otsu)  # predicting nothing scores 0 on F1 and IoU
    print(
        f"short run: test F1 {metrics['test/F1']:.3f}, IoU {metrics['test/IoU']:.3f}; "
        f"all foreground F1 {everything_f1:.3f}; NDWI + Otsu F1 {baseline_f1:.3f}"
    )
    assert 0 < target.sum() < target.size
    assert metrics["test/F1"] > everything_f1 + 0.25, (metrics["test/F1"], everything_f1)
    assert metrics["test/IoU"] > everything_iou + 0.25, (metrics["test/IoU"], everything_iou)
    assert metrics["test/F1"] > baseline_f1, (metrics["test/F1"], baseline_f1)
    assert torch.isfinite(torch.tensor(metrics["test_teacher_forced/F1"]))


def test_geomag_demo_recipe_runs_end_to_end(tmp_path: Path, _offline_cache):
    """The GeoMag demo: four granularities in one run through MagCrop (PSC online), the [SEG]
    codebook and the SAM 2 decoder; every task's metric, and the floors beside refseg's mIoU."""
    root = tmp_path / "geomag"
    fit_demo(
        root,
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--data.init_args.generate.n_train=8",
        "--data.init_args.generate.n_val=4",
        "--data.init_args.generate.n_test=4",
        "--model.init_args.generation.max_new_tokens=6",
        recipe="geomag-demo.yaml",
    )
    metrics = json.loads((root / "metrics.json").read_text())
    for name in ("P@0.5", "oIoU", "mIoU", "mIoU_full_mask", "mIoU_empty_mask"):
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0, name
    for task in ("scene_classification", "vqa", "referring_classification"):
        assert 0.0 <= metrics[f"test/{task}/accuracy"] <= 1.0, task


def test_earthgptx_demo_recipe_runs_end_to_end(tmp_path: Path, _offline_cache):
    """The EarthGPT-X demo: per-modality stems, mixed experts, the prompt as a RoIAlign region token,
    [SEG] → SAM decoder with the user's prompts (drawn as its mask input too); every score per modality and prompt kind, each beside its baseline, and the
    table of them printed after the test."""
    root = tmp_path / "earthgptx"
    result = fit_demo(
        root,
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--data.init_args.generate.init_args.n_train=8",
        "--data.init_args.generate.init_args.n_val=3",
        "--data.init_args.generate.init_args.n_test=9",  # 3 scenes per modality: every prompt kind per task
        "--model.init_args.generation.max_new_tokens=6",
        recipe="earthgptx-demo.yaml",
    )
    metrics = json.loads((root / "metrics.json").read_text())
    modalities = [f"modality={m}" for m in ("optical", "sar", "infrared")]
    kinds = [f"prompt_kind={k}" for k in ("point", "box", "scribble")]
    expected = ["test/mIoU", "test/mIoU_prompt_box"]  # gcg, the first task, logs without its name
    for task, names, groups in (
        ("gcg", ("mIoU", "mIoU_prompt_box"), modalities + kinds),
        ("grounding", ("Acc@0.5", "Acc@0.5_centre_box"), modalities),  # no prompts: no prompt kinds
        ("referring_classification", ("accuracy", "accuracy_majority"), modalities + kinds),
    ):
        if task != "gcg":
            expected += [f"test/{task}/{name}" for name in names]
        expected += [f"test/{task}/{group}/{name}" for group in groups for name in names]
    for key in expected:
        assert 0.0 <= metrics[key] <= 1.0, key
    table = result.stdout[result.stdout.index("test scores per group: model / baseline") :]
    for group in ["all", *modalities, *kinds]:
        assert f"\n{group} " in table, group
