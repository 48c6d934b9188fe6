"""Boxes and points in text: written as EarthGPT / MMRS-1M do and read back."""

from __future__ import annotations

import numpy as np
import pytest

from rsvlm.data.coords import format_box, format_grounding, format_point, parse_grounding


def test_box_on_a_bottom_right_padded_square_is_divided_by_the_long_side():
    # 200 high, 400 wide: the square is 400; nothing is added before the image
    assert format_box([100, 50, 300, 150], (200, 400)) == "[0.250,0.125,0.750,0.375]"
    assert format_point([40, 20], (200, 400)) == "[0.100,0.050]"


def test_center_padding_shifts_the_short_axis_by_half_the_difference():
    # 400 high, 200 wide: the image sits 100 px right of the square's left edge (vp_normalize)
    assert format_box([0, 0, 200, 400], (400, 200), pad="center") == "[0.250,0.000,0.750,1.000]"
    [g] = parse_grounding("[0.250,0.000,0.750,1.000]", (400, 200), pad="center")
    assert g.boxes == [[0.0, 0.0, 200.0, 400.0]]


@pytest.mark.parametrize("pad", ["bottom_right", "center"])
def test_random_boxes_survive_a_round_trip_to_within_the_third_decimal(pad):
    rng = np.random.default_rng(0)
    size = (300, 500)
    boxes = []
    for _ in range(20):
        x0, x1 = sorted(rng.uniform(0, size[1], 2))
        y0, y1 = sorted(rng.uniform(0, size[0], 2))
        boxes.append([x0, y0, x1, y1])
    text = "Answer: " + format_grounding("storage tanks", boxes, size, pad) + " and more."
    [g] = parse_grounding(text, size, pad)
    assert g.phrase == "storage tanks"
    # 3 decimals of a 500-px square: half a thousandth of 500 px at most
    assert np.abs(np.array(g.boxes) - np.array(boxes)).max() <= 0.5e-3 * 500 + 1e-9


@pytest.mark.parametrize("decimals", [1, 2, 4])
def test_decimals_set_the_rounding_and_read_back_within_half_a_unit(decimals):
    rng = np.random.default_rng(decimals)
    size = (64, 64)
    x0, x1 = sorted(rng.uniform(0, 64, 2))
    y0, y1 = sorted(rng.uniform(0, 64, 2))
    text = format_grounding("ship", [[x0, y0, x1, y1]], size, "center", decimals=decimals)
    numbers = text[text.index("[") + 1 : -1].split(",")
    assert all(len(n.split(".")[1]) == decimals for n in numbers)
    assert [float(n) for n in numbers] == [round(v / 64, decimals) for v in (x0, y0, x1, y1)]
    [g] = parse_grounding(text, size, "center")
    assert np.abs(np.array(g.boxes[0]) - [x0, y0, x1, y1]).max() <= 0.5 * 10**-decimals * 64 + 1e-9
    with pytest.raises(ValueError, match="decimals"):
        format_box([0, 0, 1, 1], size, decimals=0)


def test_phrases_brackets_points_and_non_coordinates_are_told_apart():
    text = (
        "<p>a ship</p>[0.1,0.2,0.3,0.4] next to <p>the pier</p> [0.5, 0.5; 0.25,0.75] "
        "with scores [1, 2, 3] and an inverted box [0.9,0.9,0.1,0.1]"
    )
    found = parse_grounding(text, (100, 100))
    assert [g.phrase for g in found] == ["a ship", "the pier"]
    assert found[0].boxes == [pytest.approx([10.0, 20.0, 30.0, 40.0])]
    assert found[1].points == [pytest.approx([50.0, 50.0]), pytest.approx([25.0, 75.0])]


def test_ferret_integer_form_reads_with_scale_999():
    [g] = parse_grounding("[0, 999, 999, 999]", (999, 999), scale=999)
    assert g.boxes == [[0.0, 999.0, 999.0, 999.0]]
    assert g.phrase is None


def test_bad_shapes_and_pad_modes_are_one_line_errors():
    with pytest.raises(ValueError, match="format_box: a box is"):
        format_box([1, 2, 3], (10, 10))
    with pytest.raises(ValueError, match="pad must be"):
        format_box([1, 2, 3, 4], (10, 10), pad="top")
