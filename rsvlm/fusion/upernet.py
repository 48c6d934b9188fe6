"""UperNet (pyramid pooling + FPN) over an encoder pyramid, as a fusion.

:class:`UperNetFusion` and :class:`rsvlm.heads.upernet.UperNetSegHead` wrap ``transformers.models.upernet.modeling_upernet.UperNetHead`` (the
mmsegmentation-derived head of Hugging Face's ``UperNetForSemanticSegmentation``); this file
is only glue: a small config object with the fields that head reads, checks of the input
widths, and the output layout rsvlm's contracts ask for.

* :class:`UperNetFusion` — usable in place of MSAM (the paper's Table IX): the head's fused
  FPN map (``fpn_bottleneck`` output at the finest level, before its classifier) resized to
  1/``target_reduction`` of the image and projected by a 1×1 conv to ``out_channels``.
* :class:`rsvlm.heads.upernet.UperNetSegHead` — the full head with its 1×1 classifier (built
  by :func:`build_upernet_head` here): per-class logits at the finest level.

Weights are initialised as transformers initialises ``UperNetForSemanticSegmentation``:
convs ``N(0, initializer_range)`` with zero bias, batch norms at identity. The head uses
BatchNorm, so training needs batches of more than one image (the 1×1 pyramid-pooling branch
sees one value per channel and image).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.upernet.modeling_upernet import UperNetHead

from rsvlm.contracts import FusedFeatures, Fusion, check_pyramid, check_token_pool


@dataclass
class UperNetHeadConfig:
    """The fields of ``UperNetConfig`` that ``UperNetHead`` reads (and the initialiser)."""

    hidden_size: int = 512
    pool_scales: list[int] = field(default_factory=lambda: [1, 2, 3, 6])
    num_labels: int = 1
    initializer_range: float = 0.02


def build_upernet_head(in_channels: list[int], config: UperNetHeadConfig) -> UperNetHead:
    """A transformers ``UperNetHead`` for an encoder of widths ``in_channels``, initialised
    like ``UperNetForSemanticSegmentation``."""
    head = UperNetHead(config, in_channels=list(in_channels))
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, mean=0.0, std=config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return head


class UperNetFusion(Fusion):
    """UperNet fusion: maps ``B×in_channels[i]×H/r_i×W/r_i`` → ``FusedFeatures`` with
    ``map`` ``B×out_channels×H/t×W/t`` and ``tokens`` ``B×(H/t·W/t)×out_channels``
    (t = ``target_reduction``, tokens row-major).

    Args:
        in_channels: encoder widths, finest level first.
        in_reductions: encoder strides; only ``in_reductions[0]`` (the finest) is used, to
            find the image size the output is resized against.
        hidden_size: width of the UperNet head (PPM and FPN channels).
        pool_scales: pyramid-pooling bin sizes.
        out_channels: width of the fused map and tokens (1024 in the paper, like MSAM).
        target_reduction: stride of the output map w.r.t. the image (16, like MSAM).
        token_pool: visual tokens are the map average-pooled by this factor (1, the paper:
            one token per map cell; 2 keeps the decoder's map and gives the LLM a quarter of
            the tokens).
    """

    def __init__(
        self,
        in_channels: list[int],
        in_reductions: list[int] = [4, 8, 16, 32],
        hidden_size: int = 512,
        pool_scales: list[int] = [1, 2, 3, 6],
        out_channels: int = 1024,
        target_reduction: int = 16,
        token_pool: int = 1,
    ) -> None:
        super().__init__()
        if len(in_reductions) != len(in_channels):
            raise ValueError(
                f"UperNetFusion: in_reductions {list(in_reductions)} and in_channels {list(in_channels)} "
                "need one entry per encoder level"
            )
        self.in_channels = list(in_channels)
        self.in_reductions = list(in_reductions)
        self.out_channels = out_channels
        self.out_reduction = target_reduction
        self.token_pool = check_token_pool("UperNetFusion", token_pool)
        config = UperNetHeadConfig(hidden_size=hidden_size, pool_scales=list(pool_scales))
        self.head = build_upernet_head(self.in_channels, config)
        # the fused FPN map is the head's output without its classifier
        self.head.classifier = nn.Identity()
        self.proj = nn.Conv2d(hidden_size, out_channels, kernel_size=1)
        nn.init.normal_(self.proj.weight, std=config.initializer_range)
        nn.init.zeros_(self.proj.bias)

    def fpn_map(self, features: list[torch.Tensor]) -> torch.Tensor:
        """UperNet's fused map ``B×hidden_size×H/r_0×W/r_0`` (before any classifier)."""
        check_pyramid(type(self).__name__, features, self.in_channels)
        return self.head(list(features))

    def forward(self, features: list[torch.Tensor]) -> FusedFeatures:
        fused = self.fpn_map(features)
        h0, w0 = features[0].shape[-2:]
        scale = self.in_reductions[0]
        size = (max(1, h0 * scale // self.out_reduction), max(1, w0 * scale // self.out_reduction))
        if tuple(fused.shape[-2:]) != size:
            fused = F.interpolate(fused, size=size, mode="bilinear", align_corners=False)
        fused = self.proj(fused)
        return FusedFeatures.from_map(fused, self.token_pool)
