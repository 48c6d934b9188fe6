"""Short-answer accuracy (VQA, scene classification, referring-object classification) as a torchmetrics ``Metric``.

An answer is right when it equals the reference after
:func:`rsvlm.training.metrics.text.normalize_answer`; ``S-IoU`` is Osprey's word-set overlap
(:func:`rsvlm.training.metrics.text.word_iou`, a fraction) and, given ``similarity_model`` (a local
sentence-transformers folder, ``all-MiniLM-L6-v2`` in the papers), ``SS`` its mean sentence-embedding
cosine, a fraction too (:mod:`rsvlm.training.metrics.similarity`), both averaged over the region pairs of
:func:`rsvlm.training.metrics.text.roc_pairs` (one per answer, one per region of a multi-region answer)
and kept as running sums so that they reduce over processes like the accuracy. Without
``similarity_model``, or without ``sentence-transformers`` installed (then warned once per process),
``SS`` is not among the outputs and ``similarity_skipped`` says why.

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
import logging
from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from rsvlm.training.metrics.similarity import import_sentence_transformers, model_folder, pair_cosines, warn_once
from rsvlm.training.metrics.text import normalize_answer, roc_pairs
from rsvlm.training.metrics.text import word_iou as label_iou

_HALF = 1 << 24
log = logging.getLogger(__name__)
_LOGGED: set[str] = set()  # informational messages already logged in this process


def answer_key(answer: str) -> tuple[int, int]:
    """A stable (process-independent) 48-bit hash of the normalised answer, as two 24-bit halves."""
    value = int.from_bytes(hashlib.blake2b(normalize_answer(answer).encode(), digest_size=6).digest(), "big")
    return value // _HALF, value % _HALF


class AnswerAccuracy(Metric):
    """``accuracy`` (exact match after normalisation), ``S-IoU``, ``accuracy_majority`` and, given
    ``similarity_model``, ``SS`` over all answers seen (module docstring).

    Args:
        similarity_model: the local folder of a sentence-transformers model for ``SS``; None: no ``SS``.

    Raises:
        FileNotFoundError: ``similarity_model`` is given but is not a folder.
    """

    full_state_update = False

    def __init__(self, similarity_model: str | None = None) -> None:
        super().__init__()
        self.add_state("correct", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("word_iou", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")  # region pairs
        self.add_state("reference_keys", [], dist_reduce_fx="cat")  # 2 values per reference, see answer_key
        self.similarity_model: str | None = None
        self.similarity_skipped: str | None = None  # why SS is not logged (for a run record)
        if similarity_model is None:
            self.similarity_skipped = "SS not logged: similarity_model is not set"
            if self.similarity_skipped not in _LOGGED:
                _LOGGED.add(self.similarity_skipped)
                log.info(self.similarity_skipped)
            return
        folder = model_folder(similarity_model)
        try:
            import_sentence_transformers()
        except ImportError as err:
            self.similarity_skipped = f"SS not logged: {err}"
            warn_once(self.similarity_skipped)
            return
        self.similarity_model = folder
        self.add_state("cosine", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"AnswerAccuracy: {len(predictions)} predictions for {len(references)} references")
        pairs: list[tuple[str, str]] = []
        for p, r in zip(predictions, references):
            self.correct += float(normalize_answer(p) == normalize_answer(r))
            pairs += roc_pairs(p, r)
            self.count += 1
        if pairs:
            self.word_iou += sum(label_iou(p, g) for p, g in pairs)
            self.pairs += len(pairs)
        if pairs and self.similarity_model is not None:
            self.cosine += pair_cosines(self.similarity_model, pairs, self.device).sum()
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
        out = {
            "accuracy": self.correct / n,
            "S-IoU": self.word_iou / self.pairs.clamp_min(1),
            "accuracy_majority": self.majority_count() / n,
        }
        if self.similarity_model is not None:
            out["SS"] = self.cosine / self.pairs.clamp_min(1)
        return out
