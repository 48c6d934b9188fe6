"""Visual grounding accuracy: Acc@τ = #(IoU(predicted box, reference box) ≥ τ) / n (DIOR-RSVG: τ = 0.5).

Boxes are ``(x1, y1, x2, y2)`` in any one unit per pair; IoU is ``torchvision.ops.box_iou``. A sample
with no parsable predicted box counts as a miss (give a degenerate box, e.g. zeros).

Given each pair's image extent (``image_boxes``: the image's own box in the same unit, without the
pad of a square), the trivial baseline is scored beside: ``Acc@τ_centre_box`` / ``mIoU_centre_box``,
the box centred in the image with half the image's width and half its height (a fixed size: nothing
of the reference leaks into it).

A model that grounds by segmenting (the answer ``<p>ship</p> [SEG]``) gives its box as the decoded
mask's largest region (:func:`mask_boxes`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchmetrics import Metric
from torchvision.ops import box_iou, masks_to_boxes


def centre_boxes(image_boxes: torch.Tensor) -> torch.Tensor:
    """``N×4`` image extents → the box centred in each, half its width and half its height."""
    centre = (image_boxes[:, :2] + image_boxes[:, 2:]) / 2
    half = (image_boxes[:, 2:] - image_boxes[:, :2]) / 4  # a half-size box spans ± a quarter side
    return torch.cat([centre - half, centre + half], dim=1)


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of an ``H×W`` bool mask (the first of equal ones; empty stays empty)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return labels > 0
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def mask_boxes(logits: torch.Tensor) -> torch.Tensor:
    """``T×1×H×W`` mask logits → ``T×4`` boxes ``(x0, y0, x1, y1)`` around the largest 8-connected
    region of each mask (logit > 0), as pixel edges (ends exclusive, COCO's ``x + w``, as the generated
    references); zeros (a miss) for an empty mask.

    One region, because a referring phrase names one object and each target has its own ``[SEG]``: on
    the EarthGPT-X demo's validation split, the box around every pixel of the mask spread over stray
    blobs (Acc@0.5 0.11) where the largest region's box held the object (0.56).
    """
    masks = (logits[:, 0] > 0).cpu().numpy()
    boxes = torch.zeros(len(masks), 4, dtype=torch.float64)
    for row, mask in enumerate(masks):
        if mask.any():
            region = torch.from_numpy(largest_region(mask))[None]
            boxes[row] = masks_to_boxes(region)[0].double() + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    return boxes


class GroundingAccuracy(Metric):
    """Acc@``threshold`` and mean IoU over box pairs, and the centre-box baseline's (DDP-safe sums)."""

    full_state_update = False

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = float(threshold)
        for name in ("hits", "iou_sum", "count", "centre_hits", "centre_iou_sum", "centre_count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _pairs(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        iou = torch.nan_to_num(box_iou(predicted.double(), target.double()).diagonal(), nan=0.0)
        return iou.to(self.count.device)

    def update(self, predicted: torch.Tensor, target: torch.Tensor, image_boxes: torch.Tensor | None = None) -> None:
        """``N×4`` predicted and reference boxes, pairwise; ``image_boxes`` (``N×4``, optional): each
        pair's image extent, for the centre-box baseline."""
        if predicted.shape != target.shape or predicted.shape[-1] != 4 or predicted.dim() != 2:
            raise ValueError(
                f"GroundingAccuracy: boxes must be N×4 pairs, got {tuple(predicted.shape)} and {tuple(target.shape)}"
            )
        iou = self._pairs(predicted, target)
        self.hits += (iou >= self.threshold).sum()
        self.iou_sum += iou.sum()
        self.count += len(iou)
        if image_boxes is None:
            return
        if image_boxes.shape != target.shape:
            raise ValueError(f"GroundingAccuracy: image_boxes {tuple(image_boxes.shape)} vs {tuple(target.shape)}")
        centre = self._pairs(centre_boxes(image_boxes.double()), target)
        self.centre_hits += (centre >= self.threshold).sum()
        self.centre_iou_sum += centre.sum()
        self.centre_count += len(centre)

    def compute(self) -> dict[str, torch.Tensor]:
        n, acc = self.count.clamp_min(1), f"Acc@{self.threshold:g}"
        out = {acc: self.hits / n, "mIoU": self.iou_sum / n}
        if self.centre_count > 0:  # the same on every process: compute runs on the synced states
            out[f"{acc}_centre_box"] = self.centre_hits / self.centre_count
            out["mIoU_centre_box"] = self.centre_iou_sum / self.centre_count
        return out
