"""MultiSourceEncoder: stems by the batch's modality, optional 1 global + 2×2 views, then the shared
encoder. A mixed batch equals its samples one at a time; the stem is MultiSourceStem per sample;
gradients reach the stem; the views come back as one token grid (ViewTiler.merge's order); the
model runs it from the batch's ``modality`` and refuses C_max-band images without it."""

from __future__ import annotations

import pytest
import torch
from conftest import contract_batch, tiny_spex_components
from einops import rearrange

from rsvlm.contracts import ContractError, Encoder, FusedFeatures
from rsvlm.data.modalities import MODALITY_IDS
from rsvlm.encoders.mixed import MixedExpertEncoder
from rsvlm.encoders.modality_stem import MultiSourceStem, StemSpec
from rsvlm.encoders.multisource import MultiSourceEncoder
from rsvlm.encoders.timm_encoder import TimmEncoder
from rsvlm.encoders.timm_vit import TimmViTEncoder
from rsvlm.fusion.single_scale import SingleScaleFusion
from rsvlm.fusion.views import ViewTiler
from rsvlm.models.vlm import VisionLanguageModel

OPTICAL, SAR, IR = MODALITY_IDS["optical"], MODALITY_IDS["sar"], MODALITY_IDS["infrared"]
BAND_COUNTS = {OPTICAL: 4, SAR: 2, IR: 1}
VIEW = 32  # the inner encoder's input side; with 1 + 2×2 views the input is 64


def stem(mode: str = "fixed") -> MultiSourceStem:
    """Optical B-G-R-NIR (C_max = 4), SAR VV/VH, thermal infrared → 3 bands; ``trainable``: 1×1 convs."""
    trainable = mode == "trainable"
    return MultiSourceStem(
        {
            "optical": StemSpec(["blue", "green", "red", "nir"], "conv1x1" if trainable else "select", [2, 1, 0]),
            "sar": StemSpec(["vv", "vh"], "conv1x1" if trainable else "replicate"),
            "infrared": StemSpec(["thermal"]),
        }
    )


def mixed_experts() -> MixedExpertEncoder:
    """ConvNeXt's stride-8 map ‖ a DINOv2-style ViT's patch grid (view resized to 28²), on a 4×4 grid of a 32² view."""
    torch.manual_seed(0)
    vit = TimmViTEncoder(model_name="vit_small_patch14_dinov2", img_size=28, depth=1, embed_dim=16, num_heads=2)
    experts = [TimmEncoder("convnext_atto", in_bands=3), vit]
    return MixedExpertEncoder(experts, levels=[1, 0], grid=4, image_size=VIEW, expert_sizes=[None, 28]).eval()


class Spy(Encoder):
    """Returns its input as the one map, so the encoder's input can be compared directly."""

    in_bands, channels, reductions = 3, [3], [1]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return [image]


