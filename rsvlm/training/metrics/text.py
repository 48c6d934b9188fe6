"""Text-answer metrics: VQA accuracy per question type and referring-object classification.

VQA (RSVQA-LR/HR, GeoMag Table 3): an answer is right when it equals the reference after
:func:`normalize_answer` (lowercase, strip, a trailing period dropped); accuracy per question
type (presence P, comparison C, ...), and their mean ``A`` over the types scored (the paper's
A = (P + C)/2).

Referring-object classification (Osprey's definitions):

* ``S-IoU`` = mean over samples of |W(pred) ∩ W(gt)| / |W(pred) ∪ W(gt)|, W the set of lowercase
  whitespace tokens after ``_ : , . ( )`` become spaces, only the text after a ':' of the prediction kept;
* ``SS`` = mean cosine of sentence embeddings of prediction and reference; the embedder is given
  (Osprey: sentence-transformers ``all-MiniLM-L6-v2``), as a callable ``list[str] → N×D``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch


def normalize_answer(answer: str) -> str:
    """Lowercase, surrounding spaces stripped, one trailing period dropped."""
    text = answer.strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def vqa_accuracy(predictions: Sequence[str], references: Sequence[str], types: Sequence[str]) -> dict[str, float]:
    """Accuracy per question type and ``A``, their mean (types as given, e.g. ``presence``, ``comparison``)."""
    if not len(predictions) == len(references) == len(types):
        raise ValueError(
            f"vqa_accuracy: {len(predictions)} predictions, {len(references)} references, {len(types)} types"
        )
    out: dict[str, float] = {}
    for kind in dict.fromkeys(types):
        pairs = [(p, r) for p, r, t in zip(predictions, references, types) if t == kind]
        out[kind] = sum(normalize_answer(p) == normalize_answer(r) for p, r in pairs) / len(pairs)
    out["A"] = sum(out.values()) / len(out) if out else 0.0
    return out


def _words(text: str) -> set[str]:
    return set(re.sub(r"[_:,.()]", " ", text.lower()).split())


def semantic_iou(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Osprey's S-IoU (see the module docstring)."""
    scores = []
    for p, r in zip(predictions, references, strict=True):
        p = p.split(":")[-1]
        a, b = _words(p), _words(r)
        scores.append(len(a & b) / len(a | b) if a | b else 1.0)
    return sum(scores) / len(scores) if scores else 0.0


def semantic_similarity(
    predictions: Sequence[str], references: Sequence[str], embed: Callable[[list[str]], torch.Tensor]
) -> float:
    """Osprey's SS: mean cosine similarity of ``embed(predictions)`` and ``embed(references)``."""
    a, b = embed(list(predictions)), embed(list(references))
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())
