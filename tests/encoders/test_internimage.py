"""InternImage encoder: DCNv3 core against independent references, shapes, official key names,
parameter count and checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save_file
from scipy.ndimage import map_coordinates

from rsvlm.contracts import ContractError
from rsvlm.encoders.dcnv3 import DCNv3, dcnv3_core
from rsvlm.encoders.internimage import InternImageEncoder


def unfold_aggregation(value: torch.Tensor, weights: torch.Tensor, group: int, dilation: int, pad: int) -> torch.Tensor:
    """Reference for zero offsets: weighted sum over the (dilated) 3×3 window via F.unfold.

    ``value`` N×H×W×C; ``weights`` N×H×W×(G·9) in the official **x-major** point order
    (point p = i_x·3 + i_y). Returns N×H×W×C.
    """
    n, h, w, c = value.shape
    cols = F.unfold(rearrange(value, "n h w c -> n c h w"), kernel_size=3, dilation=dilation, padding=pad)
    # unfold orders the window row-major: index i_y·3 + i_x
    cols = rearrange(cols, "n (g c iy ix) (h w) -> n h w g c iy ix", g=group, iy=3, ix=3, h=h)
    wts = rearrange(weights, "n h w (g ix iy) -> n h w g 1 iy ix", g=group, ix=3, iy=3)
    return rearrange((cols * wts).sum((-1, -2)), "n h w g c -> n h w (g c)")


@pytest.mark.parametrize("offset_scale", [1.0, 2.0])
def test_dcnv3_zero_offsets_is_window_aggregation(offset_scale: float) -> None:
    torch.manual_seed(0)
    n, h, w, group, gc = 2, 6, 5, 2, 3
    value = torch.randn(n, h, w, group * gc)
    weights = torch.rand(n, h, w, group * 9)  # deliberately not uniform: pins the point order
    offset = torch.zeros(n, h, w, group * 9 * 2)
    out = dcnv3_core(value, offset, weights, 3, 1, 1, 1, group, offset_scale)
    # offset_scale stretches the regular grid: a dilation-s window centred on the pixel
    d = int(offset_scale)
    expected = unfold_aggregation(value, weights, group, dilation=d, pad=d)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_dcnv3_uniform_weights_equal_box_filter() -> None:
    torch.manual_seed(1)
    value = torch.randn(1, 5, 7, 4)
    out = dcnv3_core(value, torch.zeros(1, 5, 7, 18), torch.full((1, 5, 7, 9), 1 / 9), 3, 1, 1, 1, 1, 1.0)
    box = F.avg_pool2d(rearrange(value, "n h w c -> n c h w"), 3, stride=1, padding=1, count_include_pad=True)
    torch.testing.assert_close(out, rearrange(box, "n c h w -> n h w c"), rtol=1e-5, atol=1e-6)


def test_dcnv3_fractional_offset_hand_computed() -> None:
    # one channel, a 1×1 kernel (one sampling point) moved by (dx, dy) = (0.25, 0.5)
    image = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    value = image.reshape(1, 3, 3, 1)
    offset = torch.tensor([0.25, 0.5]).repeat(1, 3, 3, 1)
    out = dcnv3_core(value, offset, torch.ones(1, 3, 3, 1), 1, 1, 0, 1, 1, 1.0)[0, ..., 0]
    # centre pixel (1, 1) samples (y, x) = (1.5, 1.25): bilinear between 5, 6, 8, 9
    assert out[1, 1].item() == pytest.approx(0.75 * 0.5 * 5 + 0.25 * 0.5 * 6 + 0.75 * 0.5 * 8 + 0.25 * 0.5 * 9)
    # bottom-right pixel samples (2.5, 2.25): only 9 is inside, the rest is zero padding
    assert out[2, 2].item() == pytest.approx(0.75 * 0.5 * 9)


def test_dcnv3_random_offsets_match_scipy_bilinear() -> None:
    torch.manual_seed(2)
    n, h, w, group, gc, s = 1, 5, 6, 2, 2, 2.0
    value = torch.randn(n, h, w, group * gc, dtype=torch.float64)
    offset = torch.randn(n, h, w, group * 9 * 2, dtype=torch.float64) * 1.5
    mask = torch.rand(n, h, w, group * 9, dtype=torch.float64)
    out = dcnv3_core(value, offset, mask, 3, 1, 1, 1, group, s)

    # documented semantics: point p = i_x·3 + i_y sits at x = j + (i_x − 1 + Δx)·s, y = i + (i_y − 1 + Δy)·s
    v, off, m = value.numpy(), offset.numpy().reshape(n, h, w, group, 9, 2), mask.numpy().reshape(n, h, w, group, 9)
    expected = np.zeros_like(v)
    for g in range(group):
        for ch in range(gc):
            plane = v[0, :, :, g * gc + ch]
            for p in range(9):
                ix, iy = divmod(p, 3)
                ys = np.arange(h)[:, None] + (iy - 1 + off[0, :, :, g, p, 1]) * s
                xs = np.arange(w)[None, :] + (ix - 1 + off[0, :, :, g, p, 0]) * s
                sampled = map_coordinates(plane, [ys, xs], order=1, mode="grid-constant", cval=0.0)
                expected[0, :, :, g * gc + ch] += m[0, :, :, g, p] * sampled
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_dcnv3_low_precision_samples_in_float32() -> None:
    torch.manual_seed(8)
    value = torch.randn(1, 4, 140, 2)
    offset = torch.full((1, 4, 140, 18), 0.3)
    mask = torch.rand(1, 4, 140, 9)
    exact = dcnv3_core(value, offset, mask, 3, 1, 1, 1, 1, 1.0)
    low = dcnv3_core(value.bfloat16(), offset.bfloat16(), mask.bfloat16(), 3, 1, 1, 1, 1, 1.0)
    assert low.dtype == torch.bfloat16
    # inputs rounded to bf16, positions kept exact: the error is that of bf16 inputs, not of
    # bf16 coordinates (0.25 px at x≈130)
    reference = dcnv3_core(
        value.bfloat16().float(), offset.bfloat16().float(), mask.bfloat16().float(), 3, 1, 1, 1, 1, 1.0
    )
    torch.testing.assert_close(low.float(), reference, rtol=1e-2, atol=1e-2)
    assert (low.float() - exact).abs().max() < 0.1


def test_dcnv3_module_gradients_reach_offsets() -> None:
    torch.manual_seed(3)
    dcn = DCNv3(channels=8, group=2, offset_scale=2.0)
    torch.nn.init.normal_(dcn.offset.weight, std=0.1)
    out = dcn(torch.randn(2, 5, 5, 8))
    assert out.shape == (2, 5, 5, 8)
    out.square().sum().backward()
    assert dcn.offset.weight.grad.abs().sum() > 0
    assert dcn.mask.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("height", "width", "bands"), [(64, 64, 3), (64, 96, 5), (40, 56, 1)])
def test_tiny_encoder_shapes(height: int, width: int, bands: int) -> None:
    torch.manual_seed(4)
    encoder = InternImageEncoder("tiny-test", in_bands=bands, rgb_bands=[0, 1, 2] if bands >= 3 else None)
    maps = encoder(torch.randn(2, bands, height, width))
    assert encoder.channels == [16, 32, 64, 128]
    assert encoder.reductions == [4, 8, 16, 32]
    for feature, d, r in zip(maps, encoder.channels, encoder.reductions, strict=True):
        assert feature.shape == (2, d, -(-height // r), -(-width // r))
    sum(m.mean() for m in maps).backward()
    assert encoder.patch_embed.conv1.weight.grad is not None


def test_huge_code_path_runs_at_toy_width() -> None:
    torch.manual_seed(5)
    encoder = InternImageEncoder("h", channels=16, depths=[1, 1, 6, 1], groups=[2, 4, 8, 16])
    keys = encoder.state_dict().keys()
    assert {
        "levels.2.post_norms.0.0.weight",
        "levels.0.blocks.0.res_post_norm1.0.weight",
        "levels.0.blocks.0.dcn.center_feature_scale_proj_weight",
        "levels.0.norm.0.weight",
    } <= set(keys)
    assert encoder.levels[0].blocks[0].dcn.dw_conv[0].kernel_size == (5, 5)
    maps = encoder(torch.randn(2, 3, 64, 64))
    assert [m.shape[1:] for m in maps] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]


def test_large_variant_official_keys_and_size() -> None:
    with torch.device("meta"):
        encoder = InternImageEncoder("l")
    state = encoder.state_dict()
    # names as in the official classification/models/intern_image.py checkpoints
    official = {
        "patch_embed.conv1.weight": (80, 3, 3, 3),
        "patch_embed.norm1.1.weight": (80,),
        "patch_embed.conv2.weight": (160, 80, 3, 3),
        "patch_embed.norm2.1.bias": (160,),
        "levels.0.blocks.0.norm1.0.weight": (160,),
        "levels.0.blocks.0.dcn.dw_conv.0.weight": (160, 1, 3, 3),
        "levels.0.blocks.0.dcn.dw_conv.1.1.weight": (160,),
        "levels.0.blocks.0.dcn.offset.weight": (10 * 9 * 2, 160),
        "levels.0.blocks.0.dcn.mask.weight": (10 * 9, 160),
        "levels.0.blocks.0.dcn.input_proj.weight": (160, 160),
        "levels.0.blocks.0.dcn.output_proj.bias": (160,),
        "levels.0.blocks.0.mlp.fc1.weight": (640, 160),
        "levels.0.blocks.0.gamma1": (160,),
        "levels.0.downsample.conv.weight": (320, 160, 3, 3),
        "levels.0.downsample.norm.1.weight": (320,),
        "levels.2.blocks.21.dcn.offset.weight": (40 * 9 * 2, 640),
        "levels.2.blocks.21.gamma2": (640,),
        "levels.3.blocks.4.mlp.fc2.weight": (1280, 5120),
    }
    for key, shape in official.items():
        assert tuple(state[key].shape) == shape, key
    # post-norm L has no level norms; the last level does not downsample; no classifier
    assert not any(k.startswith(("levels.0.norm", "levels.3.downsample", "conv_head", "head")) for k in state)
    assert len([k for k in state if k.endswith("dcn.offset.weight")]) == 5 + 5 + 22 + 5

    # the official 223 M counts the ImageNet-1k head: conv_head (1×1 conv 1280→1920, BN) + fc 1920→1000
    backbone = sum(p.numel() for p in encoder.parameters())
    head = 1280 * 1920 + 2 * 1920 + 1920 * 1000 + 1000
    assert abs(backbone + head - 223e6) / 223e6 < 0.005
    assert encoder.channels == [160, 320, 640, 1280]


def _with_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official-looking classification state dict: backbone + head keys."""
    return {**state, "conv_head.0.weight": torch.randn(4, 128, 1, 1), "head.weight": torch.randn(10, 4)}


