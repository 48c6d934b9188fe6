"""Field-mosaic layouts (rsvlm.data.layouts) and the layout switch of generated scenes."""

from __future__ import annotations

import numpy as np
import pytest

from rsvlm.data.layouts import parcel_layout, split_parcels
from rsvlm.data.scenes import ABSENT_RATE, generate_layout, write_scene_folder


def _no_river(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.zeros((size, size), dtype=bool)


@pytest.mark.parametrize("seed", range(6))
def test_parcels_tile_the_canvas_within_the_side_bounds(seed: int) -> None:
    rects = split_parcels(60, 45, np.random.default_rng(seed), min_side=5, max_side=16)
    cover = np.zeros((60, 45), dtype=int)
    for y0, y1, x0, x1 in rects:
        cover[y0:y1, x0:x1] += 1
        assert max(y1 - y0, x1 - x0) <= 16
        assert min(y1 - y0, x1 - x0) >= 5
    np.testing.assert_array_equal(cover, 1)  # every pixel in exactly one parcel


def test_mosaic_parcels_are_straight_edged_before_rotation() -> None:
    # Rotation by 0 keeps the parcels' rectangles: every connected region of a class has
    # straight edges, i.e. fills its bounding box unless it merged with a neighbour of its class.
    from scipy.ndimage import find_objects, label

    rng = np.random.default_rng(3)
    layout = parcel_layout(48, rng, ABSENT_RATE, _no_river)
    assert layout.shape == (48, 48) and layout.dtype == np.uint8
    assert set(np.unique(layout)) <= {0, 1, 2, 3}
    regions, n = label(layout == 1)
    filled = [(regions[s] == i + 1).mean() for i, s in enumerate(find_objects(regions))]
    assert n > 0 and np.median(filled) > 0.5


def test_absent_categories_never_appear() -> None:
    for seed in range(20):
        layout = parcel_layout(40, np.random.default_rng(seed), absent_rate=1.0, river=_no_river)
        assert (layout == 0).all()


def test_layout_switch() -> None:
    a = generate_layout(32, np.random.default_rng(1))
    b = generate_layout(32, np.random.default_rng(1), "blobs")
    np.testing.assert_array_equal(a, b)
    kinds = []
    for s in range(12):
        mixed = generate_layout(32, np.random.default_rng(s), "mixed")
        rng = np.random.default_rng(s)
        kind = "parcels" if rng.random() < 0.5 else "blobs"  # the draw "mixed" makes first
        np.testing.assert_array_equal(mixed, generate_layout(32, rng, kind))
        kinds.append(kind)
    assert set(kinds) == {"parcels", "blobs"}
    with pytest.raises(ValueError, match="layout must be one of"):
        generate_layout(32, np.random.default_rng(0), "grid")


def test_manifest_records_a_non_default_layout(tmp_path) -> None:
    import json

    plain = json.loads(write_scene_folder(tmp_path / "a", 2, 16, "demo").read_text())
    fields = json.loads(write_scene_folder(tmp_path / "b", 2, 16, "demo", layout="parcels").read_text())
    assert "layout" not in plain and fields["layout"] == "parcels"
