"""Binary segmentation metrics: F1, Recall, Precision, OA and IoU of the target class.

Two averages (``average``):

* ``"global"``: one confusion matrix accumulated over the whole evaluation set (pixel counts
  summed over images), then the scores;
* ``"image"``: the scores of every image, then their mean. The SPEX paper's tables average this
  way: in every one of them IoU > F1 / (2 − F1), which one global matrix cannot give (for one
  matrix IoU = F1 / (2 − F1) exactly).

Both keep their states as sums, so under DDP the processes exchange sums and every process
computes the same scores.
"""

from __future__ import annotations

from typing import Literal

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_stat_scores

METRIC_NAMES = ("F1", "Recall", "Precision", "OA", "IoU")


def _ratio(num: torch.Tensor, den: torch.Tensor, zero_division: float = 0.0) -> torch.Tensor:
    """``num / den`` as float64, ``zero_division`` where ``den`` is 0 (as sklearn's argument)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, zero_division))


def scores(tp: torch.Tensor, fp: torch.Tensor, tn: torch.Tensor, fn: torch.Tensor, zero_division: float = 0.0):
    """F1, Recall, Precision, OA, IoU (float64, keyed by :data:`METRIC_NAMES`) from counts of any shape."""
    return {
        "F1": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
        "Recall": _ratio(tp, tp + fn, zero_division),
        "Precision": _ratio(tp, tp + fp, zero_division),
        "OA": _ratio(tp + tn, tp + tn + fp + fn, zero_division),
        "IoU": _ratio(tp, tp + fp + fn, zero_division),
    }


class BinarySegmentationMetrics(Metric):
    """F1, Recall, Precision, OA and IoU for a binary mask, over the set or per image.

    Args:
        from_logits: whether :meth:`update` receives logits (sigmoid is applied) or
            probabilities in [0, 1]. Stated once here rather than guessed from the value range,
            which would silently misread logits that happen to lie in [0, 1].
        average: ``"global"`` (one confusion matrix over the set) or ``"image"`` (the mean of
            per-image scores); see the module docstring.

    Zero division, ``"global"``: a score whose denominator is 0 is 0 (e.g. Precision when
    nothing is predicted positive over the whole set; OA when no valid pixel was seen), as
    sklearn's ``zero_division=0``.

    Zero division, ``"image"``: a score whose denominator is 0 on an image is 1, as sklearn's
    ``zero_division=1``: an image whose target and prediction are both empty scores 1 on every
    metric (it was answered perfectly: nothing there, nothing found); an empty target with
    false positives scores Recall 1 and F1 / Precision / IoU 0; an empty prediction of a
    non-empty target scores Precision 1 and F1 / Recall / IoU 0. Images without a valid pixel
    are left out of the mean.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    tp: torch.Tensor
    fp: torch.Tensor
    tn: torch.Tensor
    fn: torch.Tensor

    def __init__(self, from_logits: bool = True, average: Literal["global", "image"] = "global", **kwargs) -> None:
        super().__init__(**kwargs)
        if average not in ("global", "image"):
            raise ValueError(f"BinarySegmentationMetrics: average must be 'global' or 'image', got {average!r}")
        self.from_logits = from_logits
        self.average = average
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # Per-image averaging: the sum of each score over the images seen, and their number.
        self.add_state("score_sums", default=torch.zeros(len(METRIC_NAMES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

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
        stats = binary_stat_scores(
            (probs > threshold).long(),
            labels,
            multidim_average="global" if self.average == "global" else "samplewise",
            ignore_index=-1,
            validate_args=False,
        )
        # (5,) globally or (B, 5) per image: tp, fp, tn, fn, support.
        tp, fp, tn, fn = stats[..., 0], stats[..., 1], stats[..., 2], stats[..., 3]
        if self.average == "image":  # counts are per image (B,)
            seen = (tp + fp + tn + fn) > 0
            per_image = scores(tp[seen], fp[seen], tn[seen], fn[seen], zero_division=1.0)
            self.score_sums += torch.stack([per_image[k].sum() for k in METRIC_NAMES])
            self.images += seen.sum()
            tp, fp, tn, fn = tp.sum(), fp.sum(), tn.sum(), fn.sum()
        self.tp += tp
        self.fp += fp
        self.tn += tn
        self.fn += fn

    def compute(self) -> dict[str, torch.Tensor]:
        """Scores of the target class, keyed by :data:`METRIC_NAMES` (float32)."""
        if self.average == "image":
            means = self.score_sums / self.images.clamp(min=1)
            return {k: means[i].float() for i, k in enumerate(METRIC_NAMES)}
        return {k: v.float() for k, v in scores(self.tp, self.fp, self.tn, self.fn).items()}
