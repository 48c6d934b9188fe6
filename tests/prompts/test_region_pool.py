"""RegionPoolPromptEncoder on hand-computed cases (RoIAlign, mask pooling) and its per-sample output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsvlm.contracts import PROMPT_KINDS, FusedFeatures, VisualPromptBatch
from rsvlm.llm.splice import splice_placeholders
from rsvlm.prompts.region_pool import RegionPoolPromptEncoder

EMPTY, POINT, BOX, SCRIBBLE, MASK = (PROMPT_KINDS[k] for k in ("empty", "point", "box", "scribble", "mask"))


def prompt_batch(
    kind: list[list[int]],
    image_size: tuple[int, int],
    boxes: dict[tuple[int, int], list[float]] | None = None,
    vertices: dict[tuple[int, int], list[list[float]]] | None = None,
    masks: dict[tuple[int, int], torch.Tensor] | None = None,
) -> VisualPromptBatch:
    """Slots given by (sample, slot): boxes ``[x0, y0, x1, y1]``, vertices (a point's box is itself,
    a scribble's and mask's their bounding box), masks ``H×W`` bool."""
    kinds = torch.tensor(kind)
    b, m = kinds.shape
    points, npoints = torch.zeros(b, m, 4, 2), torch.zeros(b, m, dtype=torch.long)
    box = torch.zeros(b, m, 4)
    for (i, k), xy in (vertices or {}).items():
        xy = torch.tensor(xy, dtype=torch.float32)
        points[i, k, : len(xy)], npoints[i, k] = xy, len(xy)
        box[i, k] = torch.cat([xy.amin(0), xy.amax(0)])
    for (i, k), value in (boxes or {}).items():
        box[i, k] = torch.tensor(value)
    mask_tensor = None
    if masks:
        mask_tensor = torch.zeros(b, m, *image_size, dtype=torch.bool)
        for (i, k), value in masks.items():
            mask_tensor[i, k] = value
            rows, cols = torch.nonzero(value, as_tuple=True)
            box[i, k] = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return VisualPromptBatch(
        kind=kinds,
        points=points,
        npoints=npoints,
        boxes=box,
        labels=torch.ones(b, m, dtype=torch.long),
        image_size=image_size,
        masks=mask_tensor,
    )


def feature_map(b: int, d: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, d, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- RoIAlign
@pytest.mark.parametrize(("image_size", "map_size"), [((64, 64), (8, 8)), ((32, 64), (8, 8))])
def test_whole_image_box_with_one_bin_is_the_global_mean(image_size, map_size):
    fmap = feature_map(1, 5, *map_size)
    height, width = image_size
    prompts = prompt_batch([[BOX]], image_size, boxes={(0, 0): [0, 0, width, height]})
    encoder = RegionPoolPromptEncoder(in_channels=5, out_dim=8, output_size=1, sampling_ratio=map_size[0])
    pooled = encoder.pool_regions(fmap, prompts)
    assert pooled.shape == (1, 1, 5, 1, 1)
    expected = fmap[0].numpy().astype(np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(pooled[0, 0, :, 0, 0].numpy(), expected, atol=1e-5)


def test_box_on_a_constant_patch_pools_the_constant():
    fmap = feature_map(1, 3, 8, 8)
    constant = torch.tensor([1.5, -2.0, 0.25])
    fmap[0, :, 2:6, 3:7] = constant[:, None, None]  # cells rows 2..5, cols 3..6
    # cell centres 3.5..6.5 (x) and 2.5..5.5 (y) at stride 8: every bilinear sample falls among patch cells
    prompts = prompt_batch([[BOX, EMPTY]], (64, 64), boxes={(0, 0): [3.5 * 8, 2.5 * 8, 6.5 * 8, 5.5 * 8]})
    encoder = RegionPoolPromptEncoder(in_channels=3, out_dim=8, output_size=7)
    pooled = encoder.pool_regions(fmap, prompts)
    assert pooled.shape == (1, 2, 3, 7, 7)
    assert torch.allclose(pooled[0, 0], constant[:, None, None].expand(3, 7, 7), atol=1e-6)
    assert torch.equal(pooled[0, 1], torch.zeros(3, 7, 7))  # empty slot


def test_point_box_samples_the_feature_at_the_point():
    fmap = feature_map(1, 3, 8, 8)
    # the centre of cell (row 2, col 5) at stride 4
    prompts = prompt_batch([[POINT]], (32, 32), vertices={(0, 0): [[5.5 * 4, 2.5 * 4]]})
    encoder = RegionPoolPromptEncoder(in_channels=3, out_dim=8, output_size=2)
    pooled = encoder.pool_regions(fmap, prompts)
    assert torch.allclose(pooled[0, 0], fmap[0, :, 2, 5, None, None].expand(3, 2, 2), atol=1e-6)


# ---------------------------------------------------------------------------- mask pooling
def test_single_pixel_mask_returns_that_cell_exactly():
    fmap = feature_map(1, 4, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[3, 5] = True
    prompts = prompt_batch([[MASK]], (8, 8), masks={(0, 0): mask})
    encoder = RegionPoolPromptEncoder(in_channels=4, out_dim=8, pool="mask")
    pooled = encoder.pool_regions(fmap, prompts)
    assert pooled.shape == (1, 1, 4, 1, 1)
    assert torch.equal(pooled[0, 0, :, 0, 0], fmap[0, :, 3, 5])


def test_all_ones_mask_returns_the_global_mean():
    fmap = feature_map(1, 4, 8, 8)
    prompts = prompt_batch([[MASK]], (32, 32), masks={(0, 0): torch.ones(32, 32, dtype=torch.bool)})
    encoder = RegionPoolPromptEncoder(in_channels=4, out_dim=8, pool="mask")
    pooled = encoder.pool_regions(fmap, prompts)[0, 0, :, 0, 0]
    np.testing.assert_allclose(pooled.numpy(), fmap[0].numpy().astype(np.float64).mean(axis=(1, 2)), atol=1e-6)


def test_mask_pooling_of_points_boxes_and_scribbles():
    fmap = feature_map(1, 4, 8, 8)
    kind = [[BOX, SCRIBBLE, POINT]]
    vertices = {(0, 1): [[0.5, 0.5], [3.2, 2.7]], (0, 2): [[27.3, 13.9]]}
    # stride 1 for the box and scribble: their pixels are cells
    same = prompt_batch(kind, (8, 8), boxes={(0, 0): [2, 1, 5, 4]}, vertices=vertices)
    encoder = RegionPoolPromptEncoder(in_channels=4, out_dim=8, pool="mask")
    pooled = encoder.pool_regions(fmap, same)[0, :, :, 0, 0]
    f = fmap[0].numpy().astype(np.float64)
    np.testing.assert_allclose(pooled[0].numpy(), f[:, 1:4, 2:5].mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(pooled[1].numpy(), (f[:, 0, 0] + f[:, 2, 3]) / 2, atol=1e-6)
    # at stride 4 a point's pixel reaches no cell centre: it takes the cell holding it (row 3, col 6)
    coarse = prompt_batch(kind, (32, 32), boxes={(0, 0): [0, 0, 8, 8]}, vertices=vertices)
    pooled = encoder.pool_regions(fmap, coarse)[0, :, :, 0, 0]
    assert torch.equal(pooled[2], fmap[0, :, 3, 6])


def test_mask_slot_without_masks_is_an_error():
    prompts = prompt_batch([[MASK]], (8, 8), boxes={(0, 0): [0, 0, 4, 4]})
    encoder = RegionPoolPromptEncoder(in_channels=4, out_dim=8, pool="mask")
    with pytest.raises(ValueError, match="prompts.masks is None"):
        encoder(prompts, FusedFeatures.from_map(feature_map(1, 4, 8, 8)))


# ---------------------------------------------------------------------------- the output
def ragged_batch() -> VisualPromptBatch:
    """Three samples with 2, 0 and 1 valid slots (sample 0 has a gap at slot 1)."""
    return prompt_batch(
        [[BOX, EMPTY, POINT], [EMPTY, EMPTY, EMPTY], [SCRIBBLE, EMPTY, EMPTY]],
        (32, 32),
        boxes={(0, 0): [4, 4, 20, 12]},
        vertices={(0, 2): [[7.5, 25.0]], (2, 0): [[1.0, 1.0], [9.0, 30.0], [20.0, 3.0]]},
    )


@pytest.mark.parametrize("pool", ["roi_align", "mask"])
def test_one_token_per_valid_slot_in_slot_order(pool):
    torch.manual_seed(0)
    encoder = RegionPoolPromptEncoder(in_channels=6, out_dim=16, pool=pool, output_size=3)
    fmap = feature_map(3, 6, 8, 8)
    prompts = ragged_batch()
    out = encoder(prompts, FusedFeatures.from_map(fmap))
    assert [tuple(t.shape) for t in out] == [(2, 1, 16), (0, 1, 16), (1, 1, 16)]
    # sample 0 alone, its slots packed without the gap: the same tokens in the same order
    packed = prompt_batch([[BOX, POINT]], (32, 32), boxes={(0, 0): [4, 4, 20, 12]}, vertices={(0, 1): [[7.5, 25.0]]})
    alone = encoder(packed, FusedFeatures.from_map(fmap[:1]))
    assert torch.allclose(out[0], alone[0], atol=1e-6)
    assert not torch.allclose(out[0][0], out[0][1])


def test_tokens_splice_at_the_samples_region_placeholders():
    encoder = RegionPoolPromptEncoder(in_channels=6, out_dim=16)
    out = encoder(ragged_batch(), FusedFeatures.from_map(feature_map(3, 6, 8, 8)))
    region = 7
    ids = torch.tensor([[1, region, 2, region, 3], [1, 2, 3, 4, 5], [region, 1, 2, 3, 4]])
    spliced = splice_placeholders(torch.zeros(3, 5, 16), ids, torch.ones_like(ids), {"<region>": (region, out)})
    assert torch.equal(spliced.embeds[0, 1], out[0][0, 0]) and torch.equal(spliced.embeds[0, 3], out[0][1, 0])
    assert torch.equal(spliced.embeds[2, 0], out[2][0, 0])


@pytest.mark.parametrize("pool", ["roi_align", "mask"])
def test_gradient_reaches_the_map(pool):
    encoder = RegionPoolPromptEncoder(in_channels=6, out_dim=16, pool=pool, output_size=2)
    fmap = feature_map(3, 6, 8, 8).requires_grad_(True)
    out = encoder(ragged_batch(), FusedFeatures.from_map(fmap))
    torch.cat(out).square().mean().backward()
    assert fmap.grad is not None and fmap.grad[0].abs().sum() > 0 and fmap.grad[2].abs().sum() > 0
    assert fmap.grad[1].abs().sum() == 0  # sample 1 has no prompt
    assert encoder.box_mlp[0].weight.grad is not None


def test_bad_inputs_are_named():
    encoder = RegionPoolPromptEncoder(in_channels=6, out_dim=16, max_prompts=2)
    with pytest.raises(ValueError, match="visual is None"):
        encoder(ragged_batch())
    with pytest.raises(ValueError, match="3 slots, more than max_prompts=2"):
        encoder(ragged_batch(), FusedFeatures.from_map(feature_map(3, 6, 8, 8)))
    prompts = prompt_batch([[BOX]], (32, 32), boxes={(0, 0): [0, 0, 8, 8]})
    with pytest.raises(ValueError, match=r"visual.map must be 1×6×h×w \(in_channels=6\)"):
        encoder(prompts, FusedFeatures.from_map(feature_map(1, 5, 8, 8)))
    with pytest.raises(ValueError, match="pool must be one of"):
        RegionPoolPromptEncoder(in_channels=6, out_dim=16, pool="max")  # type: ignore[arg-type]


@pytest.mark.parametrize("pool", ["roi_align", "mask"])
def test_views_stacked_on_the_map_pool_from_the_global_view(pool):
    # A 1 + 2×2 views map: 5 views of 4×4 stacked top to bottom, the global view (the whole image) first.
    views = feature_map(1, 3, 5 * 4, 4)
    prompts = prompt_batch([[BOX]], (64, 64), boxes={(0, 0): [16.0, 16.0, 48.0, 48.0]})
    torch.manual_seed(0)
    stacked = RegionPoolPromptEncoder(in_channels=3, out_dim=8, pool=pool, output_size=2, num_views=5)
    torch.manual_seed(0)
    single = RegionPoolPromptEncoder(in_channels=3, out_dim=8, pool=pool, output_size=2)
    with torch.no_grad():
        (got,) = stacked(prompts, FusedFeatures.from_map(views))
        (expected,) = single(prompts, FusedFeatures.from_map(views[..., :4, :]))
        (whole,) = single(prompts, FusedFeatures.from_map(views))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, whole)  # the whole stack read as one image is another region
    with pytest.raises(ValueError, match="num_views=3"):
        RegionPoolPromptEncoder(in_channels=3, out_dim=8, num_views=3)(prompts, FusedFeatures.from_map(views))
    with pytest.raises(ValueError, match="num_views must be >= 1"):
        RegionPoolPromptEncoder(in_channels=3, out_dim=8, num_views=0)
