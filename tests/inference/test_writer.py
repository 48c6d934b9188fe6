"""Prediction outputs: masks keep georeferencing and nodata, overlays and JSON are written, files are protected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rsvlm.data.bands import BandError
from rsvlm.data.spie.predict_dataset import TiledPredictDataset
from rsvlm.data.tiling import tile_windows
from rsvlm.inference.writer import PredictionWriter, check_outputs, output_paths, overlay_picture

BANDS = ["blue", "green", "red", "nir"]
CRS_UTM = CRS.from_epsg(32633)
TRANSFORM = from_origin(500000.0, 4100000.0, 10.0, 10.0)


def write_scene(path: Path, height: int, width: int, nodata_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A 4-band uint16 GeoTIFF with nodata 0 inside ``nodata_box`` (row0, row1, col0, col1); returns the data."""
    rng = np.random.default_rng(0)
    data = rng.integers(100, 3000, size=(4, height, width)).astype(np.uint16)
    if nodata_box is not None:
        r0, r1, c0, c1 = nodata_box
        data[:, r0:r1, c0:c1] = 0
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=height,
        width=width,
        count=4,
        dtype="uint16",
        crs=CRS_UTM,
        transform=TRANSFORM,
        nodata=0,
    ) as dst:
        dst.write(data)
    return data


def _feed(writer: PredictionWriter, dataset: TiledPredictDataset, field: np.ndarray) -> None:
    """Simulate a model whose logits are ``field`` (scene-sized), cropped to each tile and padded."""
    for i in range(len(dataset)):
        sample = dataset[i]
        r, c, h, w = sample["meta"]["window"]
        logits = torch.full((dataset.tile, dataset.tile), -99.0)
        logits[:h, :w] = torch.from_numpy(field[r : r + h, c : c + w])
        writer.add(sample["meta"], logits, sample["valid"][0], f"tile {i}")


def test_written_outputs_keep_georeferencing_and_honour_nodata(tmp_path):
    src = tmp_path / "in" / "scene.tif"
    src.parent.mkdir()
    data = write_scene(src, 70, 90, nodata_box=(0, 32, 0, 32))
    dataset = TiledPredictDataset(
        [str(src)], BANDS, mean=[1500.0] * 4, std=[800.0] * 4, tile=32, overlap=8, categories=["water"]
    )
    assert len(dataset) == len(tile_windows(70, 90, 32, 8))
    first = dataset[0]
    assert first["image"].shape == (4, 32, 32) and not first["valid"].any()  # an all-nodata tile is kept
    assert "water" in first["instruction"] and first["meta"]["crs"] == CRS_UTM.to_string()

    field = np.where(data[0].astype(np.float32) > 1500, 4.0, -4.0).astype(np.float32)
    writer = PredictionWriter(str(tmp_path / "out"), threshold=0.5)
    _feed(writer, dataset, field)
    paths = output_paths(tmp_path / "out", str(src), "water", several=False)
    assert paths["mask"].name == "scene.mask.tif"
    with rasterio.open(paths["mask"]) as out:
        assert out.crs == CRS_UTM and out.transform == TRANSFORM
        assert (out.height, out.width) == (70, 90)
        mask = out.read(1)
    valid = np.all(data != 0, axis=0)
    np.testing.assert_array_equal(mask, ((field > 0) & valid).astype(np.uint8))
    assert mask[:32, :32].max() == 0

    with Image.open(paths["overlay"]) as picture:
        assert picture.size == (90, 70) and picture.mode == "RGB"
    report = json.loads(paths["json"].read_text())
    assert report["category"] == "water" and report["threshold"] == 0.5
    assert [t["description"] for t in report["tiles"]] == [f"tile {i}" for i in range(len(dataset))]
    assert report["transform"] == list(TRANSFORM)[:6]
    assert src.read_bytes()  # input untouched
    with rasterio.open(src) as again:
        np.testing.assert_array_equal(again.read(), data)


