"""The shared encoder logic: band arguments, stem widening, freezing that stays in eval mode,
and the band-count and pyramid checks of the contracts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rsvlm.contracts import ContractError, check_image_bands, check_pyramid
from rsvlm.encoders._stem import FreezableEncoder, check_band_arguments, needs_widening, widen_stem_conv


class ToyEncoder(FreezableEncoder):
    """A backbone with dropout and BatchNorm (both differ between train and eval) and a head."""

    def __init__(self, freeze: str | None) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Dropout(0.5))
        if freeze is not None:
            self.freeze_part(freeze)


def test_band_arguments() -> None:
    assert check_band_arguments("Enc", 4, [2, 1, 0]) == [2, 1, 0]
    assert check_band_arguments("Enc", 2, None) is None
    for bad in ([0, 1], [0, 0, 1], [0, 1, 4], [-1, 0, 1]):
        with pytest.raises(ValueError, match=r"Enc: rgb_bands=.*in_bands=4"):
            check_band_arguments("Enc", 4, bad)
    with pytest.raises(ValueError, match="in_bands must be >= 1"):
        check_band_arguments("Enc", 0, None)
    with pytest.raises(ValueError, match="extra_band_init"):
        check_band_arguments("Enc", 3, [0, 1, 2], "ones")
    assert not needs_widening(3, [0, 1, 2])
    assert needs_widening(3, [2, 1, 0]) and needs_widening(4, [0, 1, 2]) and needs_widening(3, None)


def test_widen_stem_conv_keeps_rgb_filters_and_flags() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3)
    rgb = conv.weight.detach().clone()
    conv.weight.requires_grad_(False)
    widen_stem_conv(conv, 5, [4, 0, 2], "zeros")
    assert conv.in_channels == 5 and conv.weight.shape == (6, 5, 3, 3)
    assert not conv.weight.requires_grad
    for rgb_index, band in enumerate([4, 0, 2]):
        assert torch.equal(conv.weight[:, band], rgb[:, rgb_index])
    assert not conv.weight[:, [1, 3]].any()
    # the widened conv computes what the RGB conv computes on the R, G, B bands
    image = torch.randn(2, 5, 8, 8)
    torch.testing.assert_close(conv(image), nn.functional.conv2d(image[:, [4, 0, 2]], rgb, conv.bias))


@pytest.mark.parametrize("part", ["", "backbone"])
def test_frozen_part_stays_in_eval_mode(part: str) -> None:
    encoder = ToyEncoder(freeze=part)
    frozen = encoder.get_submodule(part)
    encoder.train()
    assert encoder.frozen_part == part
    assert not any(m.training for m in frozen.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    if part:  # the rest trains
        assert encoder.training and encoder.head.training
        assert all(p.requires_grad for p in encoder.head.parameters())
    running = encoder.backbone[1].running_mean.clone()
    image = torch.randn(2, 3, 4, 4) + 3
    torch.testing.assert_close(encoder.backbone(image), encoder.backbone(image))  # no dropout
    assert torch.equal(encoder.backbone[1].running_mean, running)  # no statistics update
    encoder.eval()
    assert not any(m.training for m in encoder.modules())


def test_unfrozen_encoder_trains() -> None:
    encoder = ToyEncoder(freeze=None).train()
    assert encoder.frozen_part is None
    assert all(m.training for m in encoder.modules())


def test_band_and_pyramid_checks_name_owner_and_field() -> None:
    check_image_bands("Enc", torch.zeros(1, 4, 8, 8), 4)
    with pytest.raises(ContractError, match=r"Enc expects images B×4×H×W \(in_bands=4\), got shape \(1, 3, 8, 8\)"):
        check_image_bands("Enc", torch.zeros(1, 3, 8, 8), 4)
    with pytest.raises(ContractError, match="in_bands=4"):
        check_image_bands("Enc", torch.zeros(4, 8, 8), 4)
    maps = [torch.zeros(1, 8, 4, 4), torch.zeros(1, 16, 2, 2)]
    check_pyramid("Fuse", maps, [8, 16])
    with pytest.raises(ContractError, match=r"Fuse got 2 feature maps, expected 3 .*Fuse\.in_channels"):
        check_pyramid("Fuse", maps, [8, 16, 32])
    with pytest.raises(ContractError, match="Fuse level 1: got 16 channels, expected 12"):
        check_pyramid("Fuse", maps, [8, 12])
    with pytest.raises(ContractError, match=r"Fuse level 0: expected a B×D×h×w map"):
        check_pyramid("Fuse", [torch.zeros(8, 4, 4), maps[1]], [8, 16])
