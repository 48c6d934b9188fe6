"""SAM2's Hiera image encoder with its FPN neck (transformers' ``Sam2VisionModel``), frozen.

GeoMag reads pixel-level masks from a frozen SAM 2 image encoder (the paper's Hiera-L): the
image is resized to the encoder's square input, normalised with ImageNet statistics, and the
FPN neck's maps are returned high → low resolution — ``B×256×s/4²``, ``B×256×s/8²``,
``B×256×s/16²`` for an ``s×s`` input (1024 → 256², 128², 64²). They are the *raw* FPN maps:
``conv_s0`` / ``conv_s1`` and ``no_memory_embedding``, which ``Sam2Model`` applies before its
decoder, belong to :class:`rsvlm.heads.sam2_pixel_decoder.Sam2PixelDecoder`, as in SAM 2.

Weights: a Hugging Face id or a local folder of a ``Sam2Model`` checkpoint
(``facebook/sam2.1-hiera-large``); only its ``vision_encoder`` is kept. Or ``config``: a
``Sam2Config`` dict (or its ``vision_config``) for a randomly initialised encoder (tests, meta builds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rsvlm.contracts import check_image_bands
from rsvlm.encoders._stem import FreezableEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_sam2(model: str, local_files_only: bool = False) -> Any:
    """transformers' ``Sam2Model`` from a hub id or folder, with a one-line error naming it."""
    try:
        from transformers import Sam2Model
    except ImportError as err:  # transformers < 4.56
        raise ImportError("SAM 2 needs transformers >= 4.56 (Sam2Model); pip install -U transformers") from err
    try:
        return Sam2Model.from_pretrained(model, local_files_only=local_files_only)
    except (OSError, ValueError) as error:  # a missing folder is a ValueError (not a repo id) in some versions
        raise OSError(
            f"SAM 2 model={model!r}: could not load a Sam2Model ({str(error).splitlines()[0]}). Give a local folder "
            "saved with save_pretrained, or download the Hugging Face id (facebook/sam2.1-hiera-large) first."
        ) from error


def sam2_config(config: dict[str, Any]) -> Any:
    """A ``Sam2Config`` from a dict of its fields (``vision_config``, ``prompt_encoder_config``, ...)."""
    from transformers import Sam2Config

    return Sam2Config(**config)


class Sam2HieraEncoder(FreezableEncoder):
    """SAM 2 image encoder: ``B×in_bands×H×W`` in ``[0, 1]`` → FPN maps ``B×D×s/r×s/r``, r = 4, 8, 16.

    Args:
        model: Hugging Face id or folder of a ``Sam2Model`` checkpoint.
        config: a ``Sam2Config`` dict instead (random weights); exactly one of the two.
        image_size: the square input side ``s`` the encoder was built for (1024 for the official
            checkpoints; its ``backbone_feature_sizes`` are ``s/4, s/8, s/16``).
        in_bands: bands of the batch's image.
        rgb_bands: indices of red, green, blue among them (SAM 2 reads RGB).
        mean, std: per-channel normalisation of the RGB input (ImageNet's, as SAM 2).
        freeze: no gradients into the encoder, which also stays in eval mode (GeoMag's choice).
        local_files_only: never contact the hub when resolving ``model``.
    """

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        image_size: int = 1024,
        in_bands: int = 3,
        rgb_bands: list[int] = [0, 1, 2],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        freeze: bool = True,
        local_files_only: bool = False,
    ) -> None:
        super().__init__()
        if (model is None) == (config is None):
            raise ValueError("Sam2HieraEncoder: give exactly one of `model` (id or folder) and `config` (dict)")
        if len(rgb_bands) != 3 or not all(0 <= b < in_bands for b in rgb_bands):
            raise ValueError(f"Sam2HieraEncoder.rgb_bands={rgb_bands}: need 3 band indices below in_bands={in_bands}")
        if model is not None:
            self.vision = load_sam2(model, local_files_only).vision_encoder
            self.vision.weights_source = model  # trained-only checkpoints leave what this source restores out
        else:
            from transformers import Sam2VisionModel

            self.vision = Sam2VisionModel(sam2_config(config).vision_config)
        vision_config = self.vision.config
        sizes = [tuple(s) for s in vision_config.backbone_feature_sizes]
        expected = [(image_size // r, image_size // r) for r in (4, 8, 16)]
        if sizes != expected:
            raise ValueError(
                f"Sam2HieraEncoder.image_size={image_size}: the encoder's backbone_feature_sizes {sizes} "
                f"need image_size {sizes[0][0] * 4}"
            )
        self.image_size = image_size
        self.in_bands = in_bands
        self.rgb_bands = list(rgb_bands)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        width = vision_config.fpn_hidden_size
        self.channels = [width] * vision_config.num_feature_levels
        self.reductions = [4, 8, 16][: vision_config.num_feature_levels]
        if freeze:
            self.freeze_part("vision")

    @property
    def out_channels(self) -> list[int]:
        """The maps' widths, for a decoder that reads them (``mask_encoder`` slot)."""
        return list(self.channels)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """RGB bands, resized to ``s×s`` (bilinear, no aspect-preserving pad, as SAM 2), normalised."""
        check_image_bands("Sam2HieraEncoder", image, self.in_bands)
        rgb = image[:, self.rgb_bands]
        if tuple(rgb.shape[-2:]) != (self.image_size, self.image_size):
            rgb = F.interpolate(rgb, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (rgb - self.mean.to(rgb.dtype)) / self.std.to(rgb.dtype)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``B×in_bands×H×W`` → ``[B×D×s/4×s/4, B×D×s/8×s/8, B×D×s/16×s/16]`` (high → low)."""
        out = self.vision(pixel_values=self.preprocess(image), return_dict=True)
        return list(out.fpn_hidden_states)
