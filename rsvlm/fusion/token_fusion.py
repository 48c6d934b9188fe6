"""LLaVA's visual tokens from one encoder map, unchanged: no parameters.

``[B×D×g×g]`` → ``FusedFeatures(map=B×D×g×g, tokens=B×g²×D)`` (row-major, as the ViT's patches).
:class:`~rsvlm.fusion.single_scale.SingleScaleFusion` would add a 1×1 convolution, which LLaVA's
pretrained projector was not trained after.
"""

from __future__ import annotations

import torch
from einops import rearrange

from rsvlm.contracts import FusedFeatures, Fusion, check_pyramid


class TokenFusion(Fusion):
    """The map of one level, and its pixels as tokens (no parameters by design).

    Args:
        in_channels: the encoder's widths (one level read).
        level: which level (default 0, the only one of :class:`~rsvlm.encoders.clip_tokens.ClipTokenEncoder`).
        in_reduction: that level's stride (14 for ViT-L/14).
    """

    parameter_free = True

    def __init__(self, in_channels: list[int], level: int = 0, in_reduction: int = 14) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.level = level
        self.out_channels = self.in_channels[level]
        self.out_reduction = in_reduction
        self.token_pool = 1

    def forward(self, features: list[torch.Tensor]) -> FusedFeatures:
        check_pyramid("TokenFusion", features, self.in_channels)
        feature_map = features[self.level]
        return FusedFeatures(map=feature_map, tokens=rearrange(feature_map, "b d h w -> b (h w) d"))
