"""SamViTEncoder against segment_anything's own Sam: a tiny random SAM saved as an official-style
checkpoint, loaded, and compared with ``sam.image_encoder(sam.preprocess(x))``."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

from rsvlm.contracts import ContractError
from rsvlm.encoders.sam_vit import SAM_PIXEL_MEAN, SAM_PIXEL_STD, SamViTEncoder, build_image_encoder
from rsvlm.heads.sam_decoder import SamMaskDecoderHead
from rsvlm.io.state_dicts import StateDictError

SIZE = 64  # tiny S: a 4×4 embedding
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1]}
tiny_encoder = partial(SamViTEncoder, variant="vit_b", image_size=SIZE, **TINY)


def tiny_sam() -> Sam:
    """A random SAM whose image encoder is the tiny one, built as ``build_sam`` builds the rest."""
    return Sam(
        image_encoder=build_image_encoder(image_size=SIZE, **TINY),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(SIZE // 16, SIZE // 16),
            input_image_size=(SIZE, SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=64, num_heads=8),
            transformer_dim=256,
        ),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    ).eval()


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory) -> tuple[Sam, str]:
    torch.manual_seed(0)
    sam = tiny_sam()
    with torch.no_grad():  # SAM zero-initialises the relative positions: make them matter
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    return sam, str(path)


def test_loaded_encoder_equals_segment_anything_on_the_same_rgb(sam_file) -> None:
    sam, path = sam_file
    encoder = tiny_encoder(checkpoint=path, input_scale=1.0)  # the input is already 0–255 RGB
    x = torch.rand(2, 3, SIZE, SIZE) * 255
    with torch.no_grad():
        out, ref = encoder(x), sam.image_encoder(sam.preprocess(x))
    assert out.shape == (2, 256, SIZE // 16, SIZE // 16)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_non_square_input_is_resized_longest_side_and_padded_as_sam(sam_file) -> None:
    sam, path = sam_file
    encoder = tiny_encoder(checkpoint=path, input_scale=1.0)
    x = torch.rand(1, 3, 40, 24) * 255
    # ResizeLongestSide.apply_image_torch reads the size from dims 0, 1 (a B×C×H×W bug): resize as it means to
    resized = F.interpolate(
        x, ResizeLongestSide.get_preprocess_shape(40, 24, SIZE), mode="bilinear", align_corners=False, antialias=True
    )
    assert resized.shape[-2:] == (64, 38)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), sam.image_encoder(sam.preprocess(resized)), atol=1e-5, rtol=1e-5)
    square = tiny_encoder(checkpoint=path, input_scale=1.0, resize="square")
    stretched = F.interpolate(x, (SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(square(x), sam.image_encoder(sam.preprocess(stretched)), atol=1e-5, rtol=1e-5)


def test_normalised_bands_are_denormalised_to_sam_pixels(sam_file) -> None:
    """Bands (nir, b, g, r) normalised with the dataset's statistics, reflectances in [0, 1]."""
    sam, path = sam_file
    mean, std = [0.3, 0.05, 0.07, 0.09], [0.1, 0.02, 0.03, 0.04]
    encoder = tiny_encoder(
        checkpoint=path, in_bands=4, rgb_bands=[3, 2, 1], band_mean=mean, band_std=std, input_scale=255.0
    )
    reflectance = torch.rand(2, 4, SIZE, SIZE)
    batch = (reflectance - torch.tensor(mean).view(1, 4, 1, 1)) / torch.tensor(std).view(1, 4, 1, 1)
    with torch.no_grad():
        ref = sam.image_encoder(sam.preprocess(reflectance[:, [3, 2, 1]] * 255))
        torch.testing.assert_close(encoder(batch), ref, atol=1e-5, rtol=1e-5)


