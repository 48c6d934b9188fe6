"""``rsvlm evaluate``: a tiny random SPEX model and the index baseline scored on the same images.

Baseline rows are checked against :class:`IndexBaseline` run directly and sklearn's metrics;
model rows against sklearn on their own confusion counts and against the valid pixel count.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import SHARED_DATA, labelled_scene
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from rsvlm.cli.main import main
from rsvlm.data.baseline import IndexBaseline

BANDS = ["red", "green", "blue", "nir"]
TINY = {
    "base": "qwen2.5-0.5b",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def _recipe(tmp_path: Path, image_size: int = 32, normalization: str = "image") -> Path:
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"bands": {n: {"mean": 0.2, "std": 0.1} for n in BANDS}}))

    def component(path: str, **init_args) -> dict:
        return {"class_path": path, "init_args": init_args}

    recipe = {
        "seed_everything": 3,
        "model": component(
            "rsvlm.models.vlm.VisionLanguageModel",
            encoder=component("rsvlm.encoders.timm_encoder.TimmEncoder", model_name="resnet18", in_bands=4),
            fusion=component("rsvlm.fusion.msam.MSAM", in_channels=[64, 128, 256, 512], out_channels=32),
            projector=component("rsvlm.fusion.projector.MLPProjector", in_dim=32, out_dim=32),
            llm=component(
                "rsvlm.llm.causal_lm.CausalLM",
                config=TINY,
                tokenizer={"class_path": "rsvlm.data.spie.corpus.SpieDemoTokenizer"},
            ),
            bridge=component("rsvlm.bridges.tcp.TokenCompressionProjector", in_dim=32, out_dim=32, num_tokens=2),
            decoder=component("rsvlm.heads.sam_decoder.SamMaskDecoderHead", in_channels=32, prompt_dim=32),
            generation={"max_new_tokens": 3},
        ),
        "data": component(
            "rsvlm.data.spie.datamodule.SpieDataModule",
            stats=str(stats),
            bands=BANDS,
            image_size=image_size,
            batch_size=4,
            predict_overlap=0,
            normalization=normalization,
        ),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random model's recipe and checkpoint (built from the recipe, saved, loaded back)."""
    from rsvlm.inference.evaluate import load_model

    folder = tmp_path_factory.mktemp("tiny")
    recipe = _recipe(folder)
    ckpt = folder / "tiny.ckpt"
    torch.manual_seed(0)
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    config = yaml.safe_load(recipe.read_text())
    model = parser.instantiate_classes(parser.parse_object({"model": config["model"]})).model
    torch.save({"state_dict": model.state_dict()}, ckpt)
    loaded, _ = load_model(recipe, ckpt)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    return recipe, ckpt


def _sk_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    args = dict(y_true=target.astype(int), y_pred=pred.astype(int))
    return {
        "F1": f1_score(**args, zero_division=0),
        "Recall": recall_score(**args, zero_division=0),
        "Precision": precision_score(**args, zero_division=0),
        "OA": accuracy_score(**args),
        "IoU": jaccard_score(**args, zero_division=0),
    }


def _check_sklearn(row: dict, pred: np.ndarray, target: np.ndarray) -> None:
    for name, value in _sk_scores(pred, target).items():
        assert row[name] == pytest.approx(value, abs=1e-9), name


