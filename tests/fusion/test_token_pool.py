"""``token_pool``: every fusion module can hand the LLM fewer visual tokens than map cells,
while the map it gives the mask decoder stays the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsvlm.contracts import FusedFeatures
from rsvlm.fusion.msam import MSAM
from rsvlm.fusion.single_scale import SingleScaleFusion
from rsvlm.fusion.upernet import UperNetFusion

CHANNELS = [8, 16, 32, 64]


def block_means(fused: np.ndarray, pool: int) -> np.ndarray:
    """Reference: ``B×D×h×w`` → ``B×N×D``, the mean of each ``pool``×``pool`` block, row-major,
    a block cut by the edge averaging only the cells it holds."""
    b, d, h, w = fused.shape
    rows = []
    for y in range(0, h, pool):
        for x in range(0, w, pool):
            rows.append(fused[:, :, y : y + pool, x : x + pool].mean(axis=(2, 3)))
    return np.stack(rows, axis=1)


@pytest.mark.parametrize("shape,pool", [((2, 3, 8, 6), 2), ((1, 4, 5, 7), 2), ((2, 2, 9, 9), 3), ((1, 3, 4, 4), 1)])
def test_from_map_pools_blocks(shape, pool) -> None:
    fused = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    features = FusedFeatures.from_map(fused, pool)
    assert features.map is fused
    expected = block_means(fused.numpy(), pool)
    assert features.tokens.shape == expected.shape
    np.testing.assert_allclose(features.tokens.numpy(), expected, rtol=1e-5, atol=1e-6)


def _pyramid(size: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, c, size // r, size // r, generator=g) for c, r in zip(CHANNELS, (4, 8, 16, 32))]


FUSIONS = {
    "msam": lambda pool: MSAM(CHANNELS, out_channels=16, target_reduction=4, token_pool=pool),
    "single_scale": lambda pool: SingleScaleFusion(
        CHANNELS, out_channels=16, level=2, target_reduction=4, token_pool=pool
    ),
    "upernet": lambda pool: UperNetFusion(
        CHANNELS, hidden_size=16, out_channels=16, target_reduction=4, token_pool=pool
    ),
}


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_fusions_keep_the_map_and_pool_the_tokens(name: str) -> None:
    torch.manual_seed(0)
    plain = FUSIONS[name](1).eval()
    pooled = FUSIONS[name](2).eval()
    pooled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a, b = plain(_pyramid()), pooled(_pyramid())
    torch.testing.assert_close(b.map, a.map)
    assert a.map.shape == (2, 16, 16, 16) and a.tokens.shape == (2, 256, 16)
    assert b.tokens.shape == (2, 64, 16)
    np.testing.assert_allclose(b.tokens.numpy(), block_means(a.map.numpy(), 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_token_pool_below_one_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="token_pool must be >= 1, got 0"):
        FUSIONS[name](0)
