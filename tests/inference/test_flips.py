"""Test-time flips: each prediction tile is read mirrored, its prediction mirrored back, and the passes
averaged, in the predict dataset, ``run_tiles`` (the Python API and ``rsvlm evaluate``) and the writer
(``rsvlm predict``). Checked against tiles mirrored with numpy and a model whose answer depends on
where a pixel sits in the tile (so a pass that is not mirrored back changes the result)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from rsvlm.data.spie.predict_dataset import ArrayPredictDataset, TiledPredictDataset
from rsvlm.data.tiling import FLIPS, tile_windows
from rsvlm.inference.stitch import Stitcher

BANDS = ["blue", "green", "red", "nir"]
MEAN, STD = [1500.0] * 4, [800.0] * 4
ALL_FLIPS = tuple(FLIPS)
TILE, OVERLAP = 32, 8
OPTIONS = dict(tile=TILE, overlap=OVERLAP, categories=["water"], normalization="image")


def _scene(height: int = 40, width: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A 4-band scene with water in its upper-left part (so its APG prompt names a place) and a nodata hole."""
    rng = np.random.default_rng(0)
    image = rng.uniform(500, 3000, size=(4, height, width)).astype(np.float32)
    image[1, : height // 2, : width // 3] += 2500  # green up, NIR down: water
    image[3, : height // 2, : width // 3] = 200
    valid = np.ones((height, width), dtype=bool)
    valid[-5:, -7:] = False
    return image, valid


def _ramp() -> torch.Tensor:
    """``T×T``: 0.1 × the column index, in the model's own tile coordinates."""
    return 0.1 * torch.arange(TILE, dtype=torch.float32).expand(TILE, TILE)


def _answer(sample: dict) -> torch.Tensor:
    """What the stand-in model says about one ``C×T×T`` tile: its first channel plus the column ramp.

    Mirrored back and averaged over the four flips, the ramp becomes its mean 0.1 · (T − 1) / 2."""
    return sample["image"][0] + _ramp()


def _expected_scene_logits(dataset: TiledPredictDataset, height: int, width: int) -> np.ndarray:
    """``H×W``: the stitched first channel of the unflipped tiles plus the ramp's mean."""
    stitcher = Stitcher(height, width)
    for sample in (dataset[i] for i in range(len(dataset))):
        if sample["meta"]["flip"] == "none":
            _, _, h, w = sample["meta"]["window"]
            stitcher.add(sample["meta"]["window"], sample["image"][0, :h, :w] + 0.1 * (TILE - 1) / 2)
    return stitcher.result()


def test_each_tile_comes_once_per_flip_as_the_tile_mirrored_before_it_is_read():
    image, valid = _scene()
    flipped = ArrayPredictDataset([("s", image, valid)], BANDS, MEAN, STD, flips=ALL_FLIPS, **OPTIONS)
    windows = tile_windows(40, 48, TILE, OVERLAP)
    assert len(flipped) == len(windows) * len(ALL_FLIPS)
    for i in range(len(flipped)):
        sample = flipped[i]
        meta = sample["meta"]
        assert meta["num_flips"] == 4 and meta["window"] == list(windows[meta["tile_index"]])
        r, c, h, w = meta["window"]
        axes = FLIPS[meta["flip"]]
        # Reference: the window cut out and mirrored with numpy, then predicted as an image of its own.
        tile = np.flip(image[:, r : r + h, c : c + w], axis=axes) if axes else image[:, r : r + h, c : c + w]
        tile_valid = np.flip(valid[r : r + h, c : c + w], axis=axes) if axes else valid[r : r + h, c : c + w]
        alone = ArrayPredictDataset(
            [("t", np.ascontiguousarray(tile), np.ascontiguousarray(tile_valid))], BANDS, MEAN, STD, **OPTIONS
        )[0]
        torch.testing.assert_close(sample["image"], alone["image"])
        assert torch.equal(sample["valid"], alone["valid"])
        assert sample["instruction"] == alone["instruction"]
    # The APG prompt follows the mirror: the water of the upper-left corner tile is elsewhere once flipped.
    corner = [flipped[i]["instruction"] for i in range(4)]
    assert len(set(corner)) > 1


def test_run_tiles_averages_the_mirrored_back_passes_and_keeps_the_unflipped_texts():
    from conftest import tiny_spex_components

    from rsvlm.inference.tiles import Scene, run_tiles
    from rsvlm.models.vlm import VisionLanguageModel

    model = VisionLanguageModel(**tiny_spex_components())

    def stand_in(batch):  # predict_masks of a model whose answer depends on the pixel's place in the tile
        logits = torch.stack([batch["image"][i, 0] + _ramp() for i in range(len(batch["meta"]))])[:, None]
        return {"mask_logits": logits, "texts": [m["flip"] for m in batch["meta"]]}

    model.predict_masks = stand_in
    image, valid = _scene()
    results = {}
    for flips in (("none",), ALL_FLIPS):
        dataset = ArrayPredictDataset([("s", image, valid)], BANDS, MEAN, STD, flips=flips, **OPTIONS)
        scene = Scene.of_size(40, 48)
        run_tiles(model, model.llm.formatter, 3, [dataset], {"s": scene})
        assert scene.texts == ["none"] * len(tile_windows(40, 48, TILE, OVERLAP))
        # every pass is kept (Prediction.save hands them to the writer); the texts are the unflipped pass's
        assert sorted(t[0]["flip"] for t in scene.tiles) == sorted(list(flips) * len(scene.texts))
        results[flips] = scene.stitcher.result()
    np.testing.assert_allclose(results[ALL_FLIPS], _expected_scene_logits(dataset, 40, 48), atol=1e-5)
    # One pass keeps the ramp where it was, so the averaging is what changed the result.
    assert np.abs(results[("none",)] - results[ALL_FLIPS]).max() > 1.0


def _write_tif(path, image: np.ndarray, valid: np.ndarray) -> None:
    data = np.where(valid, image, 0).astype(np.uint16)
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=4, dtype="uint16", nodata=0)
    with rasterio.open(path, "w", crs="EPSG:32633", transform=from_origin(5e5, 4.1e6, 10, 10), **profile) as dst:
        dst.write(data)


def test_the_writer_waits_for_every_pass_and_writes_the_mean_with_the_unflipped_descriptions(tmp_path):
    from rsvlm.inference.writer import PredictionWriter, output_paths

    image, valid = _scene()
    image = np.round(image)
    source = tmp_path / "scene.tif"
    _write_tif(source, image, valid)
    dataset = TiledPredictDataset([str(source)], BANDS, MEAN, STD, flips=ALL_FLIPS, **OPTIONS)
    writer = PredictionWriter(str(tmp_path / "out"))
    shift = 0.1 * (TILE - 1) / 2  # the ramp's mean: a pixel's sign then says whether the passes were averaged
    for i in range(len(dataset)):
        assert not writer.written, "the scene was written before its last pass"
        sample = dataset[i]
        writer.add(sample["meta"], _answer(sample) - shift, sample["valid"][0], f"{sample['meta']['flip']} {i}")
    assert len(writer.written) == 1
    paths = output_paths(tmp_path / "out", str(source), "water", several=False)
    with rasterio.open(paths["mask"]) as out:
        mask = out.read(1).astype(bool)
    expected = (_expected_scene_logits(dataset, 40, 48) - shift > 0) & valid
    np.testing.assert_array_equal(mask, expected)
    report = json.loads(paths["json"].read_text())
    descriptions = [t["description"] for t in report["tiles"]]
    assert len(descriptions) == len(tile_windows(40, 48, TILE, OVERLAP))
    assert all(d.startswith("none ") for d in descriptions)
    with pytest.raises(ValueError, match=r"tile 0 \(flip vertical\) of .*scene\.tif arrived twice"):
        again = PredictionWriter(str(tmp_path / "again"))
        sample = next(dataset[i] for i in range(len(dataset)) if dataset[i]["meta"]["flip"] == "vertical")
        for _ in range(2):
            again.add(sample["meta"], _answer(sample), sample["valid"][0], "")


def test_the_data_module_carries_its_flips_to_evaluate_and_refuses_bad_ones(tmp_path):
    from rsvlm.data.spie.datamodule import SpieDataModule
    from rsvlm.inference.evaluate import ModelInput

    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"bands": {b: {"mean": 0.25, "std": 0.1} for b in BANDS}}))
    dm = SpieDataModule(stats=str(stats), bands=BANDS, predict_flips=["none", "vertical"])
    assert ModelInput.from_datamodule(dm).flips == ("none", "vertical")
    assert ModelInput.from_datamodule(SpieDataModule(stats=str(stats), bands=BANDS)).flips == ("none",)
    with pytest.raises(ValueError, match=r"SpieDataModule\.predict_flips: unknown flip 'sideways'"):
        SpieDataModule(stats=str(stats), bands=BANDS, predict_flips=["none", "sideways"])


