"""Scores per task: which metric each task of a model keeps, and how a batch updates them.

A batch says each sample's task (``batch["task"]``, default the model's first). A task's metric
is one of :data:`METRIC_KINDS`:

* ``binary``: SPEX's binary segmentation scores of the decoded masks (F1, Recall, Precision, OA, IoU);
* ``referring``: referring segmentation P@k, oIoU, mIoU of the decoded masks (one per target), beside
  the floors ``mIoU_full_mask`` / ``mIoU_empty_mask`` and, when the batch carries visual prompts,
  ``mIoU_prompt_box``: the sample's first prompt's box filled as the mask (:func:`prompt_box_masks`);
* ``answer``: short-answer accuracy and S-IoU (and SS, given the model's ``similarity_model``) of the
  generated text against the reference response (VQA, scene classification, referring-object classification), beside
  ``accuracy_majority``, the split's most frequent reference answered every time
  (:mod:`rsvlm.training.metrics.answers`); scored only where the text was generated;
* ``grounding``: Acc@0.5 and mean IoU of the boxes the generated text writes
  (``<p>phrase</p>[x0,y0,x1,y1]``, :func:`answer_boxes`) against the batch's reference ``boxes``,
  both in pixels of the model's square input; the i-th box written pairs with the i-th reference
  box, a missing one is a miss; when the text writes fewer boxes than the references, the sample's
  decoded ``[SEG]`` masks give the rest, in order (:func:`~rsvlm.training.metrics.grounding.mask_boxes`:
  a model that grounds by segmenting, ``<p>ship</p> [SEG]``). Beside them ``Acc@0.5_centre_box`` / ``mIoU_centre_box``: the box
  centred in the image (the image's part of the square, without the pad) with half its width and
  half its height (:mod:`rsvlm.training.metrics.grounding`). Scored only where the text was generated;
* ``none``: trained, not scored here (captions are scored over a whole split by ``rsvlm evaluate``
  with :mod:`rsvlm.training.metrics.captions`).

With ``groups`` (the model's ``metric_groups``, :mod:`rsvlm.models.metric_groups`) every scored
task also keeps one copy of its metric per declared value of a per-sample field (``modality``,
``prompt_kind``, ``source``, ...), updated with that value's samples only and logged as
``<split>/<task>/<field>=<value>/<name>``.

A cropper that routes by a classifier (MagCrop with GeoMag's task-granularity classifier) is
scored too: :data:`ROUTING` keeps the classifier's accuracy against the batch's gold
granularity, logged as ``<split>/granularity_classifier/accuracy``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any, Literal

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from rsvlm.data.coords import parse_grounding
from rsvlm.data.multitask.geometry import move_boxes
from rsvlm.models.metric_groups import GroupedMetrics, MetricGroups, check_groups
from rsvlm.models.output_checks import check_finite_masks
from rsvlm.training.metrics import BinarySegmentationMetrics
from rsvlm.training.metrics.answers import AnswerAccuracy
from rsvlm.training.metrics.grounding import GroundingAccuracy, mask_boxes
from rsvlm.training.metrics.referring import ReferringSegmentationMetrics

MetricKind = Literal["binary", "referring", "answer", "grounding", "none"]
METRIC_KINDS: tuple[str, ...] = ("binary", "referring", "answer", "grounding", "none")
SPLITS = ("val", "val_teacher_forced", "test", "test_teacher_forced")
#: The metrics entry of a routing classifier (not a task: every sample is routed).
ROUTING = "granularity_classifier"
#: The metrics entry of the per-group copies (:class:`~rsvlm.models.metric_groups.GroupedMetrics`).
GROUPED = "_grouped"


def build_task_metrics(
    tasks: list[str],
    kinds: Mapping[str, str] | None,
    average: Literal["global", "image"],
    routing_labels: list[str] | None = None,
    groups: MetricGroups | None = None,
    similarity_model: str | None = None,
) -> nn.ModuleDict:
    """``split → task → metric`` for every split the model logs (a task's kind defaults to ``binary``),
    plus :data:`ROUTING` → accuracy over ``routing_labels`` when a cropper routes by a classifier and
    :data:`GROUPED` → the per-group copies when ``groups`` names fields. ``similarity_model`` (a local
    sentence-transformers folder) adds ``SS`` to the ``answer`` metrics
    (:class:`~rsvlm.training.metrics.answers.AnswerAccuracy`)."""
    kinds = dict(kinds or {})
    unknown = sorted(set(kinds) - set(tasks))
    if unknown:
        raise KeyError(f"task_metrics names task(s) {unknown} that are not in tasks {tasks}")
    bad = {t: k for t, k in kinds.items() if k not in METRIC_KINDS}
    if bad:
        raise ValueError(f"task_metrics: unknown metric kind(s) {bad}; known: {', '.join(METRIC_KINDS)}")
    groups = check_groups(groups)
    scored = [t for t in tasks if kinds.get(t, "binary") != "none"]

    def metric(task: str) -> nn.Module:
        kind = kinds.get(task, "binary")
        if kind == "referring":
            return ReferringSegmentationMetrics(thresholds=(0.5,))
        if kind == "none":
            return nn.Identity()
        if kind == "grounding":
            return GroundingAccuracy(threshold=0.5)
        if kind == "answer":
            return AnswerAccuracy(similarity_model=similarity_model)
        return BinarySegmentationMetrics(average=average)

    def split_metrics() -> nn.ModuleDict:
        out = nn.ModuleDict({t: metric(t) for t in tasks})
        if routing_labels:
            out[ROUTING] = MetricCollection({"accuracy": MulticlassAccuracy(len(routing_labels), average="micro")})
        if groups and scored:
            out[GROUPED] = GroupedMetrics(groups, scored, metric)
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


def answer_boxes(text: str, meta: Mapping[str, Any] | None, side: int) -> list[list[float]]:
    """The boxes ``(x0, y0, x1, y1)`` a generated ``text`` writes, in pixels of the model's square of ``side``.

    With the sample's ``meta`` from :class:`rsvlm.data.multitask.dataset.InstructDataset` (``resize``
    info and ``coord_convention``), the text is read as its records are written, normalised on the
    original image padded to a square by the record's convention (``center``, ``bottom_right``; or
    ``pixel``: pixels of the original image), and moved onto the model's square as the reference boxes
    were (:func:`~rsvlm.data.multitask.geometry.move_boxes`). Without them it is read as normalised on
    the model's square itself.
    """
    info = (meta or {}).get("resize")
    if info is None:
        return [b for g in parse_grounding(text, (side, side)) for b in g.boxes]
    size = (int(info["original_size"][0]), int(info["original_size"][1]))
    convention = (meta or {}).get("coord_convention") or "center"
    if convention == "pixel":
        found = parse_grounding(text, size, "bottom_right", scale=max(size))
    else:
        found = parse_grounding(text, size, convention)
    boxes = torch.tensor([b for g in found for b in g.boxes], dtype=torch.float64).reshape(-1, 4)
    return move_boxes(boxes, info).tolist()


def image_extent(meta: Mapping[str, Any] | None, side: int) -> list[float]:
    """``(x0, y0, x1, y1)`` of the image on the model's square (the resized image, without its pad; the
    whole square without ``meta["resize"]``)."""
    info = (meta or {}).get("resize")
    if info is None:
        return [0.0, 0.0, float(side), float(side)]
    (h, w), (top, left) = info["resized_size"], info["pad"][:2]
    return [float(left), float(top), float(left + w), float(top + h)]


def prompt_box_masks(prompts: Any, samples: Sequence[int], size: Sequence[int]) -> list[torch.Tensor | None]:
    """Per sample of ``samples``: the box of its first visual prompt (slot 0 of a
    :class:`~rsvlm.contracts.VisualPromptBatch`) filled as an ``H×W`` bool mask at ``size``, the pixels
    whose centres lie in it (a point's box is the point); None where the slot is empty."""
    height, width = int(size[0]), int(size[1])
    if prompts is None or prompts.slots == 0:
        return [None] * len(samples)
    frame_h, frame_w = prompts.image_size
    scale = torch.tensor([width / frame_w, height / frame_h] * 2, dtype=torch.float64)
    boxes = prompts.boxes[:, 0].double().cpu() * scale
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    out: list[torch.Tensor | None] = []
    for s in samples:
        if int(prompts.kind[s, 0]) == 0:
            out.append(None)
            continue
        x0, y0, x1, y1 = boxes[s].tolist()
        out.append(((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :])
    return out


class _BatchScores:
    """One batch's pieces that the metrics read, each computed once and only when a metric needs it."""

    def __init__(self, decoded: Mapping[str, Any], batch: Mapping[str, Any], sample_tasks: list[str]) -> None:
        self.decoded, self.batch, self.sample_tasks = decoded, batch, sample_tasks

    @cached_property
    def row_samples(self) -> list[int]:
        """The sample of each row of ``mask_logits``."""
        rows = self.decoded.get("scored_index")
        return list(range(len(self.sample_tasks))) if rows is None else rows.tolist()

    @cached_property
    def masks(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return scored_masks(self.decoded, self.batch)

    @cached_property
    def prompt_masks(self) -> list[torch.Tensor | None]:
        size = self.masks[0].shape[-2:]
        return prompt_box_masks(self.batch.get("visual_prompts"), self.row_samples, size)

    def boxes(self, sample: int) -> tuple[list[list[float]], torch.Tensor, list[float]]:
        """(predicted boxes, reference boxes ``T×4``, image extent) of a sample, on the model's square."""
        if "boxes" not in self.batch:
            raise KeyError(f"task {self.sample_tasks[sample]!r} is scored as grounding but the batch has no 'boxes'")
        side = int(self.batch["image"].shape[-1])
        meta = (self.batch.get("meta") or [None] * len(self.sample_tasks))[sample]
        boxes = answer_boxes(self.decoded["texts"][sample], meta, side) + self.mask_boxes.get(sample, [])
        return boxes, self.batch["boxes"][sample], image_extent(meta, side)

    @cached_property
    def mask_boxes(self) -> dict[int, list[list[float]]]:
        """Per sample, the boxes of its decoded target masks in order (on the model's square), when the
        decoder ran on generated ``[SEG]`` tokens (``target_logits`` of :mod:`rsvlm.models.targets`)."""
        logits, index = self.decoded.get("target_logits"), self.decoded.get("target_index")
        if logits is None or index is None or not len(index):
            return {}
        scale = int(self.batch["image"].shape[-1]) / logits.shape[-1]
        out: dict[int, list[list[float]]] = {}
        for sample, box in zip(index.tolist(), (mask_boxes(logits) * scale).tolist(), strict=True):
            out.setdefault(sample, []).append(box)
        return out

    def score(self, metric: nn.Module, picked: list[bool]) -> None:
        """Update ``metric`` with the samples ``picked`` (B bools) of the batch (a target's is its sample's)."""
        if isinstance(metric, nn.Identity):
            return
        samples = [i for i, p in enumerate(picked) if p]
        if isinstance(metric, AnswerAccuracy | GroundingAccuracy):
            if "texts" not in self.decoded:  # teacher-forced passes have no answer of their own
                return
            if isinstance(metric, AnswerAccuracy):
                texts, responses = self.decoded["texts"], self.batch["response"]
                metric.update([texts[i] for i in samples], [responses[i] for i in samples])
                return
            predicted, target, extent = [], [], []
            for i in samples:
                boxes, reference, image = self.boxes(i)
                for k, ref in enumerate(torch.as_tensor(reference).reshape(-1, 4).tolist()):
                    predicted.append(boxes[k] if k < len(boxes) else [0.0] * 4)  # no box written: a miss
                    target.append(ref)
                    extent.append(image)
            if target:
                metric.update(*(torch.tensor(x, dtype=torch.float64) for x in (predicted, target, extent)))
            return
        logits = self.decoded["mask_logits"]
        keep = torch.tensor([picked[s] for s in self.row_samples], dtype=torch.bool, device=logits.device)
        if not keep.any():
            return
        masks, valid = self.masks
        if isinstance(metric, ReferringSegmentationMetrics):
            prompts = [m for m, k in zip(self.prompt_masks, keep.tolist()) if k]
            metric.update(logits[keep][:, 0], masks[keep][:, 0] > 0.5, prompts)
        else:
            metric.update(logits[keep], masks[keep], None if valid is None else valid[keep])


def update_task_metrics(
    metrics: nn.ModuleDict, tasks: list[str], decoded: Mapping[str, Any], batch: Mapping[str, Any]
) -> None:
    """Update each task's metric with its rows (a target's task is its sample's), and each group's.

    Non-finite mask logits are an error (:mod:`rsvlm.models.output_checks`), not background."""
    if "mask_logits" in decoded:
        check_finite_masks(decoded, batch)
    sample_tasks = list(batch.get("task") or [tasks[0]] * batch["image"].shape[0])
    unknown = sorted(set(sample_tasks) - (set(metrics) - {GROUPED}))
    if unknown:
        raise KeyError(f"batch field 'task' says {unknown[0]!r}, which is not in the model's tasks {tasks}")
    scores = _BatchScores(decoded, batch, sample_tasks)
    for task in dict.fromkeys(sample_tasks):
        scores.score(metrics[task], [t == task for t in sample_tasks])
    if GROUPED in metrics:
        metrics[GROUPED].score_batch(scores.score, sample_tasks, batch)


def log_task_metrics(module: Any, metrics: nn.ModuleDict, split: str, tasks: list[str]) -> None:
    """Log and reset every metric of ``split`` (``metrics``: task → metric) that saw data: the first
    task as ``<split>/<name>``, the others as ``<split>/<task>/<name>``, groups as
    ``<split>/<task>/<field>=<value>/<name>``."""
    named = [(task if task == tasks[0] else None, task, m) for task, m in metrics.items() if task != GROUPED]
    if GROUPED in metrics:
        named += [(None, name, m) for name, m in metrics[GROUPED].named_groups()]
    for first, name, metric in named:
        parts = metric.values() if isinstance(metric, MetricCollection) else [metric]
        if not any(getattr(m, "update_called", False) for m in parts):
            continue
        prefix = split if first is not None else f"{split}/{name}"
        module.log_dict({f"{prefix}/{k}": v for k, v in metric.compute().items()})
        metric.reset()
