"""APG against hand-made masks with known answers, and against scikit-image / OpenCV."""

import ast

import cv2
import numpy as np
import pytest
from skimage.measure import label as sk_label
from skimage.measure import regionprops

from rsvlm.data.spie.apg import KEYS, instruction, order_corners, region_attributes, spectral_prompt

# (pixels in a 100×100 mask, expected bin) — the paper's thresholds, both sides of each edge.
SIZE_EDGES = [
    (1, "very tiny"),
    (305, "very tiny"),
    (306, "small"),
    (610, "small"),
    (611, "somewhat large"),
    (1221, "somewhat large"),
    (1222, "medium"),
    (2441, "medium"),
    (2442, "large"),
    (3662, "large"),
    (3663, "very large"),
    (6104, "very large"),
    (6105, "huge"),
    (10000, "huge"),
]


def _bin(fraction):
    # Independent restatement of the paper's bins.
    for upper, name in [
        (0.0305, "very tiny"),
        (0.0610, "small"),
        (0.1221, "somewhat large"),
        (0.2441, "medium"),
        (0.3662, "large"),
        (0.6104, "very large"),
    ]:
        if fraction <= upper:
            return name
    return "huge"


@pytest.mark.parametrize("n,expected", SIZE_EDGES)
def test_size_bins_at_edges(n, expected):
    mask = np.zeros((100, 100), bool)
    mask.flat[:n] = True  # full rows then a partial row: one region
    (region,) = region_attributes(mask)
    assert region["Size of area"] == expected


# (row, col) of a single pixel in a 90×90 mask (W/3 = 30, 2W/3 = 60) → expected cell.
GRID_90 = [
    ((0, 0), "top-left"),
    ((29, 29), "top-left"),
    ((0, 30), "top-center"),
    ((29, 59), "top-center"),
    ((0, 60), "top-right"),
    ((10, 89), "top-right"),
    ((30, 0), "middle-left"),
    ((59, 29), "middle-left"),
    ((30, 30), "center"),
    ((59, 59), "center"),
    ((45, 60), "middle-right"),
    ((59, 89), "middle-right"),
    ((60, 0), "bottom-left"),
    ((89, 29), "bottom-left"),
    ((60, 30), "bottom-center"),
    ((89, 59), "bottom-center"),
    ((60, 60), "bottom-right"),
    ((89, 89), "bottom-right"),
]


@pytest.mark.parametrize("rc,expected", GRID_90)
def test_every_grid_cell_and_its_boundaries(rc, expected):
    mask = np.zeros((90, 90), bool)
    mask[rc] = True
    (region,) = region_attributes(mask)
    assert region["Location"] == expected
    assert region["Centroid"] == [float(rc[1]), float(rc[0])]


def test_grid_boundaries_when_size_is_not_a_multiple_of_three():
    # W = 100: W/3 = 33.3, 2W/3 = 66.7; H = 50: H/3 = 16.7, 2H/3 = 33.3.
    cases = [((16, 33), "top-left"), ((17, 34), "center"), ((33, 66), "center"), ((34, 67), "bottom-right")]
    for (r, c), expected in cases:
        mask = np.zeros((50, 100), bool)
        mask[r, c] = True
        assert region_attributes(mask)[0]["Location"] == expected, (r, c)


def test_several_regions_sorted_by_area_with_known_attributes():
    mask = np.zeros((100, 200), bool)
    mask[10:15, 20:30] = True  # 50 px, rows 10-14, cols 20-29
    mask[60:80, 150:160] = True  # 200 px, rows 60-79, cols 150-159
    mask[40:52, 80:90] = True  # 120 px, rows 40-51, cols 80-89
    regions = region_attributes(mask, style="paper")
    assert [list(r) for r in regions] == [list(KEYS)] * 3
    assert [r["Centroid"] for r in regions] == [[154.5, 69.5], [84.5, 45.5], [24.5, 12.0]]
    assert [r["Location"] for r in regions] == ["bottom-right", "center", "top-left"]
    assert regions[0]["Bounding box"] == [[0.75, 0.6], [0.795, 0.6], [0.795, 0.79], [0.75, 0.79]]
    assert regions[2]["Bounding box"] == [[0.1, 0.1], [0.145, 0.1], [0.145, 0.14], [0.1, 0.14]]
    # Released style: normalised centroid, and an axis-aligned rectangle stays axis-aligned.
    rel = region_attributes(mask, style="released")
    assert [r["Centroid"] for r in rel] == [
        [round(154.5 / 200, 3), round(69.5 / 100, 3)],
        [round(84.5 / 200, 3), round(45.5 / 100, 3)],
        [round(24.5 / 200, 3), round(12.0 / 100, 3)],
    ]
    for p, r in zip(regions, rel):
        assert r["Size of area"] == p["Size of area"] and r["Location"] == p["Location"]
        np.testing.assert_allclose(r["Bounding box"], p["Bounding box"], atol=1e-3)


def test_at_most_ten_regions_the_largest_ones():
    mask = np.zeros((64, 256), bool)
    sides = [2, 9, 4, 12, 3, 7, 11, 5, 8, 6, 10, 1]  # 12 squares, distinct areas
    for i, s in enumerate(sides):
        mask[2 : 2 + s, 4 + 20 * i : 4 + 20 * i + s] = True
    regions = region_attributes(mask)
    assert len(regions) == 10
    kept = sorted(sides, reverse=True)[:10]
    expected_cx = [4 + 20 * sides.index(s) + (s - 1) / 2 for s in kept]
    assert [r["Centroid"][0] for r in regions] == pytest.approx(expected_cx, abs=0.05)
    assert len(region_attributes(mask, max_regions=3)) == 3


