"""``rsvlm ask`` with visual prompts: points and boxes in pixel or map coordinates, strokes and
regions from GeoJSON (reprojected from another CRS, polygons rasterised by pixel centre), mask
rasters on the image's grid or resampled onto it, and one-line errors naming the option and file."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import rasterio
from matplotlib.path import Path as PolygonPath
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.warp import transform as reproject_points

import rsvlm
from rsvlm.cli.main import main
from rsvlm.inference.prompt_files import PromptError, parse_box, parse_point, place_prompts

# the conftest scene: 100×80 pixels of 10 m, north up, top-left corner (500000, 5300000), EPSG:32632
WIDTH, HEIGHT = 100, 80
OUTER = [[10.3, 8.1], [70.7, 12.2], [55.1, 60.4], [35.2, 30.9], [12.6, 66.8]]  # not convex
HOLE = [[40.2, 20.3], [50.4, 20.1], [45.3, 28.7]]


def to_map(xy: list[list[float]]) -> list[list[float]]:
    """Scene pixels → EPSG:32632, by the affine formula of its grid."""
    return [[500000.0 + 10.0 * x, 5300000.0 - 10.0 * y] for x, y in xy]


def to_lonlat(xy: list[list[float]]) -> list[list[float]]:
    """Scene pixels → EPSG:4326 longitude, latitude."""
    utm = np.array(to_map(xy))
    lon, lat = reproject_points(CRS.from_epsg(32632), CRS.from_epsg(4326), utm[:, 0], utm[:, 1])
    return [[a, b] for a, b in zip(lon, lat, strict=True)]


def closed(ring: list[list[float]]) -> list[list[float]]:
    return [*ring, ring[0]]


def write_json(path, value) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def polygon_file(path, rings: list[list[list[float]]], crs: str | None = None) -> str:
    feature = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": rings}}
    collection = {"type": "FeatureCollection", "features": [feature]}
    if crs is not None:
        collection["crs"] = {"type": "name", "properties": {"name": crs}}
    return write_json(path, collection)


def brute_force_polygon() -> np.ndarray:
    """The pixels whose centre lies in OUTER but not in HOLE (point-in-polygon, pixel by pixel)."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    centres = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], axis=1)
    inside = PolygonPath(OUTER).contains_points(centres) & ~PolygonPath(HOLE).contains_points(centres)
    return inside.reshape(HEIGHT, WIDTH)


