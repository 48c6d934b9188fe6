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


@pytest.mark.parametrize(
    ("flip", "mirror"), [("none", lambda a: a), ("horizontal", np.fliplr), ("vertical", np.flipud)]
)
def test_a_flip_mirrors_the_last_two_axes_as_numpy_does_and_undoes_itself(flip, mirror):
    import torch

    from rsvlm.data.tiling import flip_tile

    rng = np.random.default_rng(0)
    tile = rng.normal(size=(3, 5, 7)).astype(np.float32)
    expected = np.stack([mirror(band) for band in tile])
    np.testing.assert_array_equal(flip_tile(tile, flip), expected)
    np.testing.assert_array_equal(flip_tile(torch.from_numpy(tile), flip).numpy(), expected)
    np.testing.assert_array_equal(flip_tile(flip_tile(tile, flip), flip), tile)
    both = flip_tile(tile[0], "both")
    np.testing.assert_array_equal(both, np.rot90(tile[0], 2))  # both mirrors = a half turn
    assert flip_tile(tile, flip).flags.c_contiguous


def test_flips_must_be_known_unique_and_include_none():
    from rsvlm.data.tiling import check_flips

    assert check_flips(["none", "both"], "f") == ("none", "both")
    with pytest.raises(ValueError, match=r"^f: unknown flip 'diagonal'"):
        check_flips(["none", "diagonal"], "f")
    with pytest.raises(ValueError, match=r"^f: give each flip once and 'none' among them"):
        check_flips(["horizontal"], "f")
    with pytest.raises(ValueError, match=r"^f: give each flip once"):
        check_flips(["none", "none"], "f")
