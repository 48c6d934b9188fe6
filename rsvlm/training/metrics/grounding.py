"""Visual grounding accuracy: Acc@τ = #(IoU(predicted box, reference box) ≥ τ) / n (DIOR-RSVG: τ = 0.5).

Boxes are ``(x1, y1, x2, y2)`` in any one unit per pair; IoU is ``torchvision.ops.box_iou``. A sample
with no parsable predicted box counts as a miss (give a degenerate box, e.g. zeros).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchvision.ops import box_iou


class GroundingAccuracy(Metric):
    """Acc@``threshold`` and mean IoU over box pairs (DDP-safe sums)."""

    full_state_update = False

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.add_state("hits", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """``N×4`` predicted and reference boxes, pairwise."""
        if predicted.shape != target.shape or predicted.shape[-1] != 4:
            raise ValueError(
                f"GroundingAccuracy: boxes must be N×4 pairs, got {tuple(predicted.shape)} and {tuple(target.shape)}"
            )
        iou = torch.nan_to_num(box_iou(predicted.double(), target.double()).diagonal(), nan=0.0)
        self.hits += (iou >= self.threshold).sum()
        self.iou_sum += iou.sum()
        self.count += len(iou)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        return {f"Acc@{self.threshold:g}": self.hits / n, "mIoU": self.iou_sum / n}
