"""UperNet segmentation head: transformers' ``UperNetHead`` with its classifier.

The head of Hugging Face's ``UperNetForSemanticSegmentation`` (built and initialised by
:func:`rsvlm.fusion.upernet.build_upernet_head`, shared with :class:`rsvlm.fusion.upernet.UperNetFusion`):
per-class logits at the finest pyramid level (1/4 of the image for a stride-4 pyramid);
:meth:`UperNetSegHead.upsample` resizes them to the image, as ``UperNetForSemanticSegmentation``
does. The head uses BatchNorm, so training needs batches of more than one image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rsvlm.contracts import check_pyramid
from rsvlm.fusion.upernet import UperNetHeadConfig, build_upernet_head


class UperNetSegHead(nn.Module):
    """UperNet segmentation head: maps ``B×in_channels[i]×H/r_i×W/r_i`` → logits
    ``B×num_classes×H/r_0×W/r_0`` (the transformers head including its classifier).

    Args:
        in_channels: encoder widths, finest level first.
        num_classes: number of output classes.
        hidden_size: width of the head.
        pool_scales: pyramid-pooling bin sizes.
    """

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        hidden_size: int = 512,
        pool_scales: list[int] = [1, 2, 3, 6],
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.num_classes = num_classes
        config = UperNetHeadConfig(hidden_size=hidden_size, pool_scales=list(pool_scales), num_labels=num_classes)
        self.head = build_upernet_head(self.in_channels, config)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``B×num_classes×h_0×w_0`` at the finest level's resolution."""
        check_pyramid(type(self).__name__, features, self.in_channels)
        return self.head(list(features))

    @staticmethod
    def upsample(logits: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Bilinear resize of ``B×K×h×w`` logits to ``B×K×H×W`` (as transformers' UperNet)."""
        return F.interpolate(logits, size=tuple(image_size), mode="bilinear", align_corners=False)
