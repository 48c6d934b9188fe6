"""Tile windows: the SPIE build's cut-at-the-edge windows and prediction's shifted ones, checked
against direct constructions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rsvlm.data.spie.tiles import scene_windows
from rsvlm.data.tiling import tile_windows


def test_scene_windows():
    assert scene_windows(300, 512, 512) == [None]
    assert scene_windows(700, 500, 512) == [(0, 0, 512, 500), (512, 0, 188, 500)]
    assert scene_windows(1030, 1100, 512) == [
        (r, c, min(512, 1030 - r), min(512, 1100 - c)) for r in (0, 512, 1024) for c in (0, 512, 1024)
    ]


def _coverage(height: int, width: int, windows) -> np.ndarray:
    hits = np.zeros((height, width), dtype=int)
    for r, c, h, w in windows:
        hits[r : r + h, c : c + w] += 1
    return hits


@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_windows_cover_the_scene_and_stay_inside(edge):
    for height, width, tile in itertools.product((1, 7, 16, 33, 50), (5, 16, 41), (4, 8, 16)):
        for overlap in (0, tile // 4, tile - 1):
            windows = tile_windows(height, width, tile, overlap, edge=edge)
            assert (_coverage(height, width, windows) >= 1).all()
            for r, c, h, w in windows:
                assert min(r, c) >= 0 and r + h <= height and c + w <= width
                assert h == min(tile, height - r if edge == "pad" else height)
                assert w == min(tile, width - c if edge == "pad" else width)


def test_pad_windows_start_on_a_regular_grid():
    # Without overlap the build's windows are the disjoint tile grid from the top-left.
    for height, width, tile in itertools.product((9, 16, 40), (3, 17, 32), (4, 8, 16)):
        windows = tile_windows(height, width, tile, edge="pad")
        expected = [(r, c) for r in range(0, height, tile) for c in range(0, width, tile)]
        assert [(r, c) for r, c, _, _ in windows] == expected
        assert (_coverage(height, width, windows) == 1).all()


def test_bad_edge_is_an_error():
    with pytest.raises(ValueError, match="edge"):
        tile_windows(10, 10, 4, edge="wrap")  # type: ignore[arg-type]