def test_probabilities_are_the_sigmoid_of_the_stitched_logits_with_nan_where_no_data(tmp_path):
    from scipy.special import expit

    src = tmp_path / "scene.tif"
    data = write_scene(src, 40, 50, nodata_box=(0, 10, 0, 12))
    dataset = TiledPredictDataset([str(src)], BANDS, mean=[1500.0] * 4, std=[800.0] * 4, tile=64, overlap=0)
    field = np.linspace(-6.0, 6.0, 40 * 50, dtype=np.float32).reshape(40, 50)  # one tile: no blending
    writer = PredictionWriter(str(tmp_path / "out"), threshold=0.3, probabilities=True)
    _feed(writer, dataset, field)
    paths = output_paths(tmp_path / "out", str(src), None, several=False, probabilities=True)
    assert paths["probabilities"].name == "scene.prob.tif"
    valid = np.all(data != 0, axis=0)
    with rasterio.open(paths["probabilities"]) as out, rasterio.open(paths["mask"]) as mask:
        assert out.dtypes[0] == "float32" and np.isnan(out.nodata) and out.descriptions == ("probability",)
        assert out.crs == CRS_UTM and out.transform == TRANSFORM
        probabilities = out.read(1)
        np.testing.assert_array_equal(np.isnan(probabilities), ~valid)
        np.testing.assert_allclose(probabilities[valid], expit(field.astype(np.float64))[valid], rtol=1e-6)
        np.testing.assert_array_equal(mask.read(1).astype(bool), (probabilities > 0.3) & valid)
    assert json.loads(paths["json"].read_text())["outputs"]["probabilities"] == str(paths["probabilities"])
    with pytest.raises(FileExistsError, match=r"scene\.(mask\.tif|overlay\.png|json|prob\.tif) already exists"):
        _feed(PredictionWriter(str(tmp_path / "out"), probabilities=True), dataset, field)


def test_overlay_picture_draws_the_mask_over_true_colour_and_names_missing_bands(tmp_path):
    src = tmp_path / "scene.tif"
    data = write_scene(src, 12, 10).astype(np.float64)
    mask = np.zeros((12, 10), dtype=bool)
    mask[3:7, 2:5] = True
    channels = []
    for band in data[[2, 1, 0]]:  # red, green, blue of BANDS
        lo, hi = np.percentile(band, [2, 98])
        channels.append(np.rint(np.clip((band - lo) / (hi - lo), 0, 1) * 255))
    rgb = np.stack(channels, axis=-1)
    expected = np.where(mask[..., None], np.rint(0.55 * rgb + 0.45 * np.array([255.0, 0.0, 0.0])), rgb)
    np.testing.assert_array_equal(overlay_picture(str(src), mask, BANDS), expected.astype(np.uint8))
    with pytest.raises(BandError, match=r"scene\.tif.*false-colour composite.*'nir'"):
        overlay_picture(str(src), mask, ["blue", "green", "red", "swir1"], composite_kind="false")


def test_existing_outputs_are_refused_unless_overwrite(tmp_path):
    src = tmp_path / "scene.tif"
    data = write_scene(src, 40, 40)
    field = np.full((40, 40), 3.0, dtype=np.float32)
    dataset = TiledPredictDataset([str(src)], BANDS, [1500.0] * 4, [800.0] * 4, tile=32, overlap=8)
    _feed(PredictionWriter(str(tmp_path / "out")), dataset, field)
    with pytest.raises(FileExistsError, match=r"scene\.(mask\.tif|overlay\.png|json) already exists"):
        _feed(PredictionWriter(str(tmp_path / "out")), dataset, -field)
    _feed(PredictionWriter(str(tmp_path / "out"), overwrite=True), dataset, -field)
    with rasterio.open(tmp_path / "out" / "scene.mask.tif") as out:
        assert out.read(1).max() == 0
    # An output path that is an input is refused even with overwrite.
    with pytest.raises(FileExistsError, match="over the input file"):
        check_outputs({"mask": src}, {src.resolve()}, overwrite=True)
    assert data.shape == (4, 40, 40)


