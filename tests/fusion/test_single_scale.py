"""SingleScaleFusion equals a hand-computed resize + 1×1 conv of the chosen level."""

import pytest
import torch
import torch.nn.functional as F

from rsvlm.contracts import ContractError
from rsvlm.fusion.single_scale import SingleScaleFusion


def _pyramid(size=64, channels=(8, 16, 32, 64)):
    torch.manual_seed(0)
    return [torch.randn(2, c, size // r, size // r) for c, r in zip(channels, (4, 8, 16, 32))]


def test_picks_the_target_level_and_projects():
    feats = _pyramid()
    fusion = SingleScaleFusion(in_channels=[8, 16, 32, 64], out_channels=12, target_reduction=16)
    out = fusion(feats)
    expected = F.conv2d(feats[2], fusion.proj.weight, fusion.proj.bias)
    assert torch.allclose(out.map, expected)
    assert out.tokens.shape == (2, 16, 12)
    assert torch.equal(out.tokens, out.map.flatten(2).transpose(1, 2))


def test_resizes_another_level_to_the_target_stride():
    feats = _pyramid()
    fusion = SingleScaleFusion(in_channels=[8, 16, 32, 64], out_channels=5, level=3, target_reduction=8)
    out = fusion(feats)
    resized = F.interpolate(feats[3], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out.map, F.conv2d(resized, fusion.proj.weight, fusion.proj.bias))


def test_wrong_channels_is_a_contract_error():
    fusion = SingleScaleFusion(in_channels=[8, 16, 33, 64], out_channels=4)
    with pytest.raises(ContractError, match="level 2: got 32 channels, expected 33"):
        fusion(_pyramid())


def test_batch_norm_centres_each_channel_over_the_batch_and_space():
    torch.manual_seed(0)
    fusion = SingleScaleFusion(in_channels=[8], in_reductions=[4], out_channels=6, target_reduction=4, norm="batch")
    x = torch.randn(3, 8, 5, 5) + 4.0  # a shared offset, as random encoders give
    out = fusion([x]).map
    conv = torch.nn.functional.conv2d(x, fusion.proj.weight, fusion.proj.bias)
    mean, var = conv.mean(dim=(0, 2, 3), keepdim=True), conv.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(out, (conv - mean) / torch.sqrt(var + fusion.bn.eps), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="norm must be"):
        SingleScaleFusion(in_channels=[8], in_reductions=[4], out_channels=6, target_reduction=4, norm="layer")
