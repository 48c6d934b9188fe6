"""Whole-image prediction (GeoMag-style models of instruction data): a free-text question about a
GeoTIFF or an array, the answer, and a mask in the image's own pixels and georeferencing."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import REPO
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rsvlm.data.multitask.geometry import resize_pad_square
from rsvlm.inference.api import PredictError, Predictor
from rsvlm.inference.evaluate import build_from_config
from rsvlm.inference.tile_outputs import to_original


@pytest.fixture(scope="module")
def predictor(tmp_path_factory, _offline_cache):
    config = yaml.safe_load((REPO / "recipes" / "geomag-demo.yaml").read_text())
    config["data"]["init_args"]["generate"].update(n_train=4, n_val=2, n_test=2)
    config["model"]["init_args"]["generation"] = {"max_new_tokens": 4}
    model, datamodule = build_from_config(config)
    return Predictor(model, datamodule, source="geomag-demo (random weights)")


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "harbour.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=48,
        width=80,
        count=3,
        dtype="uint8",
        crs=CRS.from_epsg(32633),
        transform=from_origin(400000.0, 4500000.0, 0.5, 0.5),
    ) as dst:
        dst.write(rng.integers(0, 255, size=(3, 48, 80), dtype=np.uint8))
    return path


@pytest.mark.parametrize("pad", ["center", "bottom_right"])
def test_the_square_maps_back_onto_the_image(pad):
    """A mask taken to the model's square and brought back is the mask (IoU ≥ 0.98)."""
    mask = torch.zeros(1, 48, 80)
    mask[0, 10:30, 20:70] = 1
    _, square, _, info = resize_pad_square(
        torch.zeros(3, 48, 80), mask, torch.ones(1, 48, 80, dtype=torch.bool), 64, pad
    )
    back = to_original(square[0], info) > 0.5
    inter, union = (back & (mask[0] > 0)).sum(), (back | (mask[0] > 0)).sum()
    assert back.shape == (48, 80) and inter / union >= 0.98


def test_a_question_about_a_geotiff_gives_a_georeferenced_answer(predictor, geotiff, monkeypatch, tmp_path):
    seen = []
    original = predictor.model.predict_masks
    monkeypatch.setattr(predictor.model, "predict_masks", lambda batch: seen.append(batch) or original(batch))
    question = "Can you segment the red ship at the top left in this image?"
    result = predictor.predict(str(geotiff), instruction=question, granularity="pixel")
    assert result.mask.shape == result.probabilities.shape == (48, 80)
    assert seen[0]["granularity"] == ["pixel"] and question in seen[0]["instruction"][0]
    assert "masks" not in seen[0]  # the model unites the targets it answers with
    files = result.save(tmp_path)
    with rasterio.open(files["mask"]) as src, rasterio.open(geotiff) as ref:
        assert src.crs == ref.crs and src.transform == ref.transform and src.shape == ref.shape
        np.testing.assert_array_equal(src.read(1) > 0, result.mask)


def test_an_array_is_answered_in_its_own_pixels(predictor):
    result = predictor.predict(
        np.zeros((3, 30, 70), np.float32), instruction="Is there a ship in the image?", granularity="region"
    )
    assert result.mask.shape == (30, 70) and result.crs is None and result.image == "array"


def test_whole_image_models_need_a_question_and_a_known_granularity(predictor, geotiff):
    with pytest.raises(PredictError, match="give instruction="):
        predictor.predict(str(geotiff), category="water")
    with pytest.raises(PredictError, match="granularity must be one of"):
        predictor.predict(str(geotiff), instruction="Where is the ship?", granularity="object")


def test_the_app_asks_whole_image_models_questions(predictor, geotiff, tmp_path, monkeypatch):
    from rsvlm.app import actions

    seen = []
    original = predictor.model.predict_masks
    monkeypatch.setattr(predictor.model, "predict_masks", lambda batch: seen.append(batch) or original(batch))
    picture, answer, files = actions.run(
        predictor, str(geotiff), actions.TASKS[2], None, "the red ship", out_dir=tmp_path
    )
    assert picture.shape == (48, 80, 3) and len(files) == 3
    assert seen[-1]["granularity"] == ["pixel"] and "the red ship" in seen[-1]["instruction"][0]
    actions.run(predictor, str(geotiff), actions.TASKS[1], None, "Is there a ship?", out_dir=tmp_path / "q")
    assert seen[-1]["granularity"] == ["region"]
    with pytest.raises(actions.AppError, match="this model answers questions"):
        actions.run(predictor, str(geotiff), actions.TASKS[0], "water", None, out_dir=tmp_path / "c")


def test_rsvlm_ask_writes_what_the_api_saves(run_folder, scene, tmp_path, capsys):
    import rsvlm
    from rsvlm.cli.main import main

    question = "Describe the water regions."
    assert main(["ask", str(run_folder), str(scene), "--question", question, "--out", str(tmp_path / "cli")]) == 0
    saved = rsvlm.load(run_folder).predict(str(scene), instruction=question).save(tmp_path / "api")
    import json

    assert (tmp_path / "cli" / saved["mask"].name).read_bytes() == saved["mask"].read_bytes()
    answers = [json.loads(p.read_text()) for p in (tmp_path / "cli" / saved["json"].name, saved["json"])]
    assert answers[0]["tiles"] == answers[1]["tiles"]  # each tile's window and generated answer
    assert (
        main(["ask", str(run_folder), str(tmp_path / "missing.tif"), "--question", question, "--out", str(tmp_path)])
        == 2
    )
    capsys.readouterr()
    sar = [
        "ask",
        str(run_folder),
        str(scene),
        "--question",
        question,
        "--out",
        str(tmp_path / "sar"),
        "--modality",
        "sar",
    ]
    assert main(sar) == 2  # a SPEX model reads tiles of its recipe's bands: no modality to choose
    assert "modality= is for whole-image models" in capsys.readouterr().err
    assert not (tmp_path / "sar").exists()
