"""Tiled prediction: windows cover scenes, stitching tiles of a known field gives it back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsvlm.data.tiling import tile_windows
from rsvlm.inference.stitch import Stitcher, blend_weights


@pytest.mark.parametrize(
    "height,width,tile,overlap",
    [(70, 90, 32, 8), (64, 64, 32, 0), (20, 50, 32, 4), (33, 97, 16, 15), (5, 5, 8, 2), (512, 1000, 256, 64)],
)
def test_windows_cover_every_pixel_inside_the_scene(height, width, tile, overlap):
    windows = tile_windows(height, width, tile, overlap)
    cover = np.zeros((height, width), dtype=int)
    for r, c, h, w in windows:
        assert r >= 0 and c >= 0 and r + h <= height and c + w <= width
        assert (h, w) == (min(tile, height), min(tile, width))
        cover[r : r + h, c : c + w] += 1
    assert (cover >= 1).all()
    # Neighbouring starts are at most tile - overlap apart, so neighbours share >= overlap pixels.
    for axis in (0, 1):
        starts = sorted({w[axis] for w in windows})
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    assert len(windows) == len(set(windows))


def test_bad_tiling_arguments_are_errors():
    with pytest.raises(ValueError, match="overlap"):
        tile_windows(10, 10, 8, 8)
    with pytest.raises(ValueError, match="scene size"):
        tile_windows(0, 10, 8, 0)


@pytest.mark.parametrize("blend", ["cosine", "mean"])
def test_stitching_tiles_of_a_known_field_gives_it_back(blend):
    rng = np.random.default_rng(1)
    field = rng.normal(size=(70, 90)).astype(np.float32) * 5
    stitcher = Stitcher(70, 90, blend)
    for r, c, h, w in tile_windows(70, 90, 32, 8):
        stitcher.add((r, c, h, w), torch.from_numpy(field[r : r + h, c : c + w]))
    np.testing.assert_allclose(stitcher.result(), field, rtol=1e-5, atol=1e-5)


def test_overlaps_are_weighted_averages():
    # Two tiles of constant logits 0 and 1 overlapping by 4 columns: the overlap gets the
    # weighted mean with the sin² window of each tile evaluated at its own column index.
    stitcher = Stitcher(8, 12, "cosine")
    stitcher.add((0, 0, 8, 8), np.zeros((8, 8)))
    stitcher.add((0, 4, 8, 8), np.ones((8, 8)))
    out = stitcher.result()
    weight = np.sin(np.pi * (np.arange(8) + 0.5) / 8) ** 2
    for col in range(4, 8):
        expected = weight[col - 4] / (weight[col] + weight[col - 4])
        np.testing.assert_allclose(out[:, col], expected, rtol=1e-6)
    assert (out[:, :4] == 0).all() and (out[:, 8:] == 1).all()
    assert (blend_weights(5, 7) > 0).all()
    with pytest.raises(ValueError, match="no tile"):
        Stitcher(4, 4).result()