def test_several_categories_get_their_own_files(tmp_path):
    src = tmp_path / "scene.tif"
    write_scene(src, 20, 20)
    dataset = TiledPredictDataset(
        [str(src)], BANDS, [1500.0] * 4, [800.0] * 4, tile=32, overlap=0, categories=["water", "vegetation"]
    )
    assert len(dataset) == 2 and dataset[0]["image"].shape == (4, 32, 32)
    assert dataset[0]["meta"]["pad"] == [0, 0, 12, 12]
    _feed(PredictionWriter(str(tmp_path / "out")), dataset, np.zeros((20, 20), np.float32))
    assert {p.name for p in (tmp_path / "out").glob("*.mask.tif")} == {
        "scene.water.mask.tif",
        "scene.vegetation.mask.tif",
    }


def test_whole_image_batches_are_resized_back(tmp_path):
    # The datamodule's untiled predict samples: resized to 32 keeping the aspect ratio, padded.
    src = tmp_path / "wide.tif"
    write_scene(src, 30, 50)
    meta = {"image": str(src), "original_size": [30, 50], "resized_size": [19, 32], "pad": [0, 0, 13, 0]}
    logits = torch.full((32, 32), -5.0)
    logits[:19, 16:32] = 5.0  # right half of the resized image
    writer = PredictionWriter(str(tmp_path / "out"))
    writer.add(meta, logits, torch.ones(32, 32, dtype=torch.bool), "text")
    with rasterio.open(tmp_path / "out" / "wide.mask.tif") as out:
        mask = out.read(1)
    assert mask.shape == (30, 50)
    assert mask[:, :24].max() == 0 and mask[:, 26:].min() == 1


def test_wrong_band_count_is_refused_with_the_file(tmp_path):
    src = tmp_path / "three.tif"
    with rasterio.open(src, "w", driver="GTiff", height=8, width=8, count=3, dtype="uint8") as dst:
        dst.write(np.ones((3, 8, 8), np.uint8))
    with pytest.raises(Exception, match=r"three\.tif.*3 bands.*4"):
        TiledPredictDataset([str(src)], BANDS, [0.0] * 4, [1.0] * 4, tile=8, overlap=0)


def test_predict_with_the_model_through_lightning(tmp_path):
    import lightning as L
    from conftest import tiny_spex_components
    from torch.utils.data import DataLoader

    from rsvlm.data.spie.dataset import SpieCollate
    from rsvlm.models.vlm import VisionLanguageModel

    model = VisionLanguageModel(**tiny_spex_components())
    model.generation.max_new_tokens = 3
    src = tmp_path / "scene.tif"
    write_scene(src, 40, 48)
    dataset = TiledPredictDataset(
        [str(src)], BANDS, [1500.0] * 4, [800.0] * 4, tile=32, overlap=8, categories=["water"]
    )
    loader = DataLoader(dataset, batch_size=2, collate_fn=SpieCollate(model.llm.formatter))
    writer = PredictionWriter(str(tmp_path / "out"))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, callbacks=[writer])
    trainer.predict(model, dataloaders=loader, return_predictions=False)
    assert len(writer.written) == 1
    with rasterio.open(writer.written[0]["mask"]) as out:
        assert out.crs == CRS_UTM and out.transform == TRANSFORM and out.shape == (40, 48)
        assert set(np.unique(out.read(1))) <= {0, 1}
    report = json.loads(Path(writer.written[0]["json"]).read_text())
    assert len(report["tiles"]) == len(dataset) and all(isinstance(t["description"], str) for t in report["tiles"])
    # A second run refuses before predicting anything.
    again = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        callbacks=[PredictionWriter(str(tmp_path / "out"))],
    )
    with pytest.raises(FileExistsError, match="already exists"):
        again.predict(model, dataloaders=loader, return_predictions=False)
