"""Short-answer accuracy (VQA, scene classification, referring-object classification) as a torchmetrics ``Metric``.

An answer is right when it equals the reference after
:func:`rsvlm.training.metrics.text.normalize_answer`; ``S-IoU`` is Osprey's word-set overlap
(:func:`rsvlm.training.metrics.text.semantic_iou`), kept as a running sum so that it reduces over
processes like the accuracy.

``accuracy_majority`` is the trivial baseline beside them: the accuracy of answering every sample
with the split's most frequent (normalised) reference answer, i.e. the best constant answer on the
scored samples. It is at least the chance level 1 / (number of distinct answers) and, being picked
on the scored references themselves, an upper bound of any constant answer. The references are kept
as 48-bit hashes of their normalised text (two 24-bit halves, exact in float32, so that the state
gathers over processes like torchmetrics' own empty placeholder); two different answers colliding is
negligible (≈ k² / 2⁴⁹ for k distinct answers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from rsvlm.training.metrics.text import normalize_answer, semantic_iou

_HALF = 1 << 24


def answer_key(answer: str) -> tuple[int, int]:
    """A stable (process-independent) 48-bit hash of the normalised answer, as two 24-bit halves."""
    value = int.from_bytes(hashlib.blake2b(normalize_answer(answer).encode(), digest_size=6).digest(), "big")
    return value // _HALF, value % _HALF


class AnswerAccuracy(Metric):
    """``accuracy`` (exact match after normalisation), ``S-IoU`` and ``accuracy_majority`` over all
    answers seen."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("word_iou", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("reference_keys", [], dist_reduce_fx="cat")  # 2 values per reference, see answer_key

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"AnswerAccuracy: {len(predictions)} predictions for {len(references)} references")
        for p, r in zip(predictions, references):
            self.correct += float(normalize_answer(p) == normalize_answer(r))
            self.word_iou += semantic_iou([p], [r])
            self.count += 1
        if references:
            keys = [half for r in references for half in answer_key(r)]
            self.reference_keys.append(torch.tensor(keys, dtype=self.dtype, device=self.device))

    def majority_count(self) -> torch.Tensor:
        """How many references equal the most frequent one (0 without references)."""
        keys = self.reference_keys
        keys = dim_zero_cat(keys) if isinstance(keys, list) and keys else keys
        if isinstance(keys, list) or keys.numel() == 0:
            return self.count.new_tensor(0.0)
        halves = keys.reshape(-1, 2).long()
        _, counts = torch.unique(halves[:, 0] * _HALF + halves[:, 1], return_counts=True)
        return counts.max().to(self.count)

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp_min(1)
        return {
            "accuracy": self.correct / n,
            "S-IoU": self.word_iou / n,
            "accuracy_majority": self.majority_count() / n,
        }
