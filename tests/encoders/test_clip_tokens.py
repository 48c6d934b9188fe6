"""LLaVA-1.5's vision tower: preprocessing against transformers' CLIPImageProcessor and PIL, tokens
against CLIPVisionModel's hidden states, and a folder loaded as a pretrained source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from rsvlm.encoders.clip_tokens import CLIP_MEAN, CLIP_STD, ClipTokenEncoder
from rsvlm.fusion.token_fusion import TokenFusion

TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=56, patch_size=14
)


def _llava_pixels(image_uint8: np.ndarray, size: int) -> torch.Tensor:
    """LLaVA's own path: expand2square with the mean colour (0-255 ints), CLIPImageProcessor."""
    h, w, _ = image_uint8.shape
    side = max(h, w)
    square = Image.new("RGB", (side, side), tuple(int(m * 255) for m in CLIP_MEAN))
    square.paste(Image.fromarray(image_uint8), ((side - w) // 2, (side - h) // 2))
    processor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return processor(images=square, return_tensors="pt")["pixel_values"]


def test_preprocessing_is_llavas_pad_resize_normalise():
    encoder = ClipTokenEncoder(config=TINY, image_size=56)
    rng = np.random.default_rng(0)
    for h, w in ((40, 70), (90, 60), (56, 56)):
        picture = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ours = encoder.preprocess(torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255)
        # LLaVA rounds to 8 bits (fill colour, each resize pass): within about one level of 255
        torch.testing.assert_close(ours, _llava_pixels(picture, 56), atol=1.6 / 255 / min(CLIP_STD), rtol=0)
        assert ours.shape == (1, 3, 56, 56)


def test_resize_equals_pil_bicubic_on_smooth_images():
    """Without overshoot (a smooth image) one bicubic pass equals PIL's float resize."""
    encoder = ClipTokenEncoder(config=TINY, image_size=56, pad_to_square=False)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 30), torch.linspace(0, 1, 30), indexing="ij")
    x = torch.stack([0.2 + 0.6 * yy, 0.2 + 0.6 * xx, 0.5 + 0.3 * yy * xx])[None]
    want = np.stack([np.asarray(Image.fromarray(c.numpy()).resize((56, 56), Image.BICUBIC)) for c in x[0]])
    want = (torch.from_numpy(want)[None] - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(encoder.preprocess(x), want, atol=1e-4, rtol=0)


def test_tokens_are_the_selected_layer_without_the_class_token(tmp_path):
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(tmp_path / "vision")
    encoder = ClipTokenEncoder(model=str(tmp_path / "vision"), image_size=56, in_bands=4, rgb_bands=[2, 1, 0])
    reference = CLIPVisionModel.from_pretrained(tmp_path / "vision").eval()
    assert encoder.vit.weights_source == str(tmp_path / "vision") and encoder.channels == [32]
    image = torch.rand(2, 4, 56, 56)
    with torch.no_grad():
        (grid,) = encoder(image)
        hidden = reference(pixel_values=encoder.preprocess(image), output_hidden_states=True).hidden_states[-2]
    assert grid.shape == (2, 32, 4, 4)
    fused = TokenFusion(in_channels=[32], in_reduction=14)([grid])
    torch.testing.assert_close(fused.tokens, hidden[:, 1:])  # LLaVA's 'patch' feature selection
    assert fused.map is grid
    encoder.train()
    assert not encoder.vit.training
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        ClipTokenEncoder(config=TINY, image_size=50)
