"""Prediction.save: the answer's boxes as GeoJSON in the image's CRS (pixel coordinates for a picture
without georeferencing), and the visual prompts drawn on the overlay PNG."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from rsvlm.data.coords import format_grounding
from rsvlm.data.visual_prompts import VisualPrompt
from rsvlm.inference.prediction import Prediction

HEIGHT, WIDTH, TILE = 40, 60, 64
# a rotated, sheared grid (a, b, c, d, e, f): X = a·col + b·row + c, Y = d·col + e·row + f
GRID = (2.0, 0.5, 350000.0, 0.25, -3.0, 4600000.0)


def write_image(path, transform=None, crs=None, driver="GTiff") -> str:
    rng = np.random.default_rng(1)
    profile = {"driver": driver, "height": HEIGHT, "width": WIDTH, "count": 3, "dtype": "uint8"}
    if transform is not None:
        profile.update(transform=transform, crs=crs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a PNG without georeferencing
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(rng.integers(0, 255, size=(3, HEIGHT, WIDTH), dtype=np.uint8))
    return str(path)


def prediction(image: str, text: str, transform=None, crs=None, pixels=None, prompts=()) -> Prediction:
    """One tile covering the image, its answer ``text`` written on the 64-px model input."""
    logits = torch.full((TILE, TILE), -4.0)
    logits[5:15, 10:30] = 4.0  # a mask, so the overlay has red in it
    valid = torch.ones(TILE, TILE, dtype=torch.bool)
    meta = {
        "image": image,
        "window": [0, 0, HEIGHT, WIDTH],
        "scene_size": [HEIGHT, WIDTH],
        "tile_index": 0,
        "num_tiles": 1,
        "category": None,
        "bands": ["red", "green", "blue"],
    }
    mask = (logits[:HEIGHT, :WIDTH] > 0).numpy()
    return Prediction(
        image=image,
        category=None,
        instruction="Where are the ships?",
        texts=[text],
        probabilities=mask.astype(np.float32),
        mask=mask,
        valid=np.ones_like(mask),
        crs=crs,
        transform=transform,
        bands=("red", "green", "blue"),
        threshold=0.5,
        pixels=pixels,
        tiles=[(meta, logits, valid, text)],
        prompts=list(prompts),
    )


ANSWER = (
    "Two ships: "
    + format_grounding("the ship", [[4.0, 6.0, 20.0, 18.0], [30.0, 2.0, 50.0, 12.0]], (TILE, TILE))
    + " and "
    + format_grounding("the pier", [[8.0, 20.0, 40.0, 36.0]], (TILE, TILE))
)


def test_boxes_are_written_in_the_source_crs_through_its_transform(tmp_path):
    transform = Affine(*GRID)
    image = write_image(tmp_path / "harbour.tif", transform, CRS.from_epsg(32633))
    result = prediction(image, ANSWER, transform, CRS.from_epsg(32633))
    files = result.save(tmp_path / "out")
    assert files["boxes"].name == "harbour.boxes.geojson"
    written = json.loads(files["boxes"].read_text())
    assert written["type"] == "FeatureCollection"
    assert written["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    features = written["features"]
    pixel_boxes = [(g.phrase, b) for g in result.boxes for b in g.boxes]
    assert [f["properties"]["phrase"] for f in features] == ["the ship", "the ship", "the pier"]
    a, b, c, d, e, f = GRID
    for feature, (phrase, (x0, y0, x1, y1)) in zip(features, pixel_boxes, strict=True):
        assert feature["geometry"]["type"] == "Polygon" and feature["properties"]["phrase"] == phrase
        ring = np.array(feature["geometry"]["coordinates"][0])
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        expected = [(a * x + b * y + c, d * x + e * y + f) for x, y in corners]  # the affine formula
        np.testing.assert_allclose(ring, expected, rtol=0, atol=1e-6)
        assert feature["properties"]["pixels"] == pytest.approx([x0, y0, x1, y1])
    # the pixel boxes are the ones written in the answer (3 decimals of the 64-px tile)
    assert pixel_boxes[2][1] == pytest.approx([8.0, 20.0, 40.0, 36.0], abs=0.6e-3 * TILE)
    # and rasterio's own pixel → map (pixel corners: offset "ul") agrees for every corner
    xs, ys = rasterio.transform.xy(transform, [6.0, 18.0], [4.0, 20.0], offset="ul")
    first = np.array(features[0]["geometry"]["coordinates"][0])
    np.testing.assert_allclose(first[[0, 2]], np.stack([xs, ys], axis=1), atol=0.5e-3 * TILE * 4)


def test_a_picture_without_georeferencing_gets_pixel_boxes_and_no_crs(tmp_path):
    image = write_image(tmp_path / "harbour.png", driver="PNG")
    files = prediction(image, ANSWER).save(tmp_path / "out")
    written = json.loads(files["boxes"].read_text())
    assert "crs" not in written
    ring = written["features"][2]["geometry"]["coordinates"][0]
    assert np.allclose(ring, [[8, 20], [40, 20], [40, 36], [8, 36], [8, 20]], atol=0.6e-3 * TILE)
    pixels = np.zeros((3, HEIGHT, WIDTH), np.float32)  # an in-memory array: pixels too
    array_files = prediction("array", ANSWER, pixels=pixels).save(tmp_path / "array")
    assert array_files["boxes"].name == "array.boxes.geojson"
    assert json.loads(array_files["boxes"].read_text()) == written


def test_no_boxes_no_geojson_and_an_existing_one_is_refused(tmp_path):
    image = write_image(tmp_path / "harbour.png", driver="PNG")
    files = prediction(image, "no ship here").save(tmp_path / "out")
    assert "boxes" not in files and not list((tmp_path / "out").glob("*.geojson"))
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "harbour.png.boxes.geojson").write_text("{}")  # the writer's stem keeps ".png"
    with pytest.raises(FileExistsError, match=r"harbour\.png\.boxes\.geojson"):
        prediction(image, ANSWER).save(tmp_path / "again")
    assert not (tmp_path / "again" / "harbour.png.mask.tif").exists()  # refused before writing anything
    prediction(image, ANSWER).save(tmp_path / "again", overwrite=True)
    assert json.loads((tmp_path / "again" / "harbour.png.boxes.geojson").read_text())["features"]


def test_the_overlay_draws_the_prompts(tmp_path):
    image = write_image(tmp_path / "harbour.tif", Affine(*GRID), CRS.from_epsg(32633))
    point = VisualPrompt("point", vertices=[45.5, 30.5])
    box = VisualPrompt("box", box=(2.0, 22.0, 20.0, 38.0))
    plain = prediction(image, ANSWER).save(tmp_path / "plain")
    prompted_result = prediction(image, ANSWER, prompts=[point, box])
    prompted = prompted_result.save(tmp_path / "prompted")
    before, after = (np.asarray(Image.open(p["overlay"]).convert("RGB")) for p in (plain, prompted))
    assert before.shape == after.shape == (HEIGHT, WIDTH, 3)
    assert (before[30, 45] != after[30, 45]).any()  # the point's disc
    assert (before[22, 10] != after[22, 10]).any()  # the box's top edge
    assert (before[30, 10] == after[30, 10]).all()  # inside the box: an outline, the image shows
    assert (before[2, 58] == after[2, 58]).all()  # far from every prompt: unchanged
    np.testing.assert_array_equal(after, prompted_result.show())
    np.testing.assert_array_equal(before, prompted_result.show(prompts=False))
    # the mask GeoTIFF and the answer are the writer's, prompts or not
    assert prompted["mask"].read_bytes() == plain["mask"].read_bytes()
