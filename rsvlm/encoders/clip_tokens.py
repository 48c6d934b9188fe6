"""LLaVA-1.5's vision tower: CLIP ViT patch tokens of one layer, as one map (GeoMag's VLM input).

The image (RGB bands, ``[0, 1]``) is padded to a square with CLIP's mean colour (LLaVA's
``expand2square``), resized to ``image_size`` by bicubic interpolation with antialiasing — PyTorch's
form of PIL's bicubic filter, which LLaVA's ``CLIPImageProcessor`` uses, in PIL's two clipped passes
(within one grey level of LLaVA's 8-bit pixels, tested; differentiable) — normalised with CLIP's statistics and run through the ViT; the
hidden states of ``select_layer`` (LLaVA: −2, the penultimate) without the class token are the
output, laid out as a map ``B×D×g×g`` (g = image_size / patch: 24 for ViT-L/14 at 336).
:class:`rsvlm.fusion.token_fusion.TokenFusion` turns the map into LLaVA's 576 tokens unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from transformers import CLIPVisionConfig, CLIPVisionModel

from rsvlm.contracts import check_image_bands
from rsvlm.encoders._stem import FreezableEncoder

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def expand_to_square(image: torch.Tensor, fill: Sequence[float]) -> torch.Tensor:
    """``B×3×H×W`` → ``B×3×S×S`` (S = max(H, W)), each image centred on ``fill`` (LLaVA's offsets)."""
    batch, _, height, width = image.shape
    side = max(height, width)
    out = torch.tensor(fill, dtype=image.dtype, device=image.device).view(1, 3, 1, 1).repeat(batch, 1, side, side)
    top, left = (side - height) // 2, (side - width) // 2
    out[:, :, top : top + height, left : left + width] = image
    return out


class ClipTokenEncoder(FreezableEncoder):
    """CLIP ViT tokens of one layer as a map (see the module docstring).

    Args:
        model: Hugging Face id or folder of a CLIP vision model (``rsvlm convert llava`` writes one).
        config: a ``CLIPVisionConfig`` dict instead (random weights); exactly one of the two.
        select_layer: the hidden-states index read (−2: LLaVA's penultimate layer).
        image_size: the ViT's input side (336 for LLaVA-1.5).
        pad_to_square: pad with the mean colour before resizing (LLaVA's ``image_aspect_ratio: pad``).
        in_bands, rgb_bands: the batch's bands and where red, green, blue are.
        freeze: no gradients into the ViT, which stays in eval mode.
        local_files_only: never contact the hub when resolving ``model``.
    """

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        select_layer: int = -2,
        image_size: int = 336,
        pad_to_square: bool = True,
        in_bands: int = 3,
        rgb_bands: list[int] = [0, 1, 2],
        freeze: bool = True,
        local_files_only: bool = False,
    ) -> None:
        super().__init__()
        if (model is None) == (config is None):
            raise ValueError("ClipTokenEncoder: give exactly one of `model` (id or folder) and `config` (dict)")
        if model is not None:
            try:
                self.vit = CLIPVisionModel.from_pretrained(model, local_files_only=local_files_only)
            except (OSError, ValueError) as error:
                raise OSError(
                    f"ClipTokenEncoder.model={model!r}: could not load a CLIP vision model ({error})"
                ) from error
            self.vit.weights_source = model
        else:
            self.vit = CLIPVisionModel(CLIPVisionConfig(**dict(config.get("vision_config", config))))
        vit_config = self.vit.config
        if image_size % vit_config.patch_size:
            raise ValueError(
                f"ClipTokenEncoder.image_size={image_size} is not a multiple of the patch {vit_config.patch_size}"
            )
        self.select_layer = select_layer
        self.image_size = image_size
        self.pad_to_square = pad_to_square
        self.in_bands = in_bands
        self.rgb_bands = list(rgb_bands)
        self.grid = image_size // vit_config.patch_size
        self.channels = [vit_config.hidden_size]
        self.reductions = [vit_config.patch_size]
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        if freeze:
            self.freeze_part("vit")

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``B×in_bands×H×W`` in [0, 1] → normalised ``B×3×s×s`` pixel values."""
        check_image_bands("ClipTokenEncoder", image, self.in_bands)
        rgb = image[:, self.rgb_bands]
        if self.pad_to_square:
            rgb = expand_to_square(rgb, CLIP_MEAN)
        # PIL resizes 8-bit images in two passes, width then height, clipping to [0, 255] after each
        # (bicubic overshoots at edges); doing the same stays within one grey level of LLaVA's pixels.
        side = self.image_size
        for size in ((rgb.shape[-2], side), (side, side)):
            rgb = F.interpolate(rgb, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
        return (rgb - self.mean.to(rgb.dtype)) / self.std.to(rgb.dtype)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``B×in_bands×H×W`` → ``[B×D×g×g]`` tokens of ``select_layer`` (class token dropped)."""
        pixels = self.preprocess(image)
        hidden = self.vit(pixel_values=pixels, output_hidden_states=True).hidden_states[self.select_layer]
        return [rearrange(hidden[:, 1:], "b (h w) d -> b d h w", h=self.grid)]
