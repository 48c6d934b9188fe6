"""SAM's ViT image encoder (``segment_anything``'s ``ImageEncoderViT``), frozen: the map a SAM decoder reads.

EarthGPT-X's pixel grounding gives the ``[SEG]`` prompt to SAM's mask decoder on the embedding of a
frozen SAM ViT. This module is that embedding for the VLM's ``mask_encoder`` slot: image
``B×C×H×W`` → ``B×256×S/16×S/16`` (the encoder neck's output; ``S = image_size``, 1024 → 64²),
read by :class:`rsvlm.heads.sam_decoder.SamMaskDecoderHead` (``in_channels=256``).

It is not an :class:`rsvlm.contracts.Encoder`: it returns one map, not a pyramid, because the VLM
hands a ``mask_encoder``'s output to the decoder as it is.

Input → SAM's pixels. rsvlm's batches are normalised per band (0 = band mean). The three
``rgb_bands`` are taken (repeat an index, ``[0, 0, 0]``, for a grey image such as SAR), turned
back into the dataset's values with ``band_mean`` / ``band_std`` when given (each listing every
input band, as in ``stats.json``), and multiplied by ``input_scale`` into SAM's 0–255 range:
reflectances in [0, 1] → 255 (the default, also right for an image already in [0, 1]),
12-bit counts → 255 / 4095, 0–255 values → 1. SAM's own preprocessing then follows: resize the
longest side to ``S`` (``ResizeLongestSide``; bilinear with antialiasing as its ``apply_image_torch``),
normalise with SAM's pixel mean / std, pad bottom-right with zeros to ``S×S`` (``Sam.preprocess``).

Weights: ``image_encoder.*`` of an official checkpoint (``sam_vit_b_01ec64.pth``,
``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``) of the matching ``variant``, loaded strictly.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from segment_anything.modeling import ImageEncoderViT
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from rsvlm.contracts import check_image_bands
from rsvlm.io.state_dicts import StateDictDiff, StateDictError, compare_state_dicts, read_state_dict

# segment_anything.build_sam: the geometry shared by every variant, and each variant's own.
SAM_IMAGE_SIZE = 1024
SAM_PATCH_SIZE = 16
SAM_WINDOW_SIZE = 14
SAM_OUT_CHANNELS = 256
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM_VARIANTS: dict[str, dict[str, int | list[int]]] = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": [5, 11, 17, 23]},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": [7, 15, 23, 31]},
}
SAM_CHECKPOINTS = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}
SAM_README = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
RESIZE_MODES = ("longest_side", "square")
PREFIX = "image_encoder."
LISTED = 3  # keys named per group in the one-line mismatch error


def build_image_encoder(
    embed_dim: int, depth: int, num_heads: int, global_attn_indexes: list[int], image_size: int
) -> ImageEncoderViT:
    """``ImageEncoderViT`` exactly as ``segment_anything.build_sam._build_sam`` builds it."""
    return ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=image_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=num_heads,
        patch_size=SAM_PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(global_attn_indexes),
        window_size=SAM_WINDOW_SIZE,
        out_chans=SAM_OUT_CHANNELS,
    )


def input_affine(
    rgb_bands: list[int], band_mean: list[float] | None, band_std: list[float] | None, input_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale``, ``shift`` (each ``1×3×1×1``) with ``SAM-normalised = x · scale + shift``.

    ``x`` is a ``rgb_bands`` channel of the batch; the composition is de-normalise
    (``x · std + mean``), then ``· input_scale`` (→ 0–255), then SAM's ``(p − mean) / std``.
    """
    mean = torch.tensor([band_mean[b] for b in rgb_bands] if band_mean is not None else [0.0] * 3)
    std = torch.tensor([band_std[b] for b in rgb_bands] if band_std is not None else [1.0] * 3)
    pixel_mean, pixel_std = torch.tensor(SAM_PIXEL_MEAN), torch.tensor(SAM_PIXEL_STD)
    scale = std * input_scale / pixel_std
    shift = (mean * input_scale - pixel_mean) / pixel_std
    return rearrange(scale, "c -> 1 c 1 1"), rearrange(shift, "c -> 1 c 1 1")


