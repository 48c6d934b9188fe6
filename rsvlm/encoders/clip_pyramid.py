"""A CLIP ViT vision tower turned into a 4-level feature pyramid (ViTDet-style).

The ViT is transformers' ``CLIPVisionModel`` (a Hugging Face id or local folder, or a config
for a randomly initialised model). Its single-scale tokens become maps at strides 4, 8, 16
and 32 of the image:

1. **Layers.** Level i reads the hidden state after transformer layer ``layers[i]``
   (1-based: ``hidden_states[l]`` of the model, ``0`` being the embeddings). By default the
   layers are evenly spaced, ``round(N·(i+1)/4)`` for N layers: 3, 6, 9, 12 for ViT-B,
   6, 12, 18, 24 for ViT-L. Hidden states are taken raw (no ``post_layernorm``).
2. **Grid.** The CLS token is dropped and the patch tokens are laid out on their
   ``H/p × W/p`` grid (p = patch size).
3. **Resampling** (the simple feature pyramid of ViTDet, Li et al. 2022), for p = 16:
   stride 4 — two 2×2 stride-2 ``ConvTranspose2d`` (width D → D/2 → D/4) with LayerNorm and
   GELU between; stride 8 — one ``ConvTranspose2d`` (D → D/2); stride 16 — identity;
   stride 32 — 2×2 max-pool. Each level then has a 1×1 conv to ``out_channels``. For other
   patch sizes (ViT-L/14) the same ops run and the maps are bilinearly resized to
   ``H//r × W//r``.

Input size: any. The position embeddings are interpolated to the patch grid (transformers'
``interpolate_pos_encoding=True``) when it differs from the pretraining size. A side that is
not a multiple of the patch size (512 for ViT-L/14: 512 = 36·14 + 8) is first resized
bilinearly to the nearest multiple (518), so no border pixels are dropped by the strided patch
embedding; the pyramid levels still come out at ``H//r × W//r`` of the original image.

Bands: the patch-embedding conv is rebuilt for ``in_bands`` when pretrained weights are
loaded: the bands in ``rgb_bands`` get CLIP's R, G, B filters bit for bit, the others the
mean of the RGB filters (or zeros), by every encoder's rule
(:func:`rsvlm.encoders._stem.expand_stem_weight`).

``freeze`` (default) freezes the whole ViT, the rebuilt patch embedding included, and keeps it
in eval mode; the resampling layers always train.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import LayerNorm2d
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from rsvlm.contracts import check_image_bands
from rsvlm.encoders._stem import (
    ExtraBandInit,
    FreezableEncoder,
    check_band_arguments,
    needs_widening,
    widen_stem_conv,
)

REDUCTIONS = [4, 8, 16, 32]


def default_layers(num_layers: int) -> list[int]:
    """Four evenly spaced 1-based layer indices ending at the last layer."""
    return [max(1, round(num_layers * (i + 1) / 4)) for i in range(4)]


def _resampler(dim: int, level: int) -> tuple[nn.Module, int]:
    """The ViTDet op for pyramid ``level`` (0: ×4 up, 1: ×2 up, 2: same, 3: ×2 down) and its
    output width."""
    if level == 0:
        return (
            nn.Sequential(
                nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
                LayerNorm2d(dim // 2),
                nn.GELU(),
                nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
            ),
            dim // 4,
        )
    if level == 1:
        return nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2), dim // 2
    if level == 2:
        return nn.Identity(), dim
    return nn.MaxPool2d(kernel_size=2, stride=2), dim


class ClipPyramidEncoder(FreezableEncoder):
    """CLIP ViT → maps ``B×out_channels×H/r×W/r`` for r = 4, 8, 16, 32.

    Args:
        model: Hugging Face id or local folder of a CLIP (vision) checkpoint, e.g.
            ``"openai/clip-vit-base-patch16"``. Exactly one of ``model`` and ``config``.
        config: ``CLIPVisionConfig`` fields (or a CLIP config with a ``vision_config``
            entry) for a randomly initialised ViT.
        in_bands: number of input bands.
        layers: four 1-based transformer layers feeding the levels (finest first); default
            evenly spaced (see module docstring).
        out_channels: width of every output level.
        rgb_bands: input bands that receive CLIP's R, G, B filters, in that order; ``None``
            when no band holds R, G, B (all bands get the mean filter).
        extra_band_init: filters of the other bands: ``"mean"`` of the RGB filters or ``"zeros"``.
        freeze: no gradients into the ViT, which also stays in eval mode (the resampling layers
            always train).
        local_files_only: never contact the hub when resolving ``model``.
    """

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        in_bands: int = 3,
        layers: list[int] | None = None,
        out_channels: int = 256,
        rgb_bands: list[int] | None = [0, 1, 2],
        extra_band_init: ExtraBandInit = "mean",
        freeze: bool = True,
        local_files_only: bool = False,
    ) -> None:
        super().__init__()
        if (model is None) == (config is None):
            raise ValueError("ClipPyramidEncoder: give exactly one of `model` (id or folder) and `config` (dict)")
        self.in_bands = in_bands
        self.rgb_bands = check_band_arguments("ClipPyramidEncoder", in_bands, rgb_bands, extra_band_init)

        if model is not None:
            try:
                self.vit = CLIPVisionModel.from_pretrained(model, local_files_only=local_files_only)
            except OSError as error:
                raise OSError(
                    f"ClipPyramidEncoder.model={model!r}: could not load a CLIP vision model ({error}). Give a "
                    "local folder saved with save_pretrained, or download the Hugging Face id first."
                ) from error
            self.vit.weights_source = model  # trained-only checkpoints leave what this source restores out
            if needs_widening(in_bands, self.rgb_bands):
                widen_stem_conv(self.vit.get_input_embeddings(), in_bands, self.rgb_bands, extra_band_init)
                self.vit.config.num_channels = in_bands
        else:
            fields = dict(config.get("vision_config", config))
            fields["num_channels"] = in_bands
            self.vit = CLIPVisionModel(CLIPVisionConfig(**fields))

        vit_config = self.vit.config
        self.patch_size = vit_config.patch_size
        dim = vit_config.hidden_size
        self.layers = list(layers) if layers is not None else default_layers(vit_config.num_hidden_layers)
        if len(self.layers) != 4 or not all(1 <= layer <= vit_config.num_hidden_layers for layer in self.layers):
            raise ValueError(
                f"ClipPyramidEncoder.layers={self.layers}: need 4 layer indices in [1, {vit_config.num_hidden_layers}]"
            )
        if dim % 4:
            raise ValueError(f"ClipPyramidEncoder: ViT width {dim} must be divisible by 4 for the ×4 up-sampling")

        resamplers, widths = zip(*(_resampler(dim, level) for level in range(4)), strict=True)
        self.resample = nn.ModuleList(resamplers)
        self.proj = nn.ModuleList(nn.Conv2d(width, out_channels, kernel_size=1) for width in widths)
        self.channels = [out_channels] * 4
        self.reductions = list(REDUCTIONS)

        if freeze:
            self.freeze_part("vit")

    def patch_grid(self, side: int) -> int:
        """Patches along an image side of ``side`` pixels: the nearest whole number (at least 1)."""
        return max(1, int(side / self.patch_size + 0.5))  # halves round up

    def forward_grids(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The hidden states of ``layers`` as grids ``B×D×h×w`` (before resampling), with
        ``h = round(H/p)``, ``w = round(W/p)`` (``H/p × W/p`` when the sides are multiples of p)."""
        check_image_bands("ClipPyramidEncoder", image, self.in_bands)
        grid_h, grid_w = (self.patch_grid(side) for side in image.shape[-2:])
        size = (grid_h * self.patch_size, grid_w * self.patch_size)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        hidden = self.vit(pixel_values=image, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        return [rearrange(hidden[layer][:, 1:], "b (h w) d -> b d h w", h=grid_h) for layer in self.layers]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``B×in_bands×H×W`` → 4 maps ``B×out_channels×H//r×W//r``, r = 4, 8, 16, 32."""
        height, width = image.shape[-2:]
        maps = []
        for grid, resample, proj, r in zip(
            self.forward_grids(image), self.resample, self.proj, self.reductions, strict=True
        ):
            level = proj(resample(grid))
            size = (height // r, width // r)
            if tuple(level.shape[-2:]) != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            maps.append(level)
        return maps
