"""ViewTiler: the global view and tiles of a large input, and the merge of their tokens per sample.

References: direct slicing of the input for the tiles, ``F.interpolate(mode="area")`` /
``F.adaptive_max_pool2d`` / antialiased bicubic for the global view, and per-sample loops for
the order of views and tags.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsvlm.contracts import ContractError
from rsvlm.fusion.views import ViewTiler


@pytest.mark.parametrize(("layout", "n"), [("1+2x2", 2), ("1+3x3", 3)])
def test_tiles_are_direct_slices_in_row_major_order(layout: str, n: int) -> None:
    s = 8
    tiler = ViewTiler(layout, view_size=s)
    x = torch.randn(3, 2, n * s, n * s)
    views = tiler.split(x)
    assert tiler.num_views == 1 + n * n and views.shape == (3 * (1 + n * n), 2, s, s)
    for b in range(3):
        for i in range(n):
            for j in range(n):
                row = b * tiler.num_views + 1 + i * n + j
                assert torch.equal(views[row], x[b, :, i * s : (i + 1) * s, j * s : (j + 1) * s]), (b, i, j)


def test_global_view_of_an_image_is_the_area_mean() -> None:
    x = torch.randn(2, 3, 32, 32)
    views = ViewTiler("1+2x2", view_size=16).split(x)
    expected = F.interpolate(x, size=(16, 16), mode="area")
    torch.testing.assert_close(views[0::5], expected)
    # and the area mean is the mean of each 2×2 block
    torch.testing.assert_close(views[0, 0, 3, 5], x[0, 0, 6:8, 10:12].mean())


def test_global_view_bicubic_and_single_view_layout() -> None:
    x = torch.randn(2, 3, 48, 48)
    views = ViewTiler("1", view_size=16, global_resize="bicubic").split(x)
    assert views.shape == (2, 3, 16, 16)
    torch.testing.assert_close(views, F.interpolate(x, size=(16, 16), mode="bicubic", antialias=True))
    same = torch.randn(2, 3, 16, 16)
    assert torch.equal(ViewTiler("1", view_size=16).split(same), same)


def test_canvas_global_view_is_max_pooled_and_keeps_one_pixel_strokes() -> None:
    canvas = torch.zeros(2, 4, 64, 64)
    canvas[0, 1, 17, 3:60] = 1.0  # a 1-px horizontal stroke
    canvas[1, 2, 5:50, 41] = 1.0  # a 1-px vertical stroke
    canvas[1, 0, 62, 1] = 1.0  # a single-pixel point
    tiler = ViewTiler("1+2x2", view_size=32)
    views = tiler.split(canvas, canvas=True)
    glob = views[0 :: tiler.num_views]
    torch.testing.assert_close(glob, F.adaptive_max_pool2d(canvas, 32))
    assert glob[0, 1, 8, 2:30].eq(1).all() and glob[1, 2, 3:25, 20].eq(1).all() and glob[1, 0, 31, 0] == 1
    assert glob.sum() > 0 and glob.max() == 1
    # an image-style area shrink halves a 1-px stroke: what max pooling is there to avoid
    assert tiler.split(canvas)[0].max() == 0.5


def test_split_then_merge_keeps_view_v_of_sample_b() -> None:
    tiler = ViewTiler("1+2x2", view_size=4)
    x = torch.randn(3, 2, 8, 8)
    views = tiler.split(x)
    tokens = views.flatten(2).transpose(1, 2)  # (V·B)×16×2: each view's pixels as tokens
    merged = tiler.merge(tokens)
    assert merged.shape == (3, 5 * 16, 2)
    for b in range(3):
        expected = [F.interpolate(x[b : b + 1], size=(4, 4), mode="area")[0]]
        expected += [x[b, :, i * 4 : (i + 1) * 4, j * 4 : (j + 1) * 4] for i in range(2) for j in range(2)]
        for v, view in enumerate(expected):
            torch.testing.assert_close(merged[b, v * 16 : (v + 1) * 16], view.flatten(1).T, msg=f"b={b} v={v}")


def test_view_tags_wrap_each_view() -> None:
    torch.manual_seed(0)
    tiler = ViewTiler("1+2x2", view_size=4, view_tags=True, dim=6)
    assert tiler.extra_tokens == 10
    tokens = torch.randn(2 * 5, 3, 6, requires_grad=True)
    merged = tiler.merge(tokens)
    assert merged.shape == (2, 5 * (3 + 2), 6)
    for b in range(2):
        for v in range(5):
            block = merged[b, v * 5 : (v + 1) * 5]  # [start_v, 3 tokens, end_v]
            assert torch.equal(block[0], tiler.start_tags[v]) and torch.equal(block[-1], tiler.end_tags[v])
            assert torch.equal(block[1:4], tokens[b * 5 + v])
    assert not torch.allclose(tiler.start_tags[0], tiler.start_tags[1])  # one pair per view
    merged.sum().backward()
    assert tiler.start_tags.grad is not None and tiler.end_tags.grad is not None
    assert torch.equal(tiler.start_tags.grad, torch.full((5, 6), 2.0))  # once per sample


def test_no_tags_means_no_parameters() -> None:
    tiler = ViewTiler("1+3x3", view_size=4)
    assert tiler.parameter_free and not list(tiler.parameters()) and tiler.extra_tokens == 0
    assert tiler.merge(torch.randn(20, 7, 5)).shape == (2, 70, 5)


def test_bad_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="layout"):
        ViewTiler("2x2", view_size=4)
    with pytest.raises(ValueError, match="dim"):
        ViewTiler("1+2x2", view_size=4, view_tags=True)
    with pytest.raises(ValueError, match="global_resize"):
        ViewTiler("1", view_size=4, global_resize="nearest")
    tiler = ViewTiler("1+2x2", view_size=4, view_tags=True, dim=6)
    with pytest.raises(ContractError, match="8×8 inputs, got 12×12"):
        tiler.split(torch.zeros(1, 3, 12, 12))
    with pytest.raises(ContractError, match="square"):
        tiler.split(torch.zeros(1, 3, 8, 4))
    with pytest.raises(ContractError, match="V=5 views"):
        tiler.merge(torch.zeros(7, 3, 6))
    with pytest.raises(ContractError, match="dim=6"):
        tiler.merge(torch.zeros(10, 3, 5))