def test_connectivity_4_vs_8():
    mask = np.zeros((10, 10), bool)
    mask[2, 2] = mask[3, 3] = True  # diagonal neighbours
    assert len(region_attributes(mask, connectivity=8)) == 1
    assert len(region_attributes(mask, connectivity=4)) == 2
    with pytest.raises(ValueError, match="4 or 8"):
        region_attributes(mask, connectivity=6)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_areas_and_centroids_match_skimage_regionprops(connectivity):
    rng = np.random.default_rng(0)
    mask = rng.random((60, 70)) > 0.6
    props = regionprops(sk_label(mask, connectivity=1 if connectivity == 4 else 2))
    props = sorted(props, key=lambda p: -p.area)[:10]
    regions = region_attributes(mask, connectivity=connectivity)
    assert len(regions) == min(10, len(props))
    # Sizes via the same bins are implied by equal areas; check centroids of distinct areas.
    assert sorted(r["Size of area"] for r in regions) == sorted(_bin(p.area / mask.size) for p in props)
    areas = [p.area for p in props]
    if len(set(areas)) == len(areas):
        ours = sorted((r["Centroid"][0], r["Centroid"][1]) for r in regions)
        ref = sorted((round(p.centroid[1], 1), round(p.centroid[0], 1)) for p in props)
        np.testing.assert_allclose(ours, ref)
    big = max(props, key=lambda p: p.area)
    assert regions[0]["Centroid"] == pytest.approx([round(big.centroid[1], 1), round(big.centroid[0], 1)])


def test_released_box_is_the_minimum_area_rectangle_in_tl_tr_br_bl_order():
    mask = np.zeros((120, 160), np.uint8)
    rect = ((80.0, 60.0), (70.0, 20.0), 30.0)  # centre, size, angle
    cv2.fillPoly(mask, [cv2.boxPoints(rect).round().astype(np.int32)], 1)
    (region,) = region_attributes(mask.astype(bool), style="released")
    # Reference: minAreaRect over every pixel of the region, normalised the same way.
    ys, xs = np.nonzero(mask)
    ref = cv2.boxPoints(cv2.minAreaRect(np.stack([xs, ys], 1).astype(np.float32)))
    ref = np.round(np.clip(ref / [160, 120], 0, 1).astype(np.float64), 3)
    assert sorted(map(tuple, region["Bounding box"])) == sorted(map(tuple, ref.tolist()))
    box = np.array(region["Bounding box"]) * [160, 120]
    assert np.argmin(box.sum(1)) == 0  # TL = smallest x + y
    x, y = box[:, 0], box[:, 1]
    assert np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) > 0  # clockwise on screen (y down)
    # Rotated box hugs the region: far smaller than the axis-aligned one.
    paper = np.array(region_attributes(mask.astype(bool))[0]["Bounding box"]) * [160, 120]
    rot_area = np.linalg.norm(box[1] - box[0]) * np.linalg.norm(box[2] - box[1])
    axis_area = (paper[1, 0] - paper[0, 0]) * (paper[2, 1] - paper[1, 1])
    assert rot_area < 0.7 * axis_area


def test_order_corners_axis_aligned():
    pts = np.array([[5, 9], [1, 1], [5, 1], [1, 9]], float)  # shuffled
    np.testing.assert_array_equal(order_corners(pts), [[1, 1], [5, 1], [5, 9], [1, 9]])


def test_empty_mask_and_prompt_saying_so():
    assert region_attributes(np.zeros((8, 8), bool)) == []
    img = np.ones((4, 8, 8), np.float32)  # constant: nothing above Otsu
    assert spectral_prompt(img, "water", "gaofen2") == "No water regions were found in the image."
    assert (
        spectral_prompt(img, "vegetation", "gaofen2", valid=np.zeros((8, 8), bool))
        == "No vegetation regions were found in the image."
    )


def test_spectral_prompt_finds_a_known_water_body():
    # gaofen2 = blue, green, red, nir. Water: green > nir → NDWI > 0; land: NDWI < 0.
    img = np.empty((4, 60, 90), np.float32)
    img[:] = np.array([0.1, 0.1, 0.15, 0.4], np.float32)[:, None, None]
    img[:, 40:55, 5:25] = np.array([0.08, 0.09, 0.05, 0.02], np.float32)[:, None, None]
    prompt = spectral_prompt(img, "water", "gaofen2", style="released")
    regions = ast.literal_eval(prompt)
    assert len(regions) == 1
    r = regions[0]
    assert r["Location"] == "bottom-left" and r["Size of area"] == "small"  # 300/5400 = 0.056
    assert r["Centroid"] == [round(14.5 / 90, 3), round(47.0 / 60, 3)]
    # Invalid pixels are excluded from the regions.
    valid = np.ones((60, 90), bool)
    valid[40:55, 5:15] = False
    r2 = ast.literal_eval(spectral_prompt(img, "water", "gaofen2", valid=valid))[0]
    assert r2["Centroid"] == [19.5, 47.0] and r2["Size of area"] == "very tiny"


def test_instruction_templates():
    assert instruction("buildings", "P") == (
        "Based on the provided image and the attributes of the building regions, please provide "
        "a detailed description of them: P"
    )
    # The paper's no-spectral-prompt instruction, quoted from Sec. IV-C1 (its example is vegetation).
    assert instruction("vegetation", None, template="plain") == (
        "You are an expert specializing in remote sensing. Based on the provided image and the "
        "vegetation regions, please provide a detailed description of them."
    )
    plain = instruction("water", None, template="plain")
    assert "the water regions" in plain and "attributes" not in plain
    with pytest.raises(ValueError, match="spectral prompt"):
        instruction("water", None)
