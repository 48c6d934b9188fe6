"""MultiSourceStem: each modality's mapping written out here by hand; a mixed batch equals its samples
run one at a time; padding bands and other modalities' parameters never leak in; one-line errors."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

from rsvlm.contracts import ContractError
from rsvlm.data.modalities import MODALITY_IDS
from rsvlm.encoders.modality_stem import MultiSourceStem, StemSpec

OPTICAL, SAR, IR = MODALITY_IDS["optical"], MODALITY_IDS["sar"], MODALITY_IDS["infrared"]


def stem(sar_mode: str = "replicate", optical_mode: str = "select") -> MultiSourceStem:
    return MultiSourceStem(
        {
            "optical": StemSpec(["blue", "green", "red", "nir"], mode=optical_mode, rgb_bands=[2, 1, 0]),
            "sar": StemSpec(["vv", "vh"], mode=sar_mode),
            "infrared": StemSpec(["thermal"]),
        }
    )


def batch(modality: list[int], size: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with each sample's bands first and zero padding after, as the dataset stacks them."""
    g = torch.Generator().manual_seed(seed)
    counts = {OPTICAL: 4, SAR: 2, IR: 1}
    image = torch.randn(len(modality), 4, size, size, generator=g)
    band_valid = torch.zeros(len(modality), 4, dtype=torch.bool)
    for b, m in enumerate(modality):
        image[b, counts[m] :] = 0
        band_valid[b, : counts[m]] = True
    return image, torch.tensor(modality), band_valid


def test_fixed_mappings_are_the_spec_composites() -> None:
    image, modality, band_valid = batch([OPTICAL, SAR, IR])
    out = stem()(image, modality, band_valid)
    assert out.shape == (3, 3, 5, 5)
    torch.testing.assert_close(out[0], image[0, [2, 1, 0]])  # R, G, B selected
    vv, vh = image[1, 0], image[1, 1]
    torch.testing.assert_close(out[1], torch.stack([vv, vh, vv - vh]))  # dual-pol false colour
    torch.testing.assert_close(out[2], image[2, :1].expand(3, -1, -1))  # grey replicated


def test_conv1x1_starts_at_the_fixed_mapping_and_trains() -> None:
    image, modality, band_valid = batch([OPTICAL, SAR, SAR, IR])
    fixed, trainable = stem(), stem(sar_mode="conv1x1", optical_mode="conv1x1")
    torch.testing.assert_close(trainable(image, modality, band_valid), fixed(image, modality, band_valid))
    assert not list(fixed.parameters())
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    assert names == {"maps.optical.weight", "maps.optical.bias", "maps.sar.weight", "maps.sar.bias"}


def test_mixed_batch_equals_samples_run_one_at_a_time() -> None:
    torch.manual_seed(0)
    model = stem(sar_mode="conv1x1", optical_mode="conv1x1").eval()
    with torch.no_grad():  # move the trainable maps away from their init so the test sees them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    order = [SAR, OPTICAL, IR, SAR, OPTICAL, IR, IR]
    image, modality, band_valid = batch(order)
    mixed = model(image, modality, band_valid)
    for b in range(len(order)):
        alone = model(image[b : b + 1], modality[b : b + 1], band_valid[b : b + 1])
        torch.testing.assert_close(mixed[b : b + 1], alone, atol=1e-5, rtol=0)


def test_padding_bands_and_other_modalities_do_not_leak() -> None:
    model = stem(sar_mode="conv1x1", optical_mode="conv1x1")
    image, modality, band_valid = batch([SAR, IR])
    noisy = image.clone()
    noisy[0, 2:] = 7.0  # past the SAR sample's 2 bands
    noisy[1, 1:] = -3.0
    torch.testing.assert_close(model(noisy, modality), model(image, modality))
    model(image, modality).square().sum().backward()
    assert model.maps["optical"].weight.grad is None  # no optical sample, no optical gradient
    assert model.maps["sar"].weight.grad.abs().sum() > 0


def test_errors_are_one_line_and_name_the_field() -> None:
    model = stem()
    image, modality, band_valid = batch([OPTICAL, SAR])
    band_valid[1, 1] = False
    with pytest.raises(ContractError) as exc:
        model(image, modality, band_valid)
    message = str(exc.value)
    assert "\n" not in message and "'band_valid'" in message and "sample 1" in message and "sar" in message
    with pytest.raises(ContractError, match="'modality' holds id 7"):
        model(image, torch.tensor([OPTICAL, 7]))
    with pytest.raises(ContractError, match="in_bands=4"):
        model(image[:, :3], modality)
    with pytest.raises(ContractError, match="'replicate' takes 1 band"):
        MultiSourceStem({"sar": StemSpec(["hh", "hv", "vh", "vv"])})
    with pytest.raises(ContractError, match="needs field 'rgb_bands'"):
        MultiSourceStem({"optical": StemSpec(["r", "g", "b"], mode="select")})
    with pytest.raises(ContractError, match="'rgb_bands'=\\[0, 1, 5\\]"):
        MultiSourceStem({"optical": StemSpec(["r", "g", "b"], mode="select", rgb_bands=[0, 1, 5])})
    with pytest.raises(ContractError, match="unknown \\['lidar'\\]"):
        MultiSourceStem({"lidar": StemSpec(["z"])})


def test_builds_from_a_recipe_config() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MultiSourceStem, "stem")
    config = {
        "stem": {
            "modalities": {
                "sar": {"bands": ["hh", "hv", "vh", "vv"], "mode": "conv1x1", "rgb_bands": [0, 1, 3]},
                "infrared": {"bands": ["thermal"]},
            },
            "out_bands": 3,
        }
    }
    built = parser.instantiate_classes(parser.parse_object(config)).stem
    assert isinstance(built, MultiSourceStem) and built.in_bands == 4
    image, _, _ = batch([OPTICAL])  # 4 random bands, used here as HH, HV, VH, VV
    out = built(image, torch.tensor([SAR]))
    torch.testing.assert_close(out[0], image[0, [0, 1, 3]])
