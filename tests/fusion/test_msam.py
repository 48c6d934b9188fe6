"""MSAM against hand-computed resize + concat + conv, for both forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rsvlm.contracts import ContractError
from rsvlm.fusion.msam import MSAM

CHANNELS = [3, 5, 7, 11]  # distinct widths so a wrong concat order cannot fit the conv by accident
REDUCTIONS = [4, 8, 16, 32]


def _pyramid(h: int = 64, w: int = 96, batch: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(batch, c, h // r, w // r) for c, r in zip(CHANNELS, REDUCTIONS)]


def _randomise(module: torch.nn.Module) -> None:
    # Default init leaves GroupNorm at identity; random affine makes the check stricter.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)


def test_paper_form_matches_functional() -> None:
    feats = _pyramid()
    msam = MSAM(CHANNELS, REDUCTIONS, out_channels=8, form="paper").eval()
    _randomise(msam)
    out = msam(feats)

    size = feats[2].shape[-2:]
    x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats], dim=1)
    conv3, conv1 = msam.fuse_all[0], msam.fuse_all[2]
    ref = F.relu(F.conv2d(x, conv3.weight, conv3.bias, padding=1))
    ref = F.relu(F.conv2d(ref, conv1.weight, conv1.bias))

    assert out.map.shape == (2, 8, 4, 6)
    torch.testing.assert_close(out.map, ref)
    assert conv3.kernel_size == (3, 3) and conv1.kernel_size == (1, 1)


def test_released_form_matches_released_code() -> None:
    feats = _pyramid()
    msam = MSAM(CHANNELS, REDUCTIONS, out_channels=8, form="released", num_groups=4).eval()
    _randomise(msam)
    out = msam(feats)

    # The released FeatureAggregator: x1 = level 2 (1/16), then levels 0, 1, 3 resized to it.
    x1 = feats[2]
    size = x1.shape[-2:]
    rest = [F.interpolate(feats[i], size=size, mode="bilinear", align_corners=True) for i in (0, 1, 3)]
    x = torch.cat([x1, *rest], dim=1)
    conv, gn = msam.fuse_all[0], msam.fuse_all[1]
    ref = F.conv2d(x, conv.weight, conv.bias)
    ref = F.gelu(F.group_norm(ref, 4, gn.weight, gn.bias, gn.eps))

    torch.testing.assert_close(out.map, ref)
    assert msam.concat_order == [2, 0, 1, 3]


def test_released_state_dict_names() -> None:
    msam = MSAM(CHANNELS, REDUCTIONS, out_channels=32, form="released")
    names = {"fuse_all.0.weight", "fuse_all.0.bias", "fuse_all.1.weight", "fuse_all.1.bias"}
    assert set(msam.state_dict()) == names
    assert msam.fuse_all[1].num_groups == 16
    assert msam.fuse_all[3].p == 0.5


@pytest.mark.parametrize("form", ["paper", "released"])
def test_contract_and_tokens(form: str) -> None:
    feats = _pyramid(h=128, w=64, batch=3)
    msam = MSAM(CHANNELS, REDUCTIONS, out_channels=16, form=form).eval()
    out = msam(feats)
    assert msam.out_channels == 16 and msam.out_reduction == 16 and msam.in_channels == CHANNELS
    assert out.map.shape == (3, 16, 8, 4)
    assert out.tokens.shape == (3, 32, 16)
    # tokens are the map flattened row-major: token i*w + j is pixel (i, j)
    for i, j in [(0, 0), (0, 3), (5, 2), (7, 3)]:
        torch.testing.assert_close(out.tokens[:, i * 4 + j], out.map[:, :, i, j])
    out.tokens.sum().backward()


def test_target_from_level_zero_when_no_level_matches() -> None:
    torch.manual_seed(0)
    feats = [torch.randn(1, 3, 32, 48), torch.randn(1, 5, 16, 24)]
    msam = MSAM([3, 5], [4, 8], out_channels=4, target_reduction=16).eval()
    out = msam(feats)
    assert out.map.shape == (1, 4, 8, 12)
    x = torch.cat([F.interpolate(f, size=(8, 12), mode="bilinear", align_corners=False) for f in feats], 1)
    ref = msam.fuse_all(x)
    torch.testing.assert_close(out.map, ref)


def test_errors() -> None:
    feats = _pyramid()
    msam = MSAM(CHANNELS, REDUCTIONS, out_channels=8)
    with pytest.raises(ContractError, match="got 3 feature maps, expected 4"):
        msam(feats[:3])
    bad = list(feats)
    bad[1] = torch.randn(2, 6, 8, 12)
    with pytest.raises(ContractError, match="level 1: got 6 channels, expected 5"):
        msam(bad)
    with pytest.raises(ValueError, match="in_reductions"):
        MSAM([3, 5], [4, 8, 16])
    with pytest.raises(ValueError, match="no level has reduction 16"):
        MSAM([3, 5], [4, 8], form="released", num_groups=4, out_channels=8)
    with pytest.raises(ValueError, match="num_groups=16 must divide out_channels=8"):
        MSAM(CHANNELS, REDUCTIONS, out_channels=8, form="released")
