"""A file whose bands are not the model's, in the model's order (a 13-band Sentinel-2 GeoTIFF for a
4- or 6-band model, a NAIP file in R, G, B, NIR order): its bands are named (``bands=``,
``predict_bands``, ``rsvlm ask --bands``, or its own band descriptions) and the model's are read by
name. Checked against the prediction on a file that holds exactly the model's bands, and against
rasterio's full read sliced with numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import predict_args
from rasterio.crs import CRS
from rasterio.transform import from_origin

import rsvlm
from rsvlm.data.bands import BandError, band_spec, described_bands
from rsvlm.data.raster import read_window, write_geotiff
from rsvlm.inference.writer import overlay_picture

DEMO = list(band_spec("demo").names)
SENTINEL2 = list(band_spec("sentinel2").names)
GRID = dict(crs=CRS.from_epsg(32632), transform=from_origin(500000.0, 5300000.0, 10.0, 10.0))


@pytest.fixture(scope="module")
def model(run_folder):
    return rsvlm.load(run_folder)


@pytest.fixture(scope="module")
def sentinel2_file(scene, tmp_path_factory):
    """The scene's six bands among seven others, in Sentinel-2's 13-band order, without descriptions."""
    with rasterio.open(scene) as src:
        pixels = src.read()
    others = np.random.default_rng(1).uniform(0.0, 0.5, size=(13, *pixels.shape[1:])).astype(np.float32)
    for channel, name in enumerate(DEMO):
        others[SENTINEL2.index(name)] = pixels[channel]
    path = tmp_path_factory.mktemp("s2") / "s2.tif"
    write_geotiff(path, others, **GRID)
    return path


def test_read_window_reads_the_bands_asked_in_their_order_and_only_their_masks_decide(tmp_path):
    data = np.random.default_rng(0).uniform(0, 1, size=(5, 20, 30)).astype(np.float32)
    data[4, 3, 7] = np.nan  # a band not read: the pixel stays valid
    data[1, 5, 9] = np.nan  # a band read: the pixel is invalid
    path = write_geotiff(tmp_path / "five.tif", data, **GRID)
    window, indexes = (2, 4, 10, 12), [4, 2, 1]
    picked, valid, _, transform, _ = read_window(path, window, indexes)
    with rasterio.open(path) as src:
        everything = src.read()
        expected_transform = src.transform @ Affine.translation(4, 2)  # the window's top-left corner
    expected = everything[[i - 1 for i in indexes], 2:12, 4:16]
    np.testing.assert_array_equal(picked, expected)
    np.testing.assert_array_equal(valid, np.all(np.isfinite(expected), axis=0))
    assert not valid[3, 5] and valid[1, 3]
    assert transform == expected_transform
    whole, *_ = read_window(path, window)
    np.testing.assert_array_equal(whole, everything[:, 2:12, 4:16])


def test_band_descriptions_name_bands_only_when_each_is_a_band_name():
    assert described_bands(("Red", "Green", "Blue", "NIR")).names == ("red", "green", "blue", "nir")
    assert described_bands(("B1", "B2", "B3")) is None  # Sen1Floods11's descriptions
    assert described_bands((None, "red")) is None
    assert described_bands(("red", "Red")) is None
    assert described_bands(()) is None


def test_a_sentinel2_file_named_by_bands_gives_the_prediction_of_the_models_own_bands(
    scene, sentinel2_file, model, tmp_path
):
    own = model.predict(str(scene), category="water")
    picked = model.predict(str(sentinel2_file), category="water", bands="sentinel2")
    np.testing.assert_array_equal(picked.mask, own.mask)
    np.testing.assert_array_equal(picked.probabilities, own.probabilities)
    assert picked.texts == own.texts
    # its picture is drawn from the file's own red, green and blue
    np.testing.assert_array_equal(picked.show(), overlay_picture(str(sentinel2_file), own.mask, SENTINEL2))
    np.testing.assert_array_equal(picked.show(), own.show())
    saved = picked.save(tmp_path)
    with rasterio.open(saved["mask"]) as src:
        np.testing.assert_array_equal(src.read(1).astype(bool), own.mask)
    as_list = model.predict(str(sentinel2_file), category="water", bands=SENTINEL2)
    np.testing.assert_array_equal(as_list.probabilities, own.probabilities)


def test_band_descriptions_pick_the_bands_and_a_missing_one_names_file_and_band(scene, model, tmp_path):
    with rasterio.open(scene) as src:
        pixels = src.read()
    reversed_file = write_geotiff(tmp_path / "reversed.tif", pixels[::-1].copy(), band_names=DEMO[::-1], **GRID)
    own = model.predict(str(scene), category="water")
    by_description = model.predict(str(reversed_file), category="water")
    np.testing.assert_array_equal(by_description.probabilities, own.probabilities)
    no_swir = write_geotiff(tmp_path / "rgbn.tif", pixels[:4].copy(), band_names=DEMO[:4], **GRID)
    with pytest.raises(BandError, match=r"rgbn\.tif: has no band 'swir1'.*its band descriptions"):
        model.predict(str(no_swir), category="water")


def test_a_file_with_other_bands_and_no_names_is_one_line_naming_the_way_out(sentinel2_file, model):
    with pytest.raises(BandError, match=r"s2\.tif: has 13 bands but the model reads 6 .*predict_bands") as caught:
        model.predict(str(sentinel2_file), category="water")
    assert "\n" not in str(caught.value)
    with pytest.raises(BandError, match=r"s2\.tif: has 13 bands but predict_bands lists 4"):
        model.predict(str(sentinel2_file), category="water", bands="naip")


def test_rsvlm_predict_and_ask_take_the_files_bands(run_folder, scene, sentinel2_file, model, tmp_path):
    from rsvlm.cli.main import main

    inputs = [
        f"--data.init_args.predict_paths=[{sentinel2_file}]",
        "--data.init_args.predict_bands=sentinel2",
        "--data.init_args.categories=[water]",
    ]
    code = main(predict_args(run_folder, tmp_path / "cli", tmp_path / "predict-run", *inputs))
    assert code in (0, None)
    own = model.predict(str(scene), category="water")
    with rasterio.open(tmp_path / "cli" / "s2.mask.tif") as src:
        np.testing.assert_array_equal(src.read(1).astype(bool), own.mask)
    written = json.loads((tmp_path / "cli" / "s2.json").read_text())
    assert [t["description"] for t in written["tiles"]] == own.texts

    question = "Describe the water."
    asked = ["ask", str(run_folder), str(sentinel2_file), "--question", question, "--out", str(tmp_path / "ask")]
    assert main([*asked, "--bands", ",".join(SENTINEL2)]) == 0
    expected = model.predict(str(scene), instruction=question)
    with rasterio.open(tmp_path / "ask" / "s2.mask.tif") as src:
        np.testing.assert_array_equal(src.read(1).astype(bool), expected.mask)


def test_an_unknown_predict_bands_preset_names_the_field(tmp_path):
    from rsvlm.data.spie.datamodule import SpieDataModule

    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"bands": {n: {"mean": 0.2, "std": 0.1} for n in DEMO}}))
    with pytest.raises(ValueError, match="SpieDataModule.predict_bands: unknown band preset 'sentinel3'"):
        SpieDataModule(stats=str(stats), bands="demo", predict_bands="sentinel3")
