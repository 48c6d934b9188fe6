"""Binary segmentation metrics from one confusion matrix accumulated over a whole evaluation set.

The paper (SPEX) computes F1, Recall, Precision, OA and IoU of the target class from the
pixel counts of the entire test set, not as a mean of per-image scores. The counts are
metric states reduced by sum, so under DDP the processes exchange counts and every process
computes the same scores from the global matrix.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_stat_scores

METRIC_NAMES = ("F1", "Recall", "Precision", "OA", "IoU")


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` as float, 0 where ``den`` is 0 (sklearn's ``zero_division=0``)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


class BinarySegmentationMetrics(Metric):
    """Global-confusion-matrix F1, Recall, Precision, OA and IoU for a binary mask.

    Args:
        from_logits: whether :meth:`update` receives logits (sigmoid is applied) or
            probabilities in [0, 1]. Stated once here rather than guessed from the value range,
            which would silently misread logits that happen to lie in [0, 1].

    Zero division: a score whose denominator is 0 is 0 (e.g. Precision when nothing is
    predicted positive, Recall/F1/IoU when the set has no positive pixels and none predicted;
    OA when no valid pixel was seen), as sklearn's ``zero_division=0``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    tp: torch.Tensor
    fp: torch.Tensor
    tn: torch.Tensor
    fn: torch.Tensor

    def __init__(self, from_logits: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.from_logits = from_logits
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        preds: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor | None = None,
        threshold: float = 0.5,
    ) -> None:
        """Add a batch to the confusion matrix.

        Args:
            preds: ``B×1×H×W`` logits (or probabilities when ``from_logits=False``).
            target: ``B×1×H×W`` in {0, 1}.
            valid: optional ``B×1×H×W`` bool; False pixels are not counted.
            threshold: a pixel is positive when its probability is above this.
        """
        if preds.shape != target.shape:
            raise ValueError(
                f"BinarySegmentationMetrics: preds shape {tuple(preds.shape)} must equal "
                f"target shape {tuple(target.shape)}"
            )
        if valid is not None and (valid.shape != preds.shape or valid.dtype != torch.bool):
            raise ValueError(
                f"BinarySegmentationMetrics: valid must be a bool tensor of shape {tuple(preds.shape)}, "
                f"got {valid.dtype} {tuple(valid.shape)}"
            )
        keep = torch.ones_like(target, dtype=torch.bool) if valid is None else valid
        probs = torch.sigmoid(preds.float()) if self.from_logits else preds.float()
        bad_target = ((target != 0) & (target != 1) & keep).any()
        bad_probs = (~((probs >= 0) & (probs <= 1)) & keep).any()  # also catches NaN
        if bad_target or bad_probs:
            what = (
                "target must hold only 0/1"
                if bad_target
                else (
                    "preds hold NaN"
                    if self.from_logits
                    else "preds must be probabilities in [0, 1] (from_logits=False)"
                )
            )
            raise ValueError(f"BinarySegmentationMetrics: {what} at valid pixels")
        # Invalid pixels get torchmetrics' ignore label, so its global stat scores skip them.
        labels = torch.where(keep, target.long(), torch.full_like(target, -1, dtype=torch.long))
        tp, fp, tn, fn, _ = binary_stat_scores(
            (probs > threshold).long(),
            labels,
            multidim_average="global",
            ignore_index=-1,
            validate_args=False,
        )
        self.tp += tp
        self.fp += fp
        self.tn += tn
        self.fn += fn

    def compute(self) -> dict[str, torch.Tensor]:
        """Scores of the target class from the accumulated counts, keyed by :data:`METRIC_NAMES`."""
        tp, fp, tn, fn = self.tp, self.fp, self.tn, self.fn
        return {
            "F1": _ratio(2 * tp, 2 * tp + fp + fn).float(),
            "Recall": _ratio(tp, tp + fn).float(),
            "Precision": _ratio(tp, tp + fp).float(),
            "OA": _ratio(tp + tn, tp + tn + fp + fn).float(),
            "IoU": _ratio(tp, tp + fp + fn).float(),
        }
