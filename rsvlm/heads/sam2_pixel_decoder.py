"""GeoMag's pixel decoder (Eq. 1): SAM 2's mask decoder run on several FPN levels, weighted by ω.

    Mask = Σ_l ω_l · Up_{H×W}( Sam2MaskDecoder(prompts, f^l) )

The prompts are the bridge's tokens (``B×K×D``: the ``[SEG]`` states, already fused over the N
tokens of a target by β); each sample is one target, its K tokens the sparse prompt of one
point-batch entry, as LISA and GeoPixel pass the LLM tokens alone (no padding point). Per level
``l`` with map ``f^l`` (``h_l×w_l``) the decoder gets:

* the image embedding ``f^l`` (plus ``no_memory_embedding`` at SAM 2's native stride-16 level,
  as ``Sam2Model`` adds it);
* the dense positional encoding of an ``h_l×w_l`` grid (``Sam2Model.get_image_wide_positional_embeddings``'s
  formula on that grid) and ``no_mask_embed`` as the dense prompt;
* high-resolution skips ``conv_s0(f⁰)`` and ``conv_s1(f¹)`` at the native level, exactly as SAM 2;
  zeros at the other levels, which have no FPN map 2× and 4× finer;

its single-mask output (slot 0; ``dynamic_multimask_via_stability`` off, so evaluation is
deterministic) is ``B×1×4h_l×4w_l`` logits, bilinearly resized to the image. With one level (the
native one) and ω = 1 this is ``Sam2Model``'s own image path (tested).

ω: ``"learned"`` (a parameter, initialised 1/L), ``"learned_softmax"`` (softmax of a parameter)
or ``"fixed"`` (1/L, PixelLM's behaviour). Trainable: the mask decoder (with ``conv_s0``/``conv_s1``)
and ω; frozen: the prompt encoder, the IoU and object-score heads (they get no loss) and
``no_memory_embedding``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rsvlm.contracts import MaskDecoder
from rsvlm.encoders.sam2_hiera import load_sam2, sam2_config

OmegaMode = Literal["learned", "learned_softmax", "fixed"]
NATIVE_LEVEL = 2  # the stride-16 map SAM 2's decoder reads


class Sam2PixelDecoder(MaskDecoder):
    """SAM 2 mask decoder over FPN levels (see the module docstring).

    Args:
        checkpoint: Hugging Face id or folder of a ``Sam2Model`` (the encoder's): its
            ``mask_decoder``, ``prompt_encoder``, ``shared_image_embedding`` and ``no_memory_embedding``.
        config: a ``Sam2Config`` dict instead (random weights); exactly one of the two.
        levels: FPN levels decoded (0, 1, 2 = strides 4, 8, 16).
        omega: how the levels are weighted.
        omega_init: initial ω (default 1/L each).
        dynamic_multimask_via_stability: SAM 2's eval-time swap to a multimask output (off).
        freeze_prompt_encoder: freeze the prompt encoder, the positional encoding and the IoU /
            object-score heads (they get no loss).
        local_files_only: never contact the hub when resolving ``checkpoint``.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        config: dict[str, Any] | None = None,
        levels: list[int] = [0, 1, 2],
        omega: OmegaMode = "learned",
        omega_init: list[float] | None = None,
        dynamic_multimask_via_stability: bool = False,
        freeze_prompt_encoder: bool = True,
        local_files_only: bool = False,
    ) -> None:
        super().__init__()
        if (checkpoint is None) == (config is None):
            raise ValueError("Sam2PixelDecoder: give exactly one of `checkpoint` (id or folder) and `config` (dict)")
        if not levels or sorted(set(levels)) != sorted(levels) or not set(levels) <= {0, 1, 2}:
            raise ValueError(f"Sam2PixelDecoder.levels={levels}: distinct levels among 0, 1, 2")
        if omega not in ("learned", "learned_softmax", "fixed"):
            raise ValueError(f"Sam2PixelDecoder.omega must be learned, learned_softmax or fixed, got {omega!r}")
        if checkpoint is not None:
            sam = load_sam2(checkpoint, local_files_only)
        else:
            from transformers import Sam2Model

            sam = Sam2Model(sam2_config(config))
        self.mask_decoder = sam.mask_decoder
        self.prompt_encoder = sam.prompt_encoder
        self.shared_image_embedding = sam.shared_image_embedding
        self.no_memory_embedding = sam.no_memory_embedding
        self.no_memory_embedding.requires_grad_(False)
        self.mask_decoder.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        if checkpoint is not None:
            for part in (self.mask_decoder, self.prompt_encoder, self.shared_image_embedding):
                part.weights_source = checkpoint
        del sam
        width = self.mask_decoder.config.hidden_size if hasattr(self.mask_decoder, "config") else None
        self.prompt_dim = int(width or self.prompt_encoder.no_mask_embed.weight.shape[-1])
        self.levels = list(levels)
        self.in_channels = [self.prompt_dim] * 3
        count = len(self.levels)
        init = torch.tensor(omega_init if omega_init is not None else [1.0 / count] * count, dtype=torch.float32)
        if init.shape != (count,):
            raise ValueError(f"Sam2PixelDecoder.omega_init needs {count} values (one per level), got {omega_init}")
        self.omega_mode = omega
        if omega == "fixed":
            self.register_buffer("omega", init)
        else:
            self.omega = nn.Parameter(init.log() if omega == "learned_softmax" else init)
        if freeze_prompt_encoder:
            for part in (
                self.prompt_encoder,
                self.shared_image_embedding,
                self.mask_decoder.iou_prediction_head,
                self.mask_decoder.pred_obj_score_head,
            ):
                part.requires_grad_(False)

    def weights(self) -> torch.Tensor:
        """ω, ``(L,)``."""
        return self.omega.softmax(0) if self.omega_mode == "learned_softmax" else self.omega

    def positional_encoding(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """``1×D×h×w``: SAM 2's dense positional encoding on an ``h×w`` grid."""
        table = self.shared_image_embedding.positional_embedding
        grid = torch.ones((height, width), device=table.device, dtype=table.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / height
        x = (grid.cumsum(dim=1) - 0.5) / width
        encoding = self.shared_image_embedding(torch.stack([x, y], dim=-1))
        return encoding.permute(2, 0, 1).unsqueeze(0).to(like.dtype)

    def level_logits(self, features: list[torch.Tensor], prompts: torch.Tensor, level: int) -> torch.Tensor:
        """``B×1×4h_l×4w_l`` single-mask logits of one level."""
        src = features[level]
        batch, width, height, breadth = src.shape
        if level == NATIVE_LEVEL:
            src = src + self.no_memory_embedding.reshape(1, -1, 1, 1).to(src.dtype)
            skips = [self.mask_decoder.conv_s0(features[0]), self.mask_decoder.conv_s1(features[1])]
        else:
            skips = [
                src.new_zeros(batch, width // 8, 4 * height, 4 * breadth),
                src.new_zeros(batch, width // 4, 2 * height, 2 * breadth),
            ]
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, breadth)
        masks, _, _, _ = self.mask_decoder(
            image_embeddings=src,
            image_positional_embeddings=self.positional_encoding(height, breadth, src).expand(batch, -1, -1, -1),
            sparse_prompt_embeddings=prompts.unsqueeze(1).to(src.dtype),  # B×1×K×D: one target per image
            dense_prompt_embeddings=dense.to(src.dtype),
            multimask_output=False,
            high_resolution_features=skips,
        )
        return masks[:, 0, :1]

    def forward(
        self, feature_map: list[torch.Tensor], prompts: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Mask logits ``B×1×H×W``.

        Args:
            feature_map: the encoder's FPN maps, high → low: ``B×D×h_l×w_l`` for l = 0, 1, 2.
            prompts: ``B×K×D`` prompt tokens (the bridge's), D the decoder width.
            image_size: ``(H, W)``.
        """
        if prompts.shape[-1] != self.prompt_dim:
            raise ValueError(f"Sam2PixelDecoder: prompts are {prompts.shape[-1]} wide, the decoder {self.prompt_dim}")
        omega = self.weights()
        total = None
        for weight, level in zip(omega, self.levels):
            logits = F.interpolate(
                self.level_logits(feature_map, prompts, level),
                size=tuple(image_size),
                mode="bilinear",
                align_corners=False,
            )
            total = weight * logits if total is None else total + weight * logits
        return total

    def decode_targets(
        self,
        feature_map: list[torch.Tensor],
        tokens: torch.Tensor,
        image_index: torch.Tensor,
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """Several targets per image: ``T×K×D`` tokens of targets of images ``image_index`` (T)
        → ``T×1×H×W`` logits (each target decoded against its own image's maps)."""
        return self([level[image_index] for level in feature_map], tokens, image_size)
