"""IndexPriorHead: the decoder's logits plus w_c · (2 m_c − 1) of the sample's coarse-mask channel
(w_c · tanh(x_c / τ) of its margin channel with softness τ)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsvlm.heads.index_prior import IndexPriorHead
from rsvlm.heads.sam_decoder import SamMaskDecoderHead


def _decoder() -> SamMaskDecoderHead:
    torch.manual_seed(0)
    return SamMaskDecoderHead(in_channels=8, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2).eval()


def _batch(categories: list[str | None]) -> dict:
    torch.manual_seed(1)
    image = torch.randn(len(categories), 6, 16, 16)
    image[:, 4:] = (torch.rand(len(categories), 2, 16, 16) > 0.5).float()  # coarse masks in {0, 1}
    return {"image": image, "category": categories}


def test_logits_are_the_decoders_plus_the_weighted_prior_of_each_samples_category():
    decoder = _decoder()
    head = IndexPriorHead(decoder, channels={"vegetation": 4, "water": 5}, weight=1.5).eval()
    batch = _batch(["water", "buildings", "vegetation", None])
    fmap, prompts = torch.randn(4, 8, 4, 4), torch.randn(4, 3, 32)
    with torch.no_grad():
        plain = decoder(fmap, prompts, (16, 16))
        got = head(fmap, prompts, (16, 16), batch=batch)
    expected = plain.clone()
    for b, channel in ((0, 5), (2, 4)):  # buildings and None have no channel: the decoder's alone
        expected[b, 0] += 1.5 * (2 * batch["image"][b, channel] - 1)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(head(fmap, prompts, (16, 16)), plain)  # no batch: no prior


def test_without_prior_gives_the_decoders_logits_alone_and_restores_the_prior_after():
    decoder = _decoder()
    head = IndexPriorHead(decoder, channels={"vegetation": 4, "water": 5}, weight=3.0).eval()
    batch = _batch(["water", "vegetation"])
    fmap, prompts = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 32)
    with torch.no_grad():
        plain = decoder(fmap, prompts, (16, 16))
        with head.without_prior():
            alone = head(fmap, prompts, (16, 16), batch=batch)
        with pytest.raises(RuntimeError), head.without_prior():
            raise RuntimeError("a failing pass")
        after = head(fmap, prompts, (16, 16), batch=batch)
    torch.testing.assert_close(alone, plain)
    expected = plain + 3.0 * (2 * torch.stack([batch["image"][0, 5], batch["image"][1, 4]])[:, None] - 1)
    torch.testing.assert_close(after, expected)  # the prior is back, even after an exception


def test_an_undecided_decoder_predicts_exactly_the_coarse_mask():
    """With the decoder's logits at 0, logits > 0 is the coarse mask: the index + Otsu baseline."""
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(3)
    ndwi = rng.uniform(-0.6, 0.6, size=(16, 16)).astype(np.float32)
    coarse = (ndwi > threshold_otsu(ndwi)).astype(np.float32)

    class Undecided(SamMaskDecoderHead):
        def forward(self, feature_map, prompts, image_size, **kwargs):
            return feature_map.new_zeros(feature_map.shape[0], 1, *image_size)

    head = IndexPriorHead(Undecided(in_channels=8, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2), {"water": 0})
    batch = {"image": torch.from_numpy(coarse)[None, None], "category": ["water"]}
    logits = head(torch.zeros(1, 8, 4, 4), torch.zeros(1, 3, 32), (16, 16), batch=batch)
    assert ((logits[0, 0] > 0).numpy() == coarse.astype(bool)).all()


def test_a_soft_prior_is_the_weighted_tanh_of_the_margin_and_keeps_the_baselines_sign():
    decoder = _decoder()
    head = IndexPriorHead(decoder, channels={"water": 5}, weight=3.0, softness=0.05).eval()
    batch = _batch(["water"])
    batch["image"][:, 5] = torch.linspace(-0.4, 0.4, 256).reshape(16, 16)  # a margin channel
    fmap, prompts = torch.randn(1, 8, 4, 4), torch.randn(1, 3, 32)
    with torch.no_grad():
        got = head(fmap, prompts, (16, 16), batch=batch) - decoder(fmap, prompts, (16, 16))
    margin = batch["image"][0, 5].numpy()
    np.testing.assert_allclose(got[0, 0].numpy(), 3.0 * np.tanh(margin / 0.05), rtol=1e-5, atol=1e-6)
    assert ((got[0, 0] > 0).numpy() == (margin > 0)).all()
    with pytest.raises(ValueError, match="softness must be ≥ 0"):
        IndexPriorHead(decoder, {"water": 5}, softness=-1.0)


def test_the_weight_learns_and_can_be_fixed():
    batch = _batch(["water", "vegetation"])
    fmap, prompts = torch.randn(2, 8, 4, 4), torch.randn(2, 3, 32)
    head = IndexPriorHead(_decoder(), {"vegetation": 4, "water": 5})
    head(fmap, prompts, (16, 16), batch=batch).sum().backward()
    expected = torch.stack([(2 * batch["image"][1, 4] - 1).sum(), (2 * batch["image"][0, 5] - 1).sum()])
    torch.testing.assert_close(head.weight.grad, expected)
    fixed = IndexPriorHead(_decoder(), {"water": 5}, learn_weight=False)
    assert not fixed.weight.requires_grad


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="channels is empty"):
        IndexPriorHead(_decoder(), {})
    with pytest.raises(ValueError, match="unknown land-cover category"):
        IndexPriorHead(_decoder(), {"clouds": 4})
    head = IndexPriorHead(_decoder(), {"water": 9})
    with pytest.raises(ValueError, match="channel 9 asked for, but the image has 6 channels"):
        head(torch.randn(1, 8, 4, 4), torch.randn(1, 3, 32), (16, 16), batch=_batch(["water"]))
