"""Tiled prediction: windows cover scenes, stitching reproduces logits, outputs keep georeferencing."""

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

from rsvlm.inference.predict import (
    PredictionWriter,
    Stitcher,
    TiledPredictDataset,
    blend_weights,
    check_outputs,
    output_paths,
    tile_windows,
)

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


@pytest.mark.parametrize(
    "height,width,tile,overlap",
    [(70, 90, 32, 8), (64, 64, 32, 0), (20, 50, 32, 4), (33, 97, 16, 15), (5, 5, 8, 2), (512, 1000, 256, 64)],
)
def test_windows_cover_every_pixel_inside_the_scene(height, width, tile, overlap):
    windows = tile_windows(height, width, tile, overlap)
    cover = np.zeros((height, width), dtype=int)
    for r, c, h, w in windows:
        assert r >= 0 and c >= 0 and r + h <= height and c + w <= width
        assert (h, w) == (min(tile, height), min(tile, width))
        cover[r : r + h, c : c + w] += 1
    assert (cover >= 1).all()
    # Neighbouring starts are at most tile - overlap apart, so neighbours share >= overlap pixels.
    for axis in (0, 1):
        starts = sorted({w[axis] for w in windows})
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert len(windows) == len(set(windows))


def test_bad_tiling_arguments_are_errors():
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(10, 10, 8, 8)
    with pytest.raises(ValueError, match="scene size"):
        tile_windows(0, 10, 8, 0)


@pytest.mark.parametrize("blend", ["cosine", "mean"])
def test_stitching_tiles_of_a_known_field_gives_it_back(blend):
    rng = np.random.default_rng(1)
    field = rng.normal(size=(70, 90)).astype(np.float32) * 5
    stitcher = Stitcher(70, 90, blend)
    for r, c, h, w in tile_windows(70, 90, 32, 8):
        stitcher.add((r, c, h, w), torch.from_numpy(field[r : r + h, c : c + w]))
    np.testing.assert_allclose(stitcher.result(), field, rtol=1e-5, atol=1e-5)


def test_overlaps_are_weighted_averages():
    # Two tiles of constant logits 0 and 1 overlapping by 4 columns: the overlap gets the
    # weighted mean with the sin² window of each tile evaluated at its own column index.
    stitcher = Stitcher(8, 12, "cosine")
    stitcher.add((0, 0, 8, 8), np.zeros((8, 8)))
    stitcher.add((0, 4, 8, 8), np.ones((8, 8)))
    out = stitcher.result()
    weight = np.sin(np.pi * (np.arange(8) + 0.5) / 8) ** 2
    for col in range(4, 8):
        expected = weight[col - 4] / (weight[col] + weight[col - 4])
        np.testing.assert_allclose(out[:, col], expected, rtol=1e-6)
    assert (out[:, :4] == 0).all() and (out[:, 8:] == 1).all()
    assert (blend_weights(5, 7) > 0).all()
    with pytest.raises(ValueError, match="no tile"):
        Stitcher(4, 4).result()


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

    from rsvlm.data.spie.datamodule import SpieCollate
    from rsvlm.models.spex import SpexModel

    model = SpexModel(**tiny_spex_components())
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