def test_evaluate_scores_model_and_baseline_on_the_same_pixels(tiny, tmp_path, capsys):
    recipe, ckpt = tiny
    images, masks, refs = [], [], []
    for i in range(2):
        image_path, mask_path, image, label = labelled_scene(tmp_path, f"s{i}", seed=i)
        images.append(str(image_path))
        masks.append(str(mask_path))
        refs.append((image, label))
    out = tmp_path / "scores.json"
    args = ["evaluate", "--config", str(recipe), "--ckpt", str(ckpt), "--images", *images, "--masks", *masks]
    args += ["--category", "water", "--bands", ",".join(BANDS), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "average: global" in printed and "index baseline (NDWI > Otsu)" in printed
    report = json.loads(out.read_text())
    model_row, base_row = report["rows"]
    assert model_row["method"] == "model (tiny.ckpt)" and base_row["method"] == "index baseline"
    assert report["normalization"] == "image"

    # Baseline = IndexBaseline run directly + sklearn over the valid pixels of both images.
    preds, targets = [], []
    for image, label in refs:
        valid = label != 255
        preds.append(IndexBaseline("water", BANDS).predict(image, valid)[valid])
        targets.append(label[valid] == 1)
    _check_sklearn(base_row, np.concatenate(preds), np.concatenate(targets))
    assert base_row["F1"] > 0.9  # the strip is obvious to NDWI
    # And each image's own scores (the JSON's per_image), as sklearn gives them image by image.
    assert [entry["image"] for entry in base_row["per_image"]] == images
    for entry, pred, target in zip(base_row["per_image"], preds, targets, strict=True):
        _check_sklearn(entry, pred, target)

    # The model's row: counts cover exactly the valid pixels; scores are sklearn's of them.
    n_valid = sum(int((label != 255).sum()) for _, label in refs)
    assert sum(model_row[k] for k in ("tp", "fp", "fn", "tn")) == n_valid
    tp, fp, fn, tn = (model_row[k] for k in ("tp", "fp", "fn", "tn"))
    pred = np.r_[np.ones(tp + fp, bool), np.zeros(fn + tn, bool)]
    target = np.r_[np.ones(tp, bool), np.zeros(fp, bool), np.ones(fn, bool), np.zeros(tn, bool)]
    _check_sklearn(model_row, pred, target)

    # --out is never replaced silently; --overwrite replaces it with the same numbers.
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--average", "image"]) == 0
    again = json.loads(out.read_text())
    assert again["average"] == "image" and again["rows"][0]["tp"] == model_row["tp"]


def test_a_band_the_model_needs_is_a_one_line_error(tiny, tmp_path, capsys):
    recipe, ckpt = tiny
    image_path, mask_path, _, _ = labelled_scene(tmp_path, "noswir")
    args = ["evaluate", "--config", str(recipe), "--ckpt", str(ckpt), "--images", str(image_path)]
    args += ["--masks", str(mask_path), "--category", "water", "--bands", "red,green,blue,swir1", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "noswir.tif" in err and "'nir'" in err
    assert main([*args, "--skip-missing-bands"]) == 0
    assert "skipped: " in capsys.readouterr().out


def test_without_prior_on_a_model_without_one_is_a_one_line_error_naming_the_field(tiny, tmp_path, capsys):
    recipe, ckpt = tiny
    image_path, mask_path, _, _ = labelled_scene(tmp_path, "plain")
    args = ["evaluate", "--config", str(recipe), "--ckpt", str(ckpt), "--images", str(image_path)]
    args += ["--masks", str(mask_path), "--category", "water", "--bands", "red,green,blue,nir", "--no-progress"]
    assert main([*args, "--without-prior"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'model.decoder'" in err and "IndexPriorHead" in err


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real sample data not found at {SHARED_DATA} (../shared/data)")
def test_shipped_real_data_baseline_equals_index_baseline_and_sklearn(tmp_path, capsys):
    out = tmp_path / "real.json"
    assert main(["evaluate", "--real-data", str(SHARED_DATA), "--out", str(out), "--no-progress"]) == 0
    rows = {(r["dataset"], r["category"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        ("sen1floods11-spain", "water"),
        ("chesapeake-naip-geobench", "water"),
        ("chesapeake-naip-geobench", "vegetation"),
    }
    # Read independently of rsvlm.data.real: the folders' READMEs give bands and codes.
    s1f = SHARED_DATA / "sen1floods11-spain"
    with rasterio.open(s1f / "Spain_7370579_S2Hand.tif") as src:
        s2 = src.read().astype(np.float32)
    with rasterio.open(s1f / "Spain_7370579_LabelHand.tif") as src:
        label = src.read(1)
    valid = (label >= 0) & (s2 != 0).all(axis=0)
    pred = IndexBaseline("water", "sentinel2").predict(s2, valid)
    _check_sklearn(rows[("sen1floods11-spain", "water")], pred[valid], label[valid] == 1)
    for category, codes in (("water", [1]), ("vegetation", [2, 3])):
        preds, targets = [], []
        for path in sorted((SHARED_DATA / "chesapeake-naip-geobench").glob("*_image.npy")):
            image = np.load(path).astype(np.float32)
            lab = np.load(str(path).replace("_image", "_label"))
            v = lab > 0
            preds.append(IndexBaseline(category, "chesapeake").predict(image, v)[v])
            targets.append(np.isin(lab[v], codes))
        _check_sklearn(rows[("chesapeake-naip-geobench", category)], np.concatenate(preds), np.concatenate(targets))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real sample data not found at {SHARED_DATA} (../shared/data)")
def test_tiny_model_on_shipped_naip_and_missing_swir_named(tiny, tmp_path, capsys):
    recipe, ckpt = tiny
    args = ["evaluate", "--config", str(recipe), "--ckpt", str(ckpt), "--real-data", str(SHARED_DATA)]
    args += ["--datasets", "chesapeake-naip-geobench", "--categories", "water", "--no-progress"]
    args += ["--out", str(tmp_path / "naip.json")]
    assert main(args) == 0
    model_row = json.loads((tmp_path / "naip.json").read_text())["rows"][0]
    assert model_row["images"] == 5 and sum(model_row[k] for k in ("tp", "fp", "fn", "tn")) == 5 * 256 * 256
    # Sentinel-2 has every NAIP band (picked by name), so a 4-band model runs on it too.
    from rsvlm.data.real import read_shipped, select_bands

    item = read_shipped(SHARED_DATA, ["sen1floods11-spain"])[0]
    np.testing.assert_array_equal(select_bands(item, BANDS), item.image[[3, 2, 1, 7]])
    naip = read_shipped(SHARED_DATA, ["chesapeake-naip-geobench"])[0]
    with pytest.raises(Exception, match=r"id_000051_image\.npy: has no band 'swir1'"):
        select_bands(naip, ["blue", "green", "red", "nir", "swir1", "swir2"])


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real sample data not found at {SHARED_DATA} (../shared/data)")
@pytest.mark.parametrize("flips", [[], ["none", "horizontal", "vertical", "both"]])
def test_an_undecided_decoder_on_the_index_prior_scores_exactly_the_baseline(tmp_path, capsys, flips):
    """The rgbn demo's path (Otsu-mask channels cut at each image's threshold, whole-image statistics,
    IndexPriorHead over a SAM decoder whose hypernetworks output 0): tiled, generated, stitched, the
    model's confusion counts on the shipped NAIP masks equal the index + Otsu baseline's; with
    test-time flips too (each pass mirrored back before it is averaged)."""
    import lightning as L
    from jsonargparse import ArgumentParser

    recipe = _recipe(tmp_path, image_size=64, normalization="robust_image")
    config = yaml.safe_load(recipe.read_text())
    model_args = config["model"]["init_args"]
    model_args["encoder"]["init_args"]["in_bands"] = 8
    model_args["decoder"] = {
        "class_path": "rsvlm.heads.index_prior.IndexPriorHead",
        "init_args": {"channels": {"vegetation": 6, "water": 7}, "weight": 8.0, "decoder": model_args["decoder"]},
    }
    data_args = config["data"]["init_args"]
    data_args.update(index_channels=["ndvi", "ndwi", "ndvi_otsu", "ndwi_otsu"], predict_statistics="scene")
    data_args["predict_overlap"] = 16
    recipe.write_text(yaml.safe_dump(config))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    torch.manual_seed(0)
    model = parser.instantiate_classes(parser.parse_object({"model": config["model"]})).model
    with torch.no_grad():
        for mlp in model.decoder.decoder.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.zero_()
    ckpt = tmp_path / "undecided.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "rows.json"
    args = ["evaluate", "--config", str(recipe), "--ckpt", str(ckpt), "--real-data", str(SHARED_DATA)]
    args += ["--flips", *flips] if flips else ["--without-prior"]
    assert main([*args, "--datasets", "chesapeake-naip-geobench", "--no-progress", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["flips"] == (flips or ["none"])
    rows = report["rows"]
    for category in ("water", "vegetation"):
        by_method = {r["method"]: r for r in rows if r["category"] == category}
        model_row, baseline_row = by_method["model (undecided.ckpt)"], by_method["index baseline"]
        counts = [(row["tp"], row["fp"], row["fn"], row["tn"]) for row in (model_row, baseline_row)]
        assert counts[0] == counts[1], (category, counts)
        if not flips:  # the decoder alone answers 0 everywhere: it marks nothing
            alone = by_method["model (undecided.ckpt) without its prior"]
            assert (alone["tp"], alone["fp"]) == (0, 0)
            assert alone["fn"] == baseline_row["tp"] + baseline_row["fn"]
            assert alone["tn"] == baseline_row["fp"] + baseline_row["tn"]
        else:
            assert len(by_method) == 2
