"""Prediction.boxes: the boxes the answers write, moved from a tile, or from a whole-image model's
padded square, to the image's pixels; ``rsvlm predict`` writes them as ``Prediction.save`` does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import test_predict_whole_image as whole_image_cli
import torch
from conftest import predict_args
from rasterio.crs import CRS
from rasterio.transform import from_origin

from rsvlm.cli.main import main
from rsvlm.data.coords import format_grounding
from rsvlm.data.multitask.predict import WholeImagePredictDataset
from rsvlm.inference.prediction import Prediction
from rsvlm.inference.tile_outputs import whole_image_tile


def prediction_with(tiles: list) -> Prediction:
    blank = np.zeros((300, 300), dtype=bool)
    return Prediction(
        image="array",
        category=None,
        instruction="Where are the ships?",
        texts=[t[3] for t in tiles],
        probabilities=blank.astype(np.float32),
        mask=blank,
        valid=~blank,
        crs=None,
        transform=None,
        bands=("red", "green", "blue"),
        threshold=0.5,
        tiles=tiles,
    )


def test_boxes_of_each_tile_are_shifted_by_its_window():
    tile = np.zeros((128, 128), dtype=np.float32)  # the tile's logits: the model input is 128²
    first = format_grounding("ship", [[16.0, 32.0, 48.0, 64.0]], (128, 128))
    second = "no ship here"
    third = format_grounding("pier", [[0.0, 0.0, 64.0, 8.0], [100.0, 100.0, 128.0, 128.0]], (128, 128))
    result = prediction_with(
        [
            ({"window": [0, 0, 128, 128]}, tile, None, first),
            ({"window": [0, 100, 128, 128]}, tile, None, second),
            ({"window": [172, 100, 128, 128]}, tile, None, third),
        ]
    )
    found = result.boxes
    assert [g.phrase for g in found] == ["ship", "pier"]
    three_decimals = 0.5e-3 * 128  # the text keeps 3 decimals of the 128-px tile
    assert np.allclose(found[0].boxes, [[16, 32, 48, 64]], atol=three_decimals)
    assert np.allclose(found[1].boxes, [[100, 172, 164, 180], [200, 272, 228, 300]], atol=three_decimals)


def test_answers_without_coordinates_have_no_boxes():
    tile = np.zeros((64, 64), dtype=np.float32)
    assert prediction_with([({"window": [0, 0, 64, 64]}, tile, None, "water: 3 regions")]).boxes == []


def test_an_answer_that_segments_what_it_names_gives_its_mask_box():
    """ "<p>ship</p> [SEG]" without coordinates: the box of the mask's largest 8-connected region
    (skimage's regionprops as the reference), shifted by the tile's window; an answer that writes
    coordinates keeps them, and an empty mask gives no box."""
    from skimage.measure import label, regionprops

    tile = np.full((64, 64), -4.0, dtype=np.float32)
    tile[10:20, 30:44] = 3.0
    tile[20, 44] = 3.0  # touches the region at a corner: in it
    tile[50:53, 2:5] = 3.0  # a smaller blob apart: not in the box
    written = format_grounding("pier", [[0.0, 0.0, 32.0, 8.0]], (64, 64))
    result = prediction_with(
        [
            ({"window": [100, 36, 64, 64]}, tile, None, "<p>ship</p> [SEG]"),
            ({"window": [0, 0, 64, 64]}, tile, None, written + " [SEG]"),
            ({"window": [0, 0, 64, 64]}, np.full((64, 64), -1.0, np.float32), None, "<p>tank</p> [SEG]"),
        ]
    )
    found = result.boxes
    region = max(regionprops(label(tile > 0, connectivity=2)), key=lambda r: r.area)
    y0, x0, y1, x1 = region.bbox
    assert [g.phrase for g in found] == ["ship", "pier"]
    assert found[0].boxes == [[x0 + 36, y0 + 100, x1 + 36, y1 + 100]] == [[66, 110, 81, 121]]
    assert np.allclose(found[1].boxes, [[0, 0, 32, 8]], atol=0.5e-3 * 64)


# ---------------------------------------------------------------- whole-image models: the padded square
HEIGHT, WIDTH, SIDE = 48, 80, 64  # a wide image on the model's 64-px square
ANSWER = "<p>the ship</p>[0.250,0.500,0.750,0.875] and <p>the buoy</p>[0.500,0.250]"
SQUARE_BOX, SQUARE_POINT = [16.0, 32.0, 48.0, 56.0], [32.0, 16.0]  # ANSWER · SIDE, on the square


def write_scene(path, height: int = HEIGHT, width: int = WIDTH) -> str:
    """A 3-band uint8 GeoTIFF of ``height×width`` pixels (georeferenced: rasterio warns without)."""
    profile = dict(driver="GTiff", height=height, width=width, count=3, dtype="uint8", crs=CRS.from_epsg(32633))
    with rasterio.open(path, "w", transform=from_origin(400000.0, 4500000.0, 1.0, 1.0), **profile) as dst:
        dst.write(np.zeros((3, height, width), dtype=np.uint8))
    return str(path)


def whole_image_prediction(path: str, pad: str, text: str) -> Prediction:
    """The Prediction of a whole-image model asked about ``path`` (padded as ``pad``) that answered ``text``:
    the sample of the data path (WholeImagePredictDataset) mapped back by whole_image_tile."""
    dataset = WholeImagePredictDataset(
        [path], "Where is the ship?", "region", ["red", "green", "blue"], 255.0, SIDE, pad
    )
    sample = dataset[0]
    tile = whole_image_tile(sample["meta"], torch.zeros(SIDE, SIDE), sample["valid"][0], text)
    return prediction_with([tile])


@pytest.mark.parametrize("pad", ["center", "bottom_right"])
def test_whole_image_boxes_are_mapped_back_through_the_padding_and_the_resize(tmp_path, pad):
    result = whole_image_prediction(write_scene(tmp_path / "wide.tif"), pad, ANSWER)
    # The padding formula, independently: the longer side becomes SIDE, the shorter round(48 · 64/80) = 38,
    # centred with floor((64 − 38) / 2) = 13 rows above (none at the bottom/right); then undo the scale.
    resized_h = round(HEIGHT * SIDE / WIDTH)
    top = (SIDE - resized_h) // 2 if pad == "center" else 0
    sx, sy = WIDTH / SIDE, HEIGHT / resized_h

    def image_xy(values: list[float]) -> list[float]:
        return [v * sx if i % 2 == 0 else (v - top) * sy for i, v in enumerate(values)]

    ship, buoy = result.boxes
    assert (ship.phrase, buoy.phrase) == ("the ship", "the buoy")
    np.testing.assert_allclose(ship.boxes, [image_xy(SQUARE_BOX)], rtol=0, atol=1e-9)
    np.testing.assert_allclose(buoy.points, [image_xy(SQUARE_POINT)], rtol=0, atol=1e-9)
    assert ship.boxes == [[20.0, (32 - top) * sy, 60.0, (56 - top) * sy]]
    if pad == "center":  # reading it as a bottom/right padded square (the old mapping) is 13 rows off
        assert abs(ship.boxes[0][1] - 32 * sy) > 10


def test_boxes_on_a_tall_image_move_by_the_left_pad(tmp_path):
    path = write_scene(tmp_path / "tall.tif", height=WIDTH, width=HEIGHT)
    [ship, _] = whole_image_prediction(path, "center", ANSWER).boxes
    left, sx, sy = (SIDE - 38) // 2, HEIGHT / 38, WIDTH / SIDE  # 38 columns centred: 13 on the left
    np.testing.assert_allclose(ship.boxes, [[(16 - left) * sx, 32 * sy, (48 - left) * sx, 56 * sy]], atol=1e-9)


geomag_run, predictor, geotiff = whole_image_cli.geomag_run, whole_image_cli.predictor, whole_image_cli.geotiff


@pytest.fixture
def box_answers(predictor, monkeypatch) -> str:
    """Every generation answers with a box and a point (the model's generate replaced, as
    test_predict_whole_image forces its answers); returns the answer as the tokenizer decodes it."""
    llm = predictor.model.llm
    ids = [*llm.tokenizer(ANSWER, add_special_tokens=False)["input_ids"], llm.end_token_id]

    def generate(self, inputs_embeds: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.tensor([ids] * inputs_embeds.shape[0], device=inputs_embeds.device)

    monkeypatch.setattr(type(llm.model), "generate", generate)
    return llm.tokenizer.decode(ids[:-1])


def test_rsvlm_predict_writes_the_boxes_prediction_save_writes(geomag_run, predictor, geotiff, box_answers, tmp_path):
    question = "Where is the ship?"
    result = predictor.predict(str(geotiff), instruction=question, granularity="region")
    assert result.text.strip() == ANSWER
    api = result.save(tmp_path / "api")
    args = [f"--data.init_args.predict_paths=[{geotiff}]", f"--data.init_args.question={question}"]
    args.append("--data.init_args.granularity=region")
    assert main(predict_args(geomag_run, tmp_path / "cli", tmp_path / "root", *args)) == 0

    cli = tmp_path / "cli" / "harbour.boxes.geojson"
    assert api["boxes"].name == cli.name and cli.read_bytes() == api["boxes"].read_bytes()
    written = json.loads(cli.read_text())
    assert written["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    # the 48×80 scene on the recipe's centre-padded 64² square: 13 rows of pad above, 64/80 the scale
    sy = 48 / 38
    ship = written["features"][0]["properties"]
    assert ship["phrase"] == "the ship"
    assert ship["pixels"] == pytest.approx([20.0, (32 - 13) * sy, 60.0, (56 - 13) * sy])
    assert json.loads((tmp_path / "cli" / "harbour.json").read_text())["outputs"]["boxes"] == str(cli)