def test_a_run_and_its_exported_folder_keep_the_recipes_flips(run_folder, tmp_path):
    import shutil

    import yaml

    import rsvlm
    from rsvlm.cli.main import main

    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["init_args"]["predict_flips"] = ["none", "horizontal"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert rsvlm.load(run).settings.flips == ("none", "horizontal")
    folder = tmp_path / "model"
    assert main(["export", str(run), "--to", str(folder)]) == 0
    assert json.loads((folder / "rsvlm.json").read_text())["predict_flips"] == ["none", "horizontal"]
    assert rsvlm.load(folder).settings.flips == ("none", "horizontal")


def test_a_scene_starting_with_nodata_is_checked_for_valid_pixels_once_not_per_category_and_flip():
    class CountingReads(ArrayPredictDataset):
        reads = 0

        def _read(self, scene, window):
            CountingReads.reads += 1
            return super()._read(scene, window)

    image, valid = _scene()
    valid[:TILE, :TILE] = False  # the first tile has no data, so the scene's other tiles are searched
    dataset = CountingReads(
        [("s", image, valid)], BANDS, MEAN, STD, flips=ALL_FLIPS, **{**OPTIONS, "categories": ["water", "vegetation"]}
    )
    for i in range(len(dataset)):
        dataset[i]
    windows = tile_windows(40, 48, TILE, OVERLAP)
    assert len(dataset) == len(windows) * 2 * len(ALL_FLIPS)
    # The search reads windows up to the first with data, once for the scene.
    searched = next(i for i, (r, c, h, w) in enumerate(windows) if valid[r : r + h, c : c + w].any()) + 1
    assert CountingReads.reads == len(dataset) + searched


def test_a_prediction_with_flips_saves_the_mask_it_holds(run_folder, scene, tmp_path):
    """``Prediction.save`` hands every pass to the writer, which writes a scene once all have come."""
    import shutil

    import yaml

    import rsvlm

    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["init_args"]["predict_flips"] = list(ALL_FLIPS)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = rsvlm.load(run).predict(str(scene), category="water")
    paths = result.save(tmp_path / "out")
    with rasterio.open(paths["mask"]) as src:
        np.testing.assert_array_equal(src.read(1).astype(bool), result.mask)
    described = [t["description"] for t in json.loads(paths["json"].read_text())["tiles"]]
    assert described == result.texts and len(result.tiles) == len(ALL_FLIPS) * len(result.texts) > 0