@pytest.mark.parametrize("layout", ["classification", "mmseg", "bare", "dataparallel", "safetensors"])
def test_checkpoint_round_trip(tmp_path: Path, layout: str) -> None:
    torch.manual_seed(6)
    source = InternImageEncoder("tiny-test").eval()
    for p in source.parameters():  # make every tensor distinctive, offsets included
        p.data.normal_(0, 0.05)
    state = source.state_dict()
    wrapped = {
        "classification": {"model": _with_head(state)},
        "mmseg": {
            "state_dict": {
                **{f"backbone.{k}": v for k, v in state.items()},
                "decode_head.conv_seg.weight": torch.randn(3, 4, 1, 1),
            }
        },
        "bare": state,
        "dataparallel": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "safetensors": state,
    }[layout]
    if layout == "safetensors":
        path = tmp_path / "ckpt.safetensors"
        save_file({k: v.contiguous() for k, v in wrapped.items()}, str(path))
    else:
        path = tmp_path / "ckpt.pth"
        torch.save(wrapped, path)
    loaded = InternImageEncoder("tiny-test", checkpoint_path=str(path)).eval()
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source(image), loaded(image), strict=True):
            torch.testing.assert_close(a, b)


def test_rgb_checkpoint_into_four_bands_keeps_rgb_filters(tmp_path: Path) -> None:
    torch.manual_seed(7)
    rgb = InternImageEncoder("tiny-test")
    path = tmp_path / "rgb.pth"
    torch.save({"model": rgb.state_dict()}, path)
    four = InternImageEncoder("tiny-test", in_bands=4, checkpoint_path=str(path), rgb_bands=[2, 1, 0])
    source, adapted = rgb.patch_embed.conv1.weight, four.patch_embed.conv1.weight
    assert adapted.shape == (8, 4, 3, 3)
    assert torch.equal(adapted[:, 2], source[:, 0])  # R
    assert torch.equal(adapted[:, 1], source[:, 1])  # G
    assert torch.equal(adapted[:, 0], source[:, 2])  # B
    torch.testing.assert_close(adapted[:, 3], source.mean(dim=1))
    assert four(torch.randn(1, 4, 32, 32))[0].shape == (1, 16, 8, 8)


def test_mismatched_checkpoint_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(InternImageEncoder("tiny-test", channels=24, groups=[2, 4, 8, 16]).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatches .*patch_embed"):
        InternImageEncoder("tiny-test", checkpoint_path=str(path))
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        InternImageEncoder("tiny-test", checkpoint_path=str(tmp_path / "missing.pth"))


def test_freeze_and_band_check() -> None:
    encoder = InternImageEncoder("tiny-test", freeze=True, drop_path_rate=0.5)
    encoder.train()
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(ContractError, match="in_bands=3"):
        encoder(torch.randn(1, 4, 32, 32))


def test_rgb_bands_validated() -> None:
    with pytest.raises(ValueError, match="rgb_bands"):
        InternImageEncoder("tiny-test", in_bands=2)
    with pytest.raises(ValueError, match="rgb_bands"):
        InternImageEncoder("tiny-test", in_bands=4, rgb_bands=[0, 1, 1])