def check_input_arguments(
    in_bands: int, rgb_bands: list[int], band_mean: list[float] | None, band_std: list[float] | None, resize: str
) -> None:
    """One-line ``ValueError`` naming the first bad band / resize argument of :class:`SamViTEncoder`."""
    if len(rgb_bands) != 3 or not all(0 <= b < in_bands for b in rgb_bands):
        raise ValueError(
            f"SamViTEncoder.rgb_bands={rgb_bands}: need 3 band indices in [0, {in_bands}) (in_bands={in_bands}) "
            "giving R, G, B ([0, 0, 0] for a grey image)"
        )
    if (band_mean is None) != (band_std is None):
        raise ValueError("SamViTEncoder: give both band_mean and band_std (the batch's per-band statistics) or neither")
    for name, values in (("band_mean", band_mean), ("band_std", band_std)):
        if values is not None and len(values) != in_bands:
            raise ValueError(
                f"SamViTEncoder.{name}: {len(values)} values, need one per input band (in_bands={in_bands})"
            )
    if resize not in RESIZE_MODES:
        raise ValueError(f"SamViTEncoder.resize={resize!r}: must be one of {RESIZE_MODES}")


def describe_mismatch(diff: StateDictDiff, given: dict[str, torch.Tensor]) -> str:
    """The key groups of ``diff`` on one line, at most :data:`LISTED` keys each, and the file's width."""
    parts = []
    for name, keys in (("missing", diff.missing), ("unexpected", diff.unexpected)):
        if keys:
            parts.append(f"{len(keys)} {name} keys (e.g. {keys[:LISTED]})")
    if diff.mismatched:
        clashes = [f"{k}: checkpoint {a} vs encoder {b}" for k, a, b in diff.mismatched[:LISTED]]
        parts.append(f"{len(diff.mismatched)} shape mismatches (e.g. {clashes})")
    proj = given.get(f"{PREFIX}patch_embed.proj.weight")
    if proj is not None:  # the patch embedding's width names the variant the file was trained as
        found = [v for v, geometry in SAM_VARIANTS.items() if geometry["embed_dim"] == proj.shape[0]]
        parts.append(f"the file has embed_dim={proj.shape[0]}" + (f" ({found[0]})" if found else ""))
    return "; ".join(parts)