def images(modality: list[int], size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``B×4×size×size`` with each sample's bands first and zero padding after, and the ``B`` ids."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(len(modality), 4, size, size, generator=g)
    for b, m in enumerate(modality):
        image[b, BAND_COUNTS[m] :] = 0
    return image, torch.tensor(modality)


@pytest.mark.parametrize("views", [False, True], ids=["one-view", "1+2x2"])
def test_a_mixed_batch_gives_each_sample_alone(views: bool) -> None:
    tiler = ViewTiler("1+2x2", view_size=VIEW) if views else None
    encoder = MultiSourceEncoder(stem("trainable"), mixed_experts(), tiler).eval()
    image, modality = images([OPTICAL, SAR, IR, SAR], size=2 * VIEW if views else VIEW)
    with torch.no_grad():
        together = encoder(image, {"modality": modality})
        for b in range(len(modality)):
            alone = encoder(image[b : b + 1], {"modality": modality[b : b + 1]})
            for level, (a, t) in enumerate(zip(alone, together, strict=True)):
                torch.testing.assert_close(t[b : b + 1], a, atol=1e-5, rtol=1e-5, msg=f"sample {b} level {level}")
    side = 4 * (5 if views else 1)
    assert [tuple(m.shape) for m in together] == [(4, encoder.channels[0], side, 4)]


def test_the_stem_is_multisourcestem_per_sample() -> None:
    s = stem("trainable")
    encoder = MultiSourceEncoder(s, Spy())
    image, modality = images([IR, OPTICAL, SAR], size=8)
    band_valid = torch.arange(4)[None] < torch.tensor([BAND_COUNTS[m] for m in modality.tolist()])[:, None]
    (out,) = encoder(image, {"modality": modality, "band_valid": band_valid})
    torch.testing.assert_close(out, s(image, modality), rtol=0, atol=0)
    # each sample by its own modality: not what the optical stem gives the SAR / infrared samples
    assert not torch.allclose(out[[0, 2]], s(image, torch.full_like(modality, OPTICAL))[[0, 2]])
    # no modality in the batch: every sample optical (the meta-device path, no grouping)
    (default,) = encoder(image)
    torch.testing.assert_close(default, s(image, torch.full_like(modality, OPTICAL)), rtol=0, atol=0)
    wrong = band_valid.clone()
    wrong[1, 3] = False  # the optical sample without its NIR band
    with pytest.raises(ContractError, match="band_valid"):
        encoder(image, {"modality": modality, "band_valid": wrong})
    with pytest.raises(ContractError, match="'modality'"):
        encoder(image, {"modality": modality[:2]})


def test_views_come_back_as_one_grid_in_merge_order() -> None:
    s, tiler = stem(), ViewTiler("1+2x2", view_size=4)
    encoder = MultiSourceEncoder(s, Spy(), tiler)
    image, modality = images([SAR, OPTICAL], size=8)
    (grid,) = encoder(image, {"modality": modality})
    views = tiler.split(s(image, modality))  # (V·B)×3×4×4, the encoder's input
    assert grid.shape == (2, 3, 5 * 4, 4)
    torch.testing.assert_close(grid[:, :, :4], views[0::5], rtol=0, atol=0)  # global view on top
    torch.testing.assert_close(grid[:, :, 4:8], views[1::5], rtol=0, atol=0)  # then the tiles, row-major
    # the model's tokens (row-major flattening) are ViewTiler.merge of the views' tokens
    tokens = FusedFeatures.from_map(grid).tokens
    torch.testing.assert_close(tokens, tiler.merge(rearrange(views, "n c h w -> n (h w) c")), rtol=0, atol=0)


def test_gradients_reach_the_stem() -> None:
    s = stem("trainable")
    encoder = MultiSourceEncoder(s, mixed_experts(), ViewTiler("1+2x2", view_size=VIEW))
    image, modality = images([OPTICAL, SAR, IR], size=2 * VIEW)
    image.requires_grad_(True)
    sum(m.square().mean() for m in encoder(image, {"modality": modality})).backward()
    for name in ("optical", "sar"):
        grad = s.maps[name].weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert image.grad is not None and image.grad[:, :1].abs().sum() > 0


def test_contract_attributes_are_the_inner_encoders() -> None:
    inner = mixed_experts()
    encoder = MultiSourceEncoder(stem(), inner)
    assert encoder.reads_batch and isinstance(encoder, Encoder)
    assert encoder.in_bands == 4 and inner.in_bands == 3
    assert encoder.channels == inner.channels and encoder.reductions == inner.reductions
    assert encoder.image_size == VIEW and encoder.num_views == 1
    tiled = MultiSourceEncoder(stem(), inner, ViewTiler("1+2x2", view_size=VIEW))
    assert tiled.channels == inner.channels and tiled.reductions == inner.reductions
    assert tiled.image_size == 2 * VIEW and tiled.num_views == 5
    mask_encoder_like = Spy()
    mask_encoder_like.out_channels, mask_encoder_like.reduction = 3, 1
    wrapped = MultiSourceEncoder(stem(), mask_encoder_like)
    assert (wrapped.out_channels, wrapped.reduction) == (3, 1) and not hasattr(encoder, "out_channels")


def test_mismatches_are_one_line_contract_errors() -> None:
    with pytest.raises(ContractError, match="out_bands=3.*in_bands=4"):
        MultiSourceEncoder(stem(), TimmEncoder("resnet18", in_bands=4))
    with pytest.raises(ContractError, match="view_tags"):
        MultiSourceEncoder(stem(), Spy(), ViewTiler("1+2x2", view_size=4, view_tags=True, dim=3))
    with pytest.raises(ContractError, match="image_size=32"):
        MultiSourceEncoder(stem(), mixed_experts(), ViewTiler("1+2x2", view_size=16))
    with pytest.raises(ContractError, match="in_bands=4"):
        MultiSourceEncoder(stem(), Spy())(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ContractError, match="field 'encoder'.*channels"):
        MultiSourceEncoder(stem(), torch.nn.Identity())


@pytest.fixture(scope="module")
def components() -> dict:
    return tiny_spex_components(bands=3)


def test_the_model_runs_it_from_the_batch_modality(components: dict) -> None:
    model = VisionLanguageModel(**{**components, "encoder": MultiSourceEncoder(stem(), components["encoder"])})
    batch = contract_batch(model.llm.formatter, bands=4)
    batch["image"][1, 2:] = 0  # the SAR sample: VV, VH, then padding
    batch["modality"] = torch.tensor([OPTICAL, SAR])
    out = model(batch, with_mask=True)
    assert out["mask_logits"].shape == (2, 1, 64, 64) and torch.isfinite(out["text_loss"])
    # the bare 3-band encoder cannot read the C_max = 4-band images
    bare = VisionLanguageModel(**components)
    with pytest.raises(ContractError, match="batch field 'image' has 4 bands.*in_bands=3"):
        bare(batch, with_mask=True)


def test_the_model_reads_the_views_as_one_token_grid(components: dict) -> None:
    encoder = MultiSourceEncoder(stem(), components["encoder"], ViewTiler("1+2x2", view_size=32))
    fusion = SingleScaleFusion(encoder.channels, out_channels=32, target_reduction=16)  # 1×1 conv, cell-wise
    model = VisionLanguageModel(**{**components, "encoder": encoder, "fusion": fusion})
    batch = contract_batch(model.llm.formatter, bands=4)
    batch["modality"] = torch.tensor([SAR, OPTICAL])
    with torch.no_grad():
        fused, visual, _ = model.encode_image(batch["image"], batch)
    assert fused.map.shape == (2, 32, 5 * 2, 2)  # 5 views of 32² at stride 16, stacked
    assert visual.shape == (2, 5 * 2 * 2, 32)


class MaskMapSpy(torch.nn.Module):
    """A mask encoder that keeps the image it is given and returns a 32-channel map of its 1/16 size."""

    in_bands, out_channels, reduction = 3, 32, 16  # one map, as a SAM ViT declares it

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.seen = image
        return torch.zeros(len(image), self.out_channels, image.shape[-2] // 16, image.shape[-1] // 16)


def test_a_batch_reading_mask_encoder_sees_each_samples_stem(components: dict) -> None:
    s = stem()
    spy = MaskMapSpy()
    encoder = MultiSourceEncoder(stem(), components["encoder"])
    model = VisionLanguageModel(**{**components, "encoder": encoder, "mask_encoder": MultiSourceEncoder(s, spy)})
    batch = contract_batch(model.llm.formatter, bands=4)
    batch["image"][1, 2:] = 0  # the SAR sample: VV, VH, then padding
    batch["modality"] = torch.tensor([OPTICAL, SAR])
    with torch.no_grad():
        _, _, decoder_map = model.encode_image(batch["image"], batch)
    assert decoder_map.shape == (2, 32, 4, 4)
    # Reference: each sample through its own modality's stem map, one at a time.
    for b, name in enumerate(["optical", "sar"]):
        n = len(s.specs[name].bands)
        torch.testing.assert_close(spy.seen[b : b + 1], s.maps[name](batch["image"][b : b + 1, :n]), rtol=0, atol=0)
    assert not torch.equal(spy.seen[1], batch["image"][1, :3])  # not the raw [VV, VH, 0]
    wrapped = model.mask_encoder
    assert (wrapped.out_channels, wrapped.reduction, wrapped.channels, wrapped.reductions) == (32, 16, [32], [16])
    with pytest.raises(ContractError, match="views: null"):
        MultiSourceEncoder(stem(), MaskMapSpy(), ViewTiler("1+2x2", view_size=VIEW))