def write_mask(path, mask: np.ndarray, transform=None, crs=None, driver="GTiff") -> str:
    profile = {"driver": driver, "height": mask.shape[0], "width": mask.shape[1], "count": 1, "dtype": "uint8"}
    if transform is not None:
        profile.update(transform=transform, crs=crs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(mask.astype(np.uint8)[None])
    return str(path)


# ---------------------------------------------------------------------------- placing prompts
def test_a_geojson_polygon_is_rasterised_by_pixel_centre(scene, tmp_path):
    expected = brute_force_polygon()
    assert 300 < expected.sum() < 3000  # a real region, with its hole
    in_pixels = polygon_file(tmp_path / "region.geojson", [closed(OUTER), closed(HOLE)])
    placed = place_prompts(scene, shape_files=[in_pixels])
    assert len(placed.masks) == 1 and not placed.scribbles
    np.testing.assert_array_equal(placed.masks[0], expected)
    # the same region drawn in longitude / latitude: reprojected to the scene's CRS, then rasterised
    lonlat = polygon_file(tmp_path / "lonlat.geojson", [closed(to_lonlat(OUTER)), closed(to_lonlat(HOLE))], "EPSG:4326")
    np.testing.assert_array_equal(place_prompts(scene, mask_files=[lonlat], coordinates="map").masks[0], expected)


def test_points_boxes_and_strokes_in_map_coordinates_land_on_their_pixels(scene, tmp_path):
    (px, py), (mx, my) = [10.5, 5.5], to_map([[10.5, 5.5]])[0]
    (x0, y1), (x1, y0) = to_map([[60.0, 70.0], [90.0, 30.0]])  # a map box: min x, min y, max x, max y
    stroke = [[2.0, 2.0], [20.0, 2.0], [20.0, 20.0]]
    line = {"type": "LineString", "coordinates": to_lonlat(stroke)}
    line_file = write_json(
        tmp_path / "line.geojson", {**line, "crs": {"type": "name", "properties": {"name": "EPSG:4326"}}}
    )
    placed = place_prompts(
        scene,
        points=[("p", [mx, my, 0.0])],
        boxes=[("b", [x0, y0, x1, y1])],
        shape_files=[line_file],
        coordinates="map",
    )
    assert placed.points == [pytest.approx([px, py, 0.0])]
    assert placed.boxes == [pytest.approx([60.0, 30.0, 90.0, 70.0])]
    np.testing.assert_allclose(placed.scribbles[0], stroke, atol=1e-6)
    # a JSON list of vertices (one stroke) or of strokes, in pixels
    one = place_prompts(scene, shape_files=[write_json(tmp_path / "one.json", stroke)])
    two = place_prompts(scene, shape_files=[write_json(tmp_path / "two.json", [stroke, stroke[:2]])])
    assert one.scribbles == [stroke] and two.scribbles == [stroke, stroke[:2]]
    assert one.arguments() == {"scribble": [stroke]}


def test_a_mask_raster_on_the_grid_or_resampled_onto_it(scene, tmp_path):
    painted = np.zeros((HEIGHT, WIDTH), dtype=bool)
    painted[10:20, 30:45] = True
    png = write_mask(tmp_path / "painted.png", painted * 255, driver="PNG")
    np.testing.assert_array_equal(place_prompts(scene, mask_files=[png]).masks[0], painted)
    # 20 m pixels whose top-left corner is the scene's pixel (10, 20): a block of mask rows 2..4,
    # columns 3..6 covers map x 500260..500340, y 5299800..5299860, i.e. scene rows 14..19, columns 26..33
    coarse = np.zeros((10, 10), dtype=bool)
    coarse[2:5, 3:7] = True
    tif = write_mask(
        tmp_path / "coarse.tif", coarse, from_origin(500200.0, 5299900.0, 20.0, 20.0), CRS.from_epsg(32632)
    )
    expected = np.zeros((HEIGHT, WIDTH), dtype=bool)
    expected[14:20, 26:34] = True
    np.testing.assert_array_equal(place_prompts(scene, mask_files=[tif]).masks[0], expected)


def test_option_text_is_parsed_or_refused():
    assert parse_point("3,4.5") == [3.0, 4.5] and parse_point("3,4,0") == [3.0, 4.0, 0.0]
    assert parse_box("1,2,3,4") == [1.0, 2.0, 3.0, 4.0]
    for bad, message in [("3", "expected X,Y"), ("a,b", "expected X,Y"), ("1,2,5", "label must be 1")]:
        with pytest.raises(PromptError, match=message):
            parse_point(bad)
    with pytest.raises(PromptError, match="needs X0 <= X1"):
        parse_box("5,5,1,9")


# ---------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def prompted(run_folder):
    """The demo run with its SAM decoder reading the user's prompts (see tests/inference/test_api_prompts.py)."""
    predictor = rsvlm.load(run_folder)
    predictor.model.decoder.use_visual_prompts = True
    return predictor


def test_rsvlm_ask_passes_the_prompts_and_draws_them(prompted, run_folder, scene, tmp_path, monkeypatch):
    calls = []
    original = prompted.predict

    def spy(image, **kwargs):
        calls.append(kwargs)
        result = original(image, **kwargs)
        calls[-1]["result"] = result
        return result

    monkeypatch.setattr(rsvlm, "load", lambda path, **_: prompted)
    monkeypatch.setattr(prompted, "predict", spy)
    region = polygon_file(tmp_path / "region.geojson", [closed(OUTER), closed(HOLE)])
    question = ["--question", "Segment the water region marked by Region 1."]
    pixels = ["--point", "10.5,5.5", "--point", "30,40,0", "--box", "60,30,90,70", "--mask-prompt", region]
    assert main(["ask", str(run_folder), str(scene), *question, "--out", str(tmp_path / "px"), *pixels]) == 0
    (mx, my), (wx, sy), (ex, ny) = to_map([[10.5, 5.5], [60.0, 70.0], [90.0, 30.0]])
    lonlat = polygon_file(tmp_path / "lonlat.geojson", [closed(to_lonlat(OUTER)), closed(to_lonlat(HOLE))], "EPSG:4326")
    in_map = [f"--point={mx},{my}", "--point", f"{500300},{5299600},0", "--box", f"{wx},{sy},{ex},{ny}"]
    in_map += ["--mask-prompt", lonlat, "--coordinates", "map"]
    assert main(["ask", str(run_folder), str(scene), *question, "--out", str(tmp_path / "map"), *in_map]) == 0
    assert len(calls) == 2  # pixels, then map coordinates
    for call in calls:
        assert call["points"] == [pytest.approx([10.5, 5.5]), pytest.approx([30.0, 40.0, 0.0])]
        assert call["boxes"] == [pytest.approx([60.0, 30.0, 90.0, 70.0])]
        np.testing.assert_array_equal(call["mask"][0], brute_force_polygon())
    result = calls[0]["result"]
    assert [p.kind for p in result.prompts] == ["point", "point", "box", "mask"]
    overlay = np.asarray(Image.open(tmp_path / "px" / "scene.overlay.png").convert("RGB"))
    np.testing.assert_array_equal(overlay, result.show())
    assert (overlay[5, 10] != result.show(prompts=False)[5, 10]).any()  # the first point is drawn
    assert (tmp_path / "map" / "scene.mask.tif").is_file()


def test_rsvlm_ask_without_prompts_is_unchanged(prompted, run_folder, scene, tmp_path, monkeypatch):
    monkeypatch.setattr(rsvlm, "load", lambda path, **_: prompted)
    question = ["--question", "Describe the water regions."]
    assert main(["ask", str(run_folder), str(scene), *question, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.json", "scene.mask.tif", "scene.overlay.png"]


@pytest.fixture
def bad_files(tmp_path):
    """Prompt files that cannot be used on the conftest scene."""
    (tmp_path / "garbage.tif").write_text("not a raster")
    (tmp_path / "broken.geojson").write_text("{not json")
    return {
        "missing": str(tmp_path / "missing.geojson"),
        "broken": str(tmp_path / "broken.geojson"),
        "garbage": str(tmp_path / "garbage.tif"),
        "small": write_mask(tmp_path / "small.png", np.ones((10, 12), bool) * 255, driver="PNG"),
        "lonlat": polygon_file(tmp_path / "lonlat.geojson", [closed(to_lonlat(OUTER))], "EPSG:4326"),
        "unknown_crs": polygon_file(tmp_path / "unknown.geojson", [closed(OUTER)], "EPSG:999999"),
        "outside": write_json(tmp_path / "outside.json", [[200.0, 5.0], [300.0, 5.0]]),
        "tiny": polygon_file(tmp_path / "tiny.geojson", [closed([[3.6, 3.6], [3.9, 3.6], [3.9, 3.9]])]),
        "picture": write_mask(tmp_path / "picture.png", np.zeros((HEIGHT, WIDTH), bool), driver="PNG"),
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--point", "150,5"], r"--point '150,5': pixel \(150, 5\) lies outside .*scene\.tif \(100×80 pixels\)"),
        (["--point", "five,5"], r"--point 'five,5': expected X,Y"),
        (["--box", "1,2,3"], r"--box '1,2,3': expected X0,Y0,X1,Y1"),
        (["--box", "5,5,1,9"], r"--box '5,5,1,9': needs X0 <= X1"),
        (["--box", "200,5,300,9"], r"--box '200,5,300,9': lies outside"),
        (["--scribble", "{missing}"], r"--scribble .*missing\.geojson: no such file"),
        (["--scribble", "{broken}"], r"--scribble .*broken\.geojson: not JSON"),
        (["--scribble", "{outside}"], r"--scribble .*outside\.json .*the stroke lies outside"),
        (["--scribble", "{tiny}"], r"--scribble .*tiny\.geojson .*covers no pixel centre"),
        (["--mask-prompt", "{garbage}"], r"--mask-prompt .*garbage\.tif: cannot read the mask raster"),
        (["--mask-prompt", "{small}"], r"--mask-prompt .*small\.png: a 12×10 mask cannot be matched to the grid"),
        (["--scribble", "{lonlat}"], r"--scribble .*lonlat\.geojson: declares the CRS EPSG:4326.*--coordinates map"),
        (["--scribble", "{unknown_crs}", "--coordinates", "map"], r"cannot read its CRS 'EPSG:999999'"),
        (
            ["--point", "1,1", "--coordinates", "map", "IMAGE={picture}"],
            r"--coordinates map: .*picture\.png has no CRS",
        ),
    ],
)
def test_prompt_errors_are_one_line_before_the_model_loads(
    options, message, bad_files, run_folder, scene, tmp_path, monkeypatch, capsys
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for a bad prompt")

    monkeypatch.setattr(rsvlm, "load", no_model)
    image = str(scene)
    options = [o.format(**bad_files) for o in options]
    if options[-1].startswith("IMAGE="):
        image = options.pop()[len("IMAGE=") :]
    argv = ["ask", str(run_folder), image, "--question", "Where?", "--out", str(tmp_path / "out"), *options]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsvlm: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
