"""Prediction.boxes: the boxes the tiles' answers write, moved from tile to image pixels."""

from __future__ import annotations

import numpy as np

from rsvlm.data.coords import format_grounding
from rsvlm.inference.prediction import Prediction


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
