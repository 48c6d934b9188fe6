"""Scores per task: which metric each task of a model keeps, and how a batch updates them.

A batch says each sample's task (``batch["task"]``, default the model's first). A task's metric
is one of :data:`METRIC_KINDS`:

* ``binary``: SPEX's binary segmentation scores of the decoded masks (F1, Recall, Precision, OA, IoU);
* ``referring``: referring segmentation P@k, oIoU, mIoU of the decoded masks (one per target);
* ``answer``: short-answer accuracy and S-IoU of the generated text against the reference
  response (VQA, scene classification, referring-object classification); scored only where the
  text was generated;
* ``none``: trained, not scored here (captions are scored over a whole split by ``rsvlm evaluate``
  with :mod:`rsvlm.training.metrics.captions`).

A cropper that routes by a classifier (MagCrop with GeoMag's task-granularity classifier) is
scored too: :data:`ROUTING` keeps the classifier's accuracy against the batch's gold
granularity, logged as ``<split>/granularity_classifier/accuracy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from rsvlm.training.metrics import BinarySegmentationMetrics
from rsvlm.training.metrics.answers import AnswerAccuracy
from rsvlm.training.metrics.referring import ReferringSegmentationMetrics

MetricKind = Literal["binary", "referring", "answer", "none"]
METRIC_KINDS: tuple[str, ...] = ("binary", "referring", "answer", "none")
SPLITS = ("val", "val_teacher_forced", "test", "test_teacher_forced")
#: The metrics entry of a routing classifier (not a task: every sample is routed).
ROUTING = "granularity_classifier"


def build_task_metrics(
    tasks: list[str],
    kinds: Mapping[str, str] | None,
    average: Literal["global", "image"],
    routing_labels: list[str] | None = None,
) -> nn.ModuleDict:
    """``split → task → metric`` for every split the model logs (a task's kind defaults to ``binary``),
    plus :data:`ROUTING` → accuracy over ``routing_labels`` when a cropper routes by a classifier."""
    kinds = dict(kinds or {})
    unknown = sorted(set(kinds) - set(tasks))
    if unknown:
        raise KeyError(f"task_metrics names task(s) {unknown} that are not in tasks {tasks}")
    bad = {t: k for t, k in kinds.items() if k not in METRIC_KINDS}
    if bad:
        raise ValueError(f"task_metrics: unknown metric kind(s) {bad}; known: {', '.join(METRIC_KINDS)}")

    def metric(task: str) -> nn.Module:
        kind = kinds.get(task, "binary")
        if kind == "referring":
            return ReferringSegmentationMetrics(thresholds=(0.5,))
        if kind == "none":
            return nn.Identity()
        return AnswerAccuracy() if kind == "answer" else BinarySegmentationMetrics(average=average)

    def split_metrics() -> nn.ModuleDict:
        out = nn.ModuleDict({t: metric(t) for t in tasks})
        if routing_labels:
            out[ROUTING] = MetricCollection({"accuracy": MulticlassAccuracy(len(routing_labels), average="micro")})
        return out

    return nn.ModuleDict({split: split_metrics() for split in SPLITS})


def routing_labels(cropper: nn.Module | None) -> list[str] | None:
    """The classes of a cropper's routing classifier (MagCrop's ``classifier.labels``), or None."""
    classifier = getattr(cropper, "classifier", None)
    return None if classifier is None else list(classifier.labels)


def update_routing_metric(metrics: nn.ModuleDict, cropper: nn.Module | None, batch: Mapping[str, Any]) -> None:
    """Score the cropper's classifier (``cropper.routing(batch)``) against the batch's gold
    ``granularity``; nothing when either is missing."""
    gold = batch.get("granularity")
    if ROUTING not in metrics or gold is None or (predicted := cropper.routing(batch)) is None:
        return
    labels = routing_labels(cropper)
    index = [labels.index(g) if isinstance(g, str) else int(g) for g in gold]
    metrics[ROUTING].update(torch.tensor([labels.index(g) for g in predicted]), torch.tensor(index))


def scored_masks(decoded: Mapping[str, Any], batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference masks ``decoded["mask_logits"]`` is scored against, and their validity."""
    valid = batch.get("valid")
    if "target_masks" not in decoded:
        return batch["mask"], valid
    rows = decoded["scored_index"]
    return decoded["target_masks"], None if valid is None else valid[rows]


def update_task_metrics(
    metrics: nn.ModuleDict, tasks: list[str], decoded: Mapping[str, Any], batch: Mapping[str, Any]
) -> None:
    """Update each task's metric with its rows (a target's task is its sample's)."""
    sample_tasks = list(batch.get("task") or [tasks[0]] * batch["image"].shape[0])
    unknown = sorted(set(sample_tasks) - set(metrics))
    if unknown:
        raise KeyError(f"batch field 'task' says {unknown[0]!r}, which is not in the model's tasks {tasks}")
    logits = decoded["mask_logits"]
    masks, valid = scored_masks(decoded, batch)
    rows = decoded.get("scored_index")
    row_tasks = sample_tasks if rows is None else [sample_tasks[i] for i in rows.tolist()]
    for task in dict.fromkeys(sample_tasks):
        metric = metrics[task]
        if isinstance(metric, nn.Identity):
            continue
        if isinstance(metric, AnswerAccuracy):
            if "texts" in decoded:  # teacher-forced passes have no answer of their own
                picked = [i for i, t in enumerate(sample_tasks) if t == task]
                metric.update([decoded["texts"][i] for i in picked], [batch["response"][i] for i in picked])
            continue
        keep = torch.tensor([t == task for t in row_tasks], dtype=torch.bool, device=logits.device)
        if not keep.any():
            continue
        if isinstance(metric, ReferringSegmentationMetrics):
            metric.update(logits[keep][:, 0], masks[keep][:, 0] > 0.5)
        else:
            metric.update(logits[keep], masks[keep], None if valid is None else valid[keep])


def log_task_metrics(module: Any, metrics: nn.ModuleDict, split: str, tasks: list[str]) -> None:
    """Log and reset every metric of ``split`` (``metrics``: task → metric) that saw data: the first
    task as ``<split>/<name>``, the others as ``<split>/<task>/<name>``."""
    for task, metric in metrics.items():
        parts = metric.values() if isinstance(metric, MetricCollection) else [metric]
        if not any(getattr(m, "update_called", False) for m in parts):
            continue
        prefix = split if task == tasks[0] else f"{split}/{task}"
        module.log_dict({f"{prefix}/{k}": v for k, v in metric.compute().items()})
        metric.reset()
