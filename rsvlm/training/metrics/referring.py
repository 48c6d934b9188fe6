"""Referring segmentation metrics (RRSIS-D, RefSegRS): the RMSIN / LAVT protocol.

Per sample i with predicted and reference masks P_i, G_i (at the original resolution):
I_i = |P_i ∧ G_i|, U_i = |P_i ∨ G_i|, IoU_i = I_i / U_i, **0 when U_i = 0** (LISA's gIoU scores an
empty–empty pair 1: ``empty_pair=1.0``).

* ``P@k`` = #(IoU_i ≥ k) / n for k in ``thresholds`` (the paper reports 0.5);
* ``oIoU`` = Σ I_i / Σ U_i (LISA's cIoU);
* ``mIoU`` = mean_i IoU_i (LISA's gIoU with ``empty_pair=1.0``).
* ``mIoU_full_mask`` / ``mIoU_empty_mask``: the mIoU a full / an empty prediction would get on the
  same references (the floor a model must clear);
* ``mIoU_prompt_box``: the mIoU of a given baseline prediction per sample (``prompt_masks``: the
  sample's visual-prompt box filled, see :func:`rsvlm.models.task_scoring.prompt_box_masks`), over
  the same samples as ``mIoU``, a sample without one scoring as an empty prediction; reported once
  any sample had one.

States are sums, so under DDP every process computes the numbers of one process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


class ReferringSegmentationMetrics(Metric):
    """P@k, oIoU and mIoU over samples (see the module docstring).

    Args:
        thresholds: the k of ``P@k``.
        empty_pair: IoU of a sample whose prediction and reference are both empty.
    """

    full_state_update = False

    def __init__(self, thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9), empty_pair: float = 0.0) -> None:
        super().__init__()
        self.thresholds = [float(k) for k in thresholds]
        self.empty_pair = float(empty_pair)
        self.add_state("intersection", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("hits", torch.zeros(len(self.thresholds), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        # what a full mask and an empty mask would score on the same references (the floor to beat)
        self.add_state("full_iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("empty_iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("prompt_iou_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("prompted", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _iou(self, p: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Intersection, union and IoU of bool masks (``empty_pair`` when both are empty)."""
        inter = (p & g).sum().double()
        union = (p | g).sum().double()
        iou = inter / union if union > 0 else torch.tensor(self.empty_pair, dtype=torch.float64, device=union.device)
        return inter, union, iou

    def update(
        self,
        predicted: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor | Sequence[torch.Tensor],
        prompt_masks: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        """``predicted`` (bool masks, or logits: > 0) and ``target`` (bool), ``N×H×W`` or lists of ``H_i×W_i``;
        ``prompt_masks``: each sample's baseline prediction (bool, or None: that sample has none)."""
        prompts = [None] * len(target) if prompt_masks is None else list(prompt_masks)
        if len(prompts) != len(target):
            raise ValueError(f"ReferringSegmentationMetrics: {len(prompts)} prompt masks for {len(target)} samples")
        for p, g, b in zip(predicted, target, prompts):
            p = p > 0 if p.is_floating_point() else p.bool()
            g = g.bool()
            if p.shape != g.shape:
                raise ValueError(
                    f"ReferringSegmentationMetrics: prediction {tuple(p.shape)} vs reference {tuple(g.shape)}"
                )
            inter, union, iou = self._iou(p, g)
            self.intersection += inter
            self.union += union
            self.iou_sum += iou
            self.hits += (iou >= torch.tensor(self.thresholds, dtype=torch.float64, device=iou.device)).double()
            self.count += 1
            area = g.sum().double()
            self.full_iou_sum += area / g.numel()
            empty_iou = area.new_tensor(self.empty_pair if area == 0 else 0.0)
            self.empty_iou_sum += empty_iou
            if b is not None and b.shape != g.shape:
                raise ValueError(f"ReferringSegmentationMetrics: prompt mask {tuple(b.shape)} vs {tuple(g.shape)}")
            self.prompt_iou_sum += empty_iou if b is None else self._iou(b.to(g.device).bool(), g)[2]
            self.prompted += float(b is not None)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        out = {f"P@{k:g}": hit / n for k, hit in zip(self.thresholds, self.hits)}
        out["oIoU"] = self.intersection / self.union if self.union > 0 else self.union.new_tensor(0.0)
        out["mIoU"] = self.iou_sum / n
        out["mIoU_full_mask"] = self.full_iou_sum / n
        out["mIoU_empty_mask"] = self.empty_iou_sum / n
        if self.prompted > 0:  # the same on every process: compute runs on the synced states
            out["mIoU_prompt_box"] = self.prompt_iou_sum / n
        return out
