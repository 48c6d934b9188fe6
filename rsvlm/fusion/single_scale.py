"""Single-scale fusion: the "w/o MSAM" baseline of the SPEX ablation (Table VII).

Takes one pyramid level, resizes it to ``1/target_reduction`` of the input if needed and
projects it with a 1×1 conv, so that everything after the fusion sees the same shapes as with
MSAM. The paper's "w/o MSAM" (Sec. IV-C1) uses "only the last-layer feature map from the
vision encoder": ``level=-1`` (1/32, upsampled to MSAM's 1/16), as the ablation recipes set it.
Without ``level`` the level at the output stride is taken (no resizing), a different baseline.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rsvlm.contracts import FusedFeatures, Fusion, check_pyramid, check_token_pool


class SingleScaleFusion(Fusion):
    """One pyramid level → ``FusedFeatures`` (map ``B×D×H/t×W/t``, tokens ``B×(H/t·W/t)×D``).

    Args:
        in_channels: channels of every encoder level (checked against the encoder).
        in_reductions: stride of every encoder level.
        out_channels: D of the fused map and tokens.
        level: which level to use (negative counts from the last; ``-1``: the paper's w/o MSAM);
            ``None`` picks the one whose stride is ``target_reduction``.
        target_reduction: stride of the output map.
        token_pool: visual tokens are the map average-pooled by this factor (1, the paper:
            one token per map cell; 2 keeps the decoder's map and gives the LLM a quarter of
            the tokens).
        norm: ``"none"`` (the paper's plain 1×1 conv) or ``"batch"``: a BatchNorm after the conv, so
            that each channel is centred over the data. Randomly initialised encoders give features
            whose shared offset dwarfs what differs between places (measured on the EarthGPT-X demo:
            about 90 % of a region feature's norm), and a random LLM then takes hundreds of steps
            to find the rest; conv–BN is how segmentation necks (UperNet, MSAM) end.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_reductions: list[int] = [4, 8, 16, 32],
        out_channels: int = 1024,
        level: int | None = None,
        target_reduction: int = 16,
        token_pool: int = 1,
        norm: Literal["none", "batch"] = "none",
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.in_reductions = list(in_reductions)
        if len(self.in_channels) != len(self.in_reductions):
            raise ValueError("SingleScaleFusion: in_channels and in_reductions must have the same length")
        if level is None:
            if target_reduction not in self.in_reductions:
                raise ValueError(
                    f"SingleScaleFusion: no level has stride {target_reduction} (strides {self.in_reductions}); give level"
                )
            level = self.in_reductions.index(target_reduction)
        self.level = level % len(self.in_channels)
        self.out_channels = out_channels
        self.out_reduction = target_reduction
        self.token_pool = check_token_pool("SingleScaleFusion", token_pool)
        if norm not in ("none", "batch"):
            raise ValueError(f"SingleScaleFusion: norm must be 'none' or 'batch', got {norm!r}")
        self.norm = norm
        self.proj = nn.Conv2d(self.in_channels[self.level], out_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(out_channels) if norm == "batch" else nn.Identity()

    def forward(self, features: list[torch.Tensor]) -> FusedFeatures:
        """Level ``level`` (``B×in_channels[level]×h×w``) resized to the output stride and projected:
        map ``B×out_channels×H/t×W/t`` and its tokens."""
        check_pyramid("SingleScaleFusion", features, self.in_channels)
        x = features[self.level]
        stride = self.in_reductions[self.level]
        if stride != self.out_reduction:
            scale = stride / self.out_reduction
            size = (max(1, int(x.shape[-2] * scale)), max(1, int(x.shape[-1] * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        fused = self.bn(self.proj(x))
        return FusedFeatures.from_map(fused, self.token_pool)
