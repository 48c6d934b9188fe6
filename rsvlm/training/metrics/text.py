"""Text-answer metrics: VQA accuracy per question type and referring-object classification.

VQA (RSVQA-LR/HR, GeoMag Table 3): an answer is right when it equals the reference after
:func:`normalize_answer` (lowercase, strip, a trailing period dropped); accuracy per question
type (presence P, comparison C, ...), and their mean ``A`` over the types scored (the paper's
A = (P + C)/2).

Referring-object classification, as Osprey (``osprey/eval/lvis_paco_eval.py``) and SPHINX-V score it;
one pre-processing (:func:`roc_pairs`) serves both scores:

* the prediction keeps only the text after its first ':' (when it has one) and has '.', ':', ','
  made spaces (:func:`roc_prediction`); the reference has '_' and ':' made spaces (:func:`roc_reference`);
* a multi-region answer (reference lines ``Region k: label``) is scored per region: the prediction's
  line ``Region k: ...`` pairs with the reference's region k (without numbered lines, the i-th line
  with the i-th region; a region left unanswered pairs with an empty prediction), and the means run
  over all region pairs k;
* ``S-IoU`` = mean_k |W(p_k) ∩ W(g_k)| / |W(p_k) ∪ W(g_k)|, W the set of lowercase whitespace tokens
  (1 when both are empty, where Osprey would divide by zero);
* ``SS`` = mean_k cos(e(p_k), e(g_k)) of sentence embeddings (Osprey: sentence-transformers
  ``all-MiniLM-L6-v2``); here given as a callable ``list[str] → N×D``, and as a torchmetrics metric
  over a local sentence-transformers folder in :mod:`rsvlm.training.metrics.similarity` (×100 there, as
  the papers report it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

_REGION_LINE = re.compile(r"^\s*<?region\s*(\d+)>?\s*:", re.IGNORECASE)


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


def roc_prediction(text: str) -> str:
    """Osprey's prediction pre-processing: the text after the first ':' (if any), '.', ':', ',' made spaces."""
    if ":" in text:
        text = text.split(":")[1]
    return re.sub(r"[.:,]", " ", text).strip()


def roc_reference(text: str) -> str:
    """Osprey's reference pre-processing: '_' and ':' made spaces."""
    return re.sub(r"[_:]", " ", text).strip()


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def roc_pairs(prediction: str, reference: str) -> list[tuple[str, str]]:
    """The (prediction, reference) label pairs scored for one answer, pre-processed (module docstring):
    one pair, or one per region when every line of the reference reads ``Region k: label``."""
    lines = _lines(reference)
    regions = [_REGION_LINE.match(line) for line in lines]
    if not lines or not all(regions):
        return [(roc_prediction(prediction), roc_reference(reference))]
    predicted = _lines(prediction)
    numbered: dict[int, str] = {}
    for line in predicted:
        if match := _REGION_LINE.match(line):
            numbered.setdefault(int(match[1]), line)
    pairs = []
    for i, (line, match) in enumerate(zip(lines, regions)):
        if numbered:
            answer = numbered.get(int(match[1]), "")
        else:
            answer = predicted[i] if i < len(predicted) else ""
        pairs.append((roc_prediction(answer), roc_reference(line[match.end() :])))
    return pairs


def word_iou(prediction: str, reference: str) -> float:
    """|W(p) ∩ W(g)| / |W(p) ∪ W(g)| of two pre-processed labels, W the lowercase whitespace tokens."""
    a, b = set(prediction.lower().split()), set(reference.lower().split())
    return len(a & b) / len(a | b) if a | b else 1.0


def semantic_iou(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Osprey's S-IoU (see the module docstring), a fraction: the mean over every region pair."""
    pairs = [pair for p, r in zip(predictions, references, strict=True) for pair in roc_pairs(p, r)]
    return sum(word_iou(p, r) for p, r in pairs) / len(pairs) if pairs else 0.0


def semantic_similarity(
    predictions: Sequence[str], references: Sequence[str], embed: Callable[[list[str]], torch.Tensor]
) -> float:
    """Osprey's SS as a fraction: mean cosine similarity of ``embed`` of the pre-processed region pairs."""
    pairs = [pair for p, r in zip(predictions, references, strict=True) for pair in roc_pairs(p, r)]
    if not pairs:
        return 0.0
    a, b = embed([p for p, _ in pairs]), embed([r for _, r in pairs])
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean())