class SamViTEncoder(nn.Module):
    """Frozen SAM ViT: ``B×in_bands×H×W`` (normalised per band) → ``B×256×S/16×S/16``.

    Args:
        variant: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"`` (``segment_anything.build_sam``'s geometry).
        checkpoint: an official SAM checkpoint of that variant; its ``image_encoder.*`` is loaded
            strictly (keys and shapes). ``None``: random weights (tests, meta builds).
        embed_dim, depth, num_heads, global_attn_indexes: override the variant (tiny test encoders).
        image_size: ``S``, the encoder's square input side (official checkpoints: 1024).
        in_bands: bands of the batch's image.
        rgb_bands: indices of R, G, B among them; an index may repeat (``[0, 0, 0]``, a grey image).
        band_mean, band_std: per input band, the statistics the batch was normalised with; the RGB
            bands are de-normalised with them. ``None`` (both): the bands are used as they come.
        input_scale: multiplies the (de-normalised) RGB values into SAM's 0–255 range.
        resize: ``"longest_side"`` (SAM: keep the aspect ratio, pad bottom-right) or ``"square"``
            (stretch to ``S×S``). Both are the same on a square image; on a non-square one only
            ``"square"`` keeps the map covering exactly the image, which is what
            ``SamMaskDecoderHead`` assumes when it places visual prompts and upsamples its logits.
        freeze: no gradients into SAM's weights, which also stay in eval mode under ``train()``.
    """

    def __init__(
        self,
        variant: str = "vit_h",
        checkpoint: str | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        global_attn_indexes: list[int] | None = None,
        image_size: int = SAM_IMAGE_SIZE,
        in_bands: int = 3,
        rgb_bands: list[int] = [0, 1, 2],
        band_mean: list[float] | None = None,
        band_std: list[float] | None = None,
        input_scale: float = 255.0,
        resize: str = "longest_side",
        freeze: bool = True,
    ) -> None:
        super().__init__()
        if variant not in SAM_VARIANTS:
            raise ValueError(f"SamViTEncoder.variant={variant!r}: must be one of {list(SAM_VARIANTS)}")
        if image_size % SAM_PATCH_SIZE:
            raise ValueError(f"SamViTEncoder.image_size={image_size}: must be a multiple of {SAM_PATCH_SIZE}")
        check_input_arguments(in_bands, list(rgb_bands), band_mean, band_std, resize)
        given = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}
        given["global_attn_indexes"] = global_attn_indexes
        self.geometry = {k: given[k] if given[k] is not None else v for k, v in SAM_VARIANTS[variant].items()}
        self.variant = variant
        self.image_encoder = build_image_encoder(image_size=image_size, **self.geometry)
        self.image_size = image_size
        self.in_bands = in_bands
        self.rgb_bands = list(rgb_bands)
        self.resize = resize
        self.out_channels = SAM_OUT_CHANNELS
        self.reduction = SAM_PATCH_SIZE
        scale, shift = input_affine(self.rgb_bands, band_mean, band_std, input_scale)
        # not persistent: derived from the arguments, and the state dict then holds only SAM's weights
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        if checkpoint is not None:
            self.load_sam_checkpoint(checkpoint)
        self.frozen = freeze
        if freeze:
            self.image_encoder.requires_grad_(False)
            self.train(self.training)

    def train(self, mode: bool = True) -> SamViTEncoder:
        """Set train/eval mode; a frozen SAM stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.image_encoder.train(False)
        return self

    def load_sam_checkpoint(self, path: str | Path) -> None:
        """Load ``image_encoder.*`` of a SAM checkpoint, strictly.

        Raises:
            FileNotFoundError: the file is missing (the message says what to download).
            StateDictError: keys or shapes differ from this encoder's (one line, the first keys of each kind).
        """
        path = Path(path)
        state = read_state_dict(
            path,
            "SamViTEncoder.checkpoint",
            missing_hint=f"Download {SAM_CHECKPOINTS[self.variant]} (variant={self.variant!r}) from the "
            f"model-checkpoint links in the segment-anything README ({SAM_README}) and put it at {path.resolve()}, "
            "or set the encoder's `checkpoint` argument to where the file is.",
        )
        expected = {PREFIX + k: v for k, v in self.image_encoder.state_dict().items()}
        # the decoder's and prompt encoder's weights are in the file too and are not this encoder's business
        given = {k: v for k, v in state.items() if k.startswith(PREFIX)}
        diff = compare_state_dicts(expected, given)
        if not diff.ok:
            raise StateDictError(
                f"SamViTEncoder.checkpoint: {path} does not fit variant={self.variant!r} "
                f"({', '.join(f'{k}={v}' for k, v in self.geometry.items())}, image_size={self.image_size}; "
                f"official files need image_size={SAM_IMAGE_SIZE}): {describe_mismatch(diff, given)}"
            )
        self.image_encoder.load_state_dict({k.removeprefix(PREFIX): v for k, v in given.items()})
        self.image_encoder.weights_source = str(path)  # trained-only checkpoints leave what this file restores out

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` the image is resized to before padding: longest side ``S`` (SAM's rounding) or ``S×S``."""
        if self.resize == "square":
            return self.image_size, self.image_size
        return ResizeLongestSide.get_preprocess_shape(height, width, self.image_size)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """``B×in_bands×H×W`` → SAM's input ``B×3×S×S``: RGB bands, 0–255, resized, normalised, padded."""
        check_image_bands("SamViTEncoder", image, self.in_bands)
        # under half-precision weights ("bf16-true") the batch may still arrive in float32
        dtype = self.image_encoder.patch_embed.proj.weight.dtype
        rgb = image[:, self.rgb_bands].to(dtype)
        # resizing is linear with weights summing to 1, so it commutes with the per-channel affine
        x = rgb * self.scale.to(dtype) + self.shift.to(dtype)
        size = self.resized_shape(*image.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        # zeros after normalisation, as Sam.preprocess pads
        return F.pad(x, (0, self.image_size - size[1], 0, self.image_size - size[0]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``B×in_bands×H×W`` → image embedding ``B×256×S/16×S/16``."""
        return self.image_encoder(self.preprocess(image))