def test_frozen_in_eval_mode_and_passes_gradients_to_the_image(sam_file) -> None:
    _, path = sam_file
    encoder = tiny_encoder(checkpoint=path).train()
    assert not encoder.image_encoder.training and not any(m.training for m in encoder.image_encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    image = torch.rand(1, 3, 48, 48, requires_grad=True)
    encoder(image).square().mean().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()
    assert all(p.grad is None for p in encoder.parameters())
    trainable = tiny_encoder(freeze=False).train()
    assert trainable.image_encoder.training and all(p.requires_grad for p in trainable.parameters())


def test_feeds_the_sam_mask_decoder_head(sam_file) -> None:
    """Its ``out_channels`` is the head's ``in_channels`` (the VLM's mask_encoder → decoder link)."""
    _, path = sam_file
    encoder = tiny_encoder(checkpoint=path)
    head = SamMaskDecoderHead(in_channels=encoder.out_channels, decoder_mlp_dim=64)
    masks = head(encoder(torch.rand(2, 3, SIZE, SIZE)), torch.randn(2, 1, 256), (SIZE, SIZE))
    assert masks.shape == (2, 1, SIZE, SIZE)
    assert (encoder.out_channels, encoder.reduction, encoder.in_bands) == (256, 16, 3)


def test_state_dict_holds_only_sams_weights(sam_file) -> None:
    sam, path = sam_file
    encoder = tiny_encoder(checkpoint=path)
    assert set(encoder.state_dict()) == {k for k in sam.state_dict() if k.startswith("image_encoder.")}
    assert encoder.image_encoder.weights_source == path


def test_wrong_checkpoint_is_one_line_naming_file_and_variant(sam_file, tmp_path) -> None:
    _, path = sam_file
    with pytest.raises(StateDictError) as err:
        SamViTEncoder(variant="vit_b", image_size=SIZE, depth=2, global_attn_indexes=[1], checkpoint=path)
    msg = str(err.value)
    assert "\n" not in msg and "SamViTEncoder.checkpoint" in msg and path in msg and "variant='vit_b'" in msg
    assert "shape mismatches" in msg and "the file has embed_dim=32" in msg
    with pytest.raises(StateDictError, match=r"14 missing keys.*blocks\.2\."):
        tiny_encoder(checkpoint=path, depth=3)
    decoder_only = tmp_path / "decoder.pth"
    torch.save({"mask_decoder.iou_token.weight": torch.zeros(4, 256)}, decoder_only)
    with pytest.raises(StateDictError, match=r"missing keys") as err:
        tiny_encoder(checkpoint=str(decoder_only))
    assert "\n" not in str(err.value)


def test_missing_checkpoint_names_file_and_download(tmp_path) -> None:
    path = tmp_path / "sam_vit_h_4b8939.pth"
    with pytest.raises(FileNotFoundError) as err:
        SamViTEncoder(variant="vit_h", image_size=SIZE, **TINY, checkpoint=str(path))
    msg = str(err.value)
    assert str(path) in msg and "segment-anything" in msg and "sam_vit_h_4b8939.pth" in msg


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_variants_have_build_sams_keys_and_shapes(variant: str) -> None:
    with torch.device("meta"):
        ours = SamViTEncoder(variant=variant).image_encoder.state_dict()
        theirs = sam_model_registry[variant]().image_encoder.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"variant": "vit_x"}, "SamViTEncoder.variant"),
        ({"image_size": 60}, "SamViTEncoder.image_size"),
        ({"in_bands": 2, "rgb_bands": [0, 1, 2]}, "SamViTEncoder.rgb_bands"),
        ({"band_mean": [0.0] * 3}, "band_std"),
        ({"band_mean": [0.0] * 2, "band_std": [1.0] * 2}, "SamViTEncoder.band_mean"),
        ({"resize": "crop"}, "SamViTEncoder.resize"),
    ],
)
def test_bad_arguments_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        tiny_encoder(**kwargs)


def test_wrong_band_count_and_grey_input() -> None:
    with pytest.raises(ContractError, match=r"in_bands=3"):
        tiny_encoder()(torch.rand(1, 4, SIZE, SIZE))
    grey = tiny_encoder(in_bands=1, rgb_bands=[0, 0, 0])
    assert grey(torch.rand(1, 1, 32, 32)).shape == (1, 256, 4, 4)
