"""Short-answer accuracy (VQA, scene classification, referring-object classification) as a torchmetrics ``Metric``.

An answer is right when it equals the reference after
:func:`rsvlm.training.metrics.text.normalize_answer`; ``S-IoU`` is Osprey's word-set overlap
(:func:`rsvlm.training.metrics.text.semantic_iou`), kept as a running sum so that it reduces over
processes like the accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from rsvlm.training.metrics.text import normalize_answer, semantic_iou


class AnswerAccuracy(Metric):
    """``accuracy`` (exact match after normalisation) and ``S-IoU`` over all answers seen."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("word_iou", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"AnswerAccuracy: {len(predictions)} predictions for {len(references)} references")
        for p, r in zip(predictions, references):
            self.correct += float(normalize_answer(p) == normalize_answer(r))
            self.word_iou += semantic_iou([p], [r])
            self.count += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        return {"accuracy": self.correct / n, "S-IoU": self.word_iou / n}
