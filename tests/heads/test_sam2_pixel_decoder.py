"""SAM 2 from transformers: the frozen Hiera encoder and GeoMag's multi-level pixel decoder (Eq. 1),
checked against transformers' own Sam2Model on a tiny random SAM 2 saved to a folder and loaded
back through the same path as an official checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Sam2Model"):
    pytest.skip("transformers < 4.56 has no Sam2Model", allow_module_level=True)

from conftest import tiny_sam2_config
from transformers import Sam2Config, Sam2Model

from rsvlm.encoders.sam2_hiera import IMAGENET_MEAN, IMAGENET_STD, Sam2HieraEncoder
from rsvlm.heads.sam2_pixel_decoder import Sam2PixelDecoder

TINY_SAM2 = tiny_sam2_config(image_size=128, width=32)


@pytest.fixture(scope="module")
def sam2_folder(tmp_path_factory):
    """A random tiny Sam2Model (non-zero no_memory_embedding) saved with save_pretrained."""
    torch.manual_seed(0)
    model = Sam2Model(Sam2Config(**TINY_SAM2))
    with torch.no_grad():
        model.no_memory_embedding.normal_()
    folder = tmp_path_factory.mktemp("sam2")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(sam2_folder):
    return Sam2Model.from_pretrained(sam2_folder).eval()


def _pixel_values(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image - mean) / std


def test_encoder_loads_the_checkpoints_vision_encoder_and_returns_its_fpn_maps(sam2_folder, reference):
    encoder = Sam2HieraEncoder(model=str(sam2_folder), image_size=128, local_files_only=True)
    assert encoder.channels == [32, 32, 32] and encoder.reductions == [4, 8, 16]
    assert encoder.vision.weights_source == str(sam2_folder)
    for key, value in reference.vision_encoder.state_dict().items():
        assert torch.equal(encoder.vision.state_dict()[key], value), key
    image = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        maps = encoder(image)
        expected = reference.vision_encoder(pixel_values=_pixel_values(image)).fpn_hidden_states
    assert [tuple(m.shape) for m in maps] == [(2, 32, 32, 32), (2, 32, 16, 16), (2, 32, 8, 8)]
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want)
    encoder.train()
    assert not encoder.vision.training and not any(p.requires_grad for p in encoder.parameters())


def test_encoder_picks_rgb_bands_and_resizes_to_its_input(sam2_folder, reference):
    encoder = Sam2HieraEncoder(model=str(sam2_folder), image_size=128, in_bands=4, rgb_bands=[2, 1, 0])
    image = torch.rand(1, 4, 96, 80)
    rgb = F.interpolate(image[:, [2, 1, 0]], size=(128, 128), mode="bilinear", align_corners=False)
    torch.testing.assert_close(encoder.preprocess(image), _pixel_values(rgb))


def test_encoder_errors_name_the_field():
    with pytest.raises(ValueError, match="exactly one of `model`"):
        Sam2HieraEncoder()
    with pytest.raises(ValueError, match="image_size=256.*need image_size 128"):
        Sam2HieraEncoder(config=TINY_SAM2, image_size=256)
    with pytest.raises(OSError, match="could not load a Sam2Model"):
        Sam2HieraEncoder(model="/nonexistent/sam2", local_files_only=True)


def test_native_level_alone_is_sam2s_own_image_path(sam2_folder, reference):
    """levels=[2], ω=1: the masks of Sam2Model given the same sparse prompt embeddings."""
    encoder = Sam2HieraEncoder(model=str(sam2_folder), image_size=128)
    decoder = Sam2PixelDecoder(checkpoint=str(sam2_folder), levels=[2], omega="fixed", omega_init=[1.0]).eval()
    image = torch.rand(2, 3, 128, 128)
    points = torch.tensor([[[[30.0, 40.0], [90.0, 70.0]]], [[[64.0, 10.0], [5.0, 120.0]]]])
    labels = torch.ones(2, 1, 2, dtype=torch.int)
    with torch.no_grad():
        want = reference(
            pixel_values=_pixel_values(image), input_points=points, input_labels=labels, multimask_output=False
        )
        sparse, _ = reference.prompt_encoder(
            input_points=points, input_labels=labels, input_boxes=None, input_masks=None
        )
        got = decoder(encoder(image), sparse[:, 0], (32, 32))
    assert got.shape == (2, 1, 32, 32)
    torch.testing.assert_close(got, want.pred_masks[:, 0, :1], rtol=1e-5, atol=1e-5)


def test_levels_are_summed_with_omega_as_eq_1(sam2_folder):
    encoder = Sam2HieraEncoder(model=str(sam2_folder), image_size=128)
    weights = [0.2, 0.3, 0.5]
    combined = Sam2PixelDecoder(checkpoint=str(sam2_folder), omega="fixed", omega_init=weights).eval()
    singles = [
        Sam2PixelDecoder(checkpoint=str(sam2_folder), levels=[level], omega="fixed", omega_init=[1.0]).eval()
        for level in range(3)
    ]
    prompts = torch.randn(2, 3, 32)
    with torch.no_grad():
        maps = encoder(torch.rand(2, 3, 128, 128))
        got = combined(maps, prompts, (100, 90))
        want = sum(w * single(maps, prompts, (100, 90)) for w, single in zip(weights, singles))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_what_trains_and_omega_forms(sam2_folder):
    decoder = Sam2PixelDecoder(checkpoint=str(sam2_folder))
    assert decoder.prompt_dim == 32 and decoder.in_channels == [32, 32, 32]
    torch.testing.assert_close(decoder.weights(), torch.full((3,), 1 / 3))
    maps = [torch.randn(1, 32, s, s) for s in (32, 16, 8)]
    decoder(maps, torch.randn(1, 2, 32), (64, 64)).sum().backward()
    assert decoder.omega.grad is not None and decoder.mask_decoder.conv_s0.weight.grad is not None
    assert decoder.mask_decoder.upscale_conv1.weight.grad is not None
    frozen = [
        decoder.prompt_encoder,
        decoder.mask_decoder.iou_prediction_head,
        decoder.mask_decoder.pred_obj_score_head,
    ]
    assert not any(p.requires_grad for part in frozen for p in part.parameters())
    assert not decoder.no_memory_embedding.requires_grad
    softmax = Sam2PixelDecoder(config=TINY_SAM2, omega="learned_softmax", omega_init=[0.5, 0.25, 0.25])
    torch.testing.assert_close(softmax.weights(), torch.tensor([0.5, 0.25, 0.25]))
    with pytest.raises(ValueError, match="levels"):
        Sam2PixelDecoder(config=TINY_SAM2, levels=[3])
    with pytest.raises(ValueError, match="omega_init needs 2"):
        Sam2PixelDecoder(config=TINY_SAM2, levels=[1, 2], omega_init=[1.0])


def test_a_vision_language_model_with_the_sam2_mask_encoder_and_pixel_decoder(sam2_folder):
    from conftest import contract_batch, tiny_spex_components

    from rsvlm.bridges.tcp import TokenCompressionProjector
    from rsvlm.models.vlm import VisionLanguageModel

    parts = tiny_spex_components(bands=4)
    parts["bridge"] = TokenCompressionProjector(in_dim=32, out_dim=32, num_tokens=2)
    parts["decoder"] = Sam2PixelDecoder(checkpoint=str(sam2_folder))
    mask_encoder = Sam2HieraEncoder(model=str(sam2_folder), image_size=128, in_bands=4, rgb_bands=[2, 1, 0])
    model = VisionLanguageModel(**parts, mask_encoder=mask_encoder, stage="joint")
    batch = contract_batch(model.llm.formatter, bands=4, size=64)
    out = model(batch)
    assert out["mask_logits"].shape == (2, 1, 64, 64)
    model.losses(out, batch, with_mask=True)["total"].backward()
    assert parts["decoder"].omega.grad is not None
    assert all(p.grad is None for p in mask_encoder.parameters())


def test_several_targets_are_decoded_against_their_own_image(sam2_folder):
    decoder = Sam2PixelDecoder(checkpoint=str(sam2_folder)).eval()
    maps = [torch.randn(2, 32, s, s) for s in (32, 16, 8)]
    tokens, image_index = torch.randn(3, 1, 32), torch.tensor([0, 0, 1])
    with torch.no_grad():
        got = decoder.decode_targets(maps, tokens, image_index, (40, 40))
        want = [decoder([m[b : b + 1] for m in maps], tokens[t : t + 1], (40, 40)) for t, b in enumerate([0, 0, 1])]
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-5, atol=1e-5)
