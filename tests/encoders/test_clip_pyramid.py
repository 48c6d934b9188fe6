"""CLIP pyramid encoder: loading through a saved folder, hidden states against the direct
``CLIPVisionModel``, pyramid shapes/strides, band adaptation, freezing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from rsvlm.contracts import ContractError
from rsvlm.encoders.clip_pyramid import ClipPyramidEncoder, default_layers

TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=64, patch_size=16
)


@pytest.fixture(scope="module")
def saved_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CLIPVisionModel]:
    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY)).eval()
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    return folder, model


def test_default_layers() -> None:
    assert default_layers(12) == [3, 6, 9, 12]
    assert default_layers(24) == [6, 12, 18, 24]
    assert default_layers(4) == [1, 2, 3, 4]


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 64), (128, 160)])
def test_grids_equal_direct_hidden_states(saved_clip: tuple[Path, CLIPVisionModel], height: int, width: int) -> None:
    folder, direct = saved_clip
    encoder = ClipPyramidEncoder(model=str(folder), layers=[1, 2, 4, 4], local_files_only=True)
    image = torch.randn(2, 3, height, width)
    with torch.no_grad():
        grids = encoder.forward_grids(image)
        hidden = direct(pixel_values=image, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
    gh, gw = height // 16, width // 16
    for grid, layer in zip(grids, [1, 2, 4, 4], strict=True):
        expected = hidden[layer][:, 1:].reshape(2, gh, gw, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(grid, expected)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (96, 128), (48, 80)])
def test_pyramid_shapes_and_strides(height: int, width: int) -> None:
    torch.manual_seed(1)
    encoder = ClipPyramidEncoder(config=TINY, out_channels=24, freeze=False)
    maps = encoder(torch.randn(2, 3, height, width))
    assert encoder.channels == [24] * 4 and encoder.reductions == [4, 8, 16, 32]
    for feature, r in zip(maps, encoder.reductions, strict=True):
        assert feature.shape == (2, 24, height // r, width // r)


def test_patch14_is_resized_to_exact_strides() -> None:
    torch.manual_seed(2)
    encoder = ClipPyramidEncoder(config={**TINY, "patch_size": 14, "image_size": 56}, out_channels=8)
    maps = encoder(torch.randn(1, 3, 112, 112))
    assert [tuple(m.shape[-2:]) for m in maps] == [(28, 28), (14, 14), (7, 7), (3, 3)]


def test_four_bands_keep_rgb_filters(saved_clip: tuple[Path, CLIPVisionModel]) -> None:
    folder, direct = saved_clip
    encoder = ClipPyramidEncoder(model=str(folder), in_bands=4, rgb_bands=[2, 1, 0], local_files_only=True)
    rgb = direct.get_input_embeddings().weight
    adapted = encoder.vit.get_input_embeddings().weight
    assert adapted.shape == (32, 4, 16, 16)
    assert torch.equal(adapted[:, 2], rgb[:, 0])
    assert torch.equal(adapted[:, 1], rgb[:, 1])
    assert torch.equal(adapted[:, 0], rgb[:, 2])
    torch.testing.assert_close(adapted[:, 3], rgb.mean(dim=1))
    maps = encoder(torch.randn(1, 4, 64, 64))
    assert maps[0].shape == (1, 256, 16, 16)
    with pytest.raises(ContractError, match="in_bands=4"):
        encoder(torch.randn(1, 3, 64, 64))


def test_freeze_trains_only_resampling() -> None:
    torch.manual_seed(3)
    encoder = ClipPyramidEncoder(config=TINY, out_channels=8)
    encoder.train()
    assert not encoder.vit.training
    sum(m.sum() for m in encoder(torch.randn(2, 3, 64, 64))).backward()
    assert all(p.grad is None for p in encoder.vit.parameters())
    assert all(p.grad is not None for p in encoder.proj.parameters())
    assert encoder.resample[0][0].weight.grad is not None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ClipPyramidEncoder()
    with pytest.raises(ValueError, match="layers"):
        ClipPyramidEncoder(config=TINY, layers=[1, 2, 5, 4])


def test_native_size_equals_transformers_without_interpolation(saved_clip: tuple[Path, CLIPVisionModel]) -> None:
    """At the pretraining size the grids are transformers' own hidden states, position
    embeddings untouched (interpolation off in the reference)."""
    folder, direct = saved_clip
    encoder = ClipPyramidEncoder(model=str(folder), local_files_only=True)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        grids = encoder.forward_grids(image)
        hidden = direct(pixel_values=image, output_hidden_states=True).hidden_states
    for grid, layer in zip(grids, encoder.layers, strict=True):
        torch.testing.assert_close(grid, hidden[layer][:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2))


def test_patch14_at_512_runs_on_the_nearest_patch_multiple() -> None:
    """ViT-L/14 at 512 px (Table VIII's cell): 512 is no multiple of 14; the image is resized
    to 518 = 37·14, the position embeddings are interpolated to the 37×37 grid, and the
    pyramid keeps the strides of the 512-px image."""
    torch.manual_seed(4)
    config = {**TINY, "patch_size": 14, "image_size": 224}
    encoder = ClipPyramidEncoder(config=config, in_bands=4, rgb_bands=[2, 1, 0], out_channels=8).eval()
    image = torch.randn(1, 4, 512, 512)
    with torch.no_grad():
        grids = encoder.forward_grids(image)
        maps = encoder(image)
        resized = torch.nn.functional.interpolate(image, size=(518, 518), mode="bilinear", align_corners=False)
        hidden = encoder.vit(pixel_values=resized, output_hidden_states=True, interpolate_pos_encoding=True)
    assert [tuple(m.shape[-2:]) for m in maps] == [(128, 128), (64, 64), (32, 32), (16, 16)]
    for grid, layer in zip(grids, encoder.layers, strict=True):
        expected = hidden.hidden_states[layer][:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
        torch.testing.assert_close(grid, expected)
    with pytest.raises(ValueError, match="image size"):  # the reference refuses 512 without interpolation
        encoder.vit(pixel_values=image)
