"""UperNet glue against transformers' own UperNet head (built from a real ``UperNetConfig``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import UperNetConfig
from transformers.models.upernet.modeling_upernet import UperNetHead

from rsvlm.contracts import ContractError, FusedFeatures
from rsvlm.fusion.upernet import UperNetFusion
from rsvlm.heads.upernet import UperNetSegHead

IN_CHANNELS = [8, 16, 24, 32]
HIDDEN = 16
POOL_SCALES = [1, 2, 3]


def pyramid(batch: int, height: int, width: int, channels: list[int] = IN_CHANNELS) -> list[torch.Tensor]:
    """Random maps at strides 4, 8, 16, 32 of an ``height×width`` image (ceil sizes)."""
    return [
        torch.randn(batch, c, -(-height // r), -(-width // r)) for c, r in zip(channels, [4, 8, 16, 32], strict=True)
    ]


def randomise_batch_norms(module: torch.nn.Module) -> None:
    """Non-trivial running statistics so that eval-mode BatchNorm is not an identity."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


def reference_head(num_labels: int) -> UperNetHead:
    config = UperNetConfig(hidden_size=HIDDEN, pool_scales=POOL_SCALES, num_labels=num_labels)
    return UperNetHead(config, in_channels=IN_CHANNELS).eval()


def test_seg_head_equals_transformers_head() -> None:
    torch.manual_seed(0)
    ours = UperNetSegHead(IN_CHANNELS, num_classes=5, hidden_size=HIDDEN, pool_scales=POOL_SCALES).eval()
    randomise_batch_norms(ours)
    reference = reference_head(num_labels=5)
    reference.load_state_dict(ours.head.state_dict())
    feats = pyramid(2, 64, 96)
    with torch.no_grad():
        logits = ours(feats)
        expected = reference(feats)
    assert logits.shape == (2, 5, 16, 24)
    torch.testing.assert_close(logits, expected)
    full = UperNetSegHead.upsample(logits, (64, 96))
    assert full.shape == (2, 5, 64, 96)
    torch.testing.assert_close(full, F.interpolate(expected, size=(64, 96), mode="bilinear", align_corners=False))


def test_fusion_map_equals_transformers_fpn_path() -> None:
    torch.manual_seed(1)
    fusion = UperNetFusion(IN_CHANNELS, hidden_size=HIDDEN, pool_scales=POOL_SCALES, out_channels=12).eval()
    randomise_batch_norms(fusion)
    # the reference's classifier is made an identity, so its output is the pre-classifier FPN map
    reference = reference_head(num_labels=HIDDEN)
    state = {k: v for k, v in fusion.head.state_dict().items()}
    state["classifier.weight"] = torch.eye(HIDDEN).reshape(HIDDEN, HIDDEN, 1, 1)
    state["classifier.bias"] = torch.zeros(HIDDEN)
    reference.load_state_dict(state)
    feats = pyramid(2, 128, 64)
    with torch.no_grad():
        out = fusion(feats)
        fpn = reference(feats)
        # independently: PSP on the top level equals the reference's psp_forward
        torch.testing.assert_close(fusion.head.psp_forward(feats), reference.psp_forward(feats))
        expected = F.conv2d(
            F.interpolate(fpn, size=(8, 4), mode="bilinear", align_corners=False),
            fusion.proj.weight,
            fusion.proj.bias,
        )
    assert isinstance(out, FusedFeatures)
    torch.testing.assert_close(fusion.fpn_map(feats), fpn)
    torch.testing.assert_close(out.map, expected)
    assert out.map.shape == (2, 12, 8, 4)
    assert out.tokens.shape == (2, 32, 12)
    # tokens are the map flattened row-major
    torch.testing.assert_close(out.tokens[:, 5], out.map[:, :, 1, 1])


@pytest.mark.parametrize(("height", "width", "target"), [(64, 64, 16), (96, 32, 16), (128, 64, 8), (100, 68, 16)])
def test_fusion_shapes(height: int, width: int, target: int) -> None:
    torch.manual_seed(2)
    fusion = UperNetFusion(
        IN_CHANNELS, hidden_size=HIDDEN, pool_scales=POOL_SCALES, out_channels=20, target_reduction=target
    )
    out = fusion(pyramid(2, height, width))
    h, w = (-(-height // 4)) * 4 // target, (-(-width // 4)) * 4 // target
    assert out.map.shape == (2, 20, h, w)
    assert out.tokens.shape == (2, h * w, 20)
    assert (fusion.in_channels, fusion.out_channels, fusion.out_reduction) == (IN_CHANNELS, 20, target)
    out.map.sum().backward()
    assert fusion.head.lateral_convs[0].conv.weight.grad is not None


def test_wrong_channels_raise_contract_error() -> None:
    fusion = UperNetFusion(IN_CHANNELS, hidden_size=HIDDEN, pool_scales=POOL_SCALES, out_channels=8)
    head = UperNetSegHead(IN_CHANNELS, num_classes=3, hidden_size=HIDDEN, pool_scales=POOL_SCALES)
    wrong = pyramid(2, 64, 64, channels=[8, 16, 24, 40])
    with pytest.raises(ContractError, match="UperNetFusion"):
        fusion(wrong)
    with pytest.raises(ContractError, match="UperNetSegHead"):
        head(wrong)
    with pytest.raises(ContractError):
        fusion(pyramid(2, 64, 64)[:3])
    with pytest.raises(ValueError, match="in_reductions"):
        UperNetFusion(IN_CHANNELS, in_reductions=[4, 8, 16])
