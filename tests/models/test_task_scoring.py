"""Per-task scores: mask tasks by their targets, answer tasks by the generated text."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsvlm.models.task_scoring import build_task_metrics, update_task_metrics

TASKS = ["referring_segmentation", "vqa", "land_cover"]
KINDS = {"referring_segmentation": "referring", "vqa": "answer"}


def mixed_batch():
    g = torch.Generator().manual_seed(0)
    masks = [(torch.rand(2, 8, 8, generator=g) > 0.5).float(), torch.zeros(0, 8, 8), torch.zeros(0, 8, 8)]
    return {
        "image": torch.zeros(3, 3, 8, 8),
        "task": ["referring_segmentation", "vqa", "vqa"],
        "response": ["Sure, [SEG0][SEG1].", "Yes.", "no"],
        "masks": masks,
        "valid": torch.ones(3, 1, 8, 8, dtype=torch.bool),
    }


def test_each_task_is_scored_by_its_own_metric():
    metrics = build_task_metrics(TASKS, KINDS, "global")["test"]
    batch = mixed_batch()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 8, 8, generator=g)
    decoded = {
        "mask_logits": logits,
        "target_masks": torch.cat(batch["masks"])[:, None],
        "scored_index": torch.tensor([0, 0]),
        "texts": ["whatever", "yes", "No."],
    }
    update_task_metrics(metrics, TASKS, decoded, batch)
    # referring segmentation, written out with numpy
    pred, ref = (logits[:, 0] > 0).numpy(), batch["masks"][0].numpy() > 0.5
    ious = [(p & r).sum() / (p | r).sum() for p, r in zip(pred, ref, strict=True)]
    got = metrics["referring_segmentation"].compute()
    assert np.isclose(float(got["mIoU"]), np.mean(ious))
    assert np.isclose(float(got["oIoU"]), (pred & ref).sum() / (pred | ref).sum())
    assert np.isclose(float(got["P@0.5"]), np.mean([i >= 0.5 for i in ious]))
    # VQA: "yes" and "Yes.", "No." and "no" are equal after normalisation
    assert float(metrics["vqa"].compute()["accuracy"]) == 1.0
    assert not metrics["land_cover"].update_called


def test_a_teacher_forced_pass_leaves_answer_tasks_unscored():
    metrics = build_task_metrics(TASKS, KINDS, "global")["val_teacher_forced"]
    batch = mixed_batch()
    decoded = {
        "mask_logits": torch.zeros(2, 1, 8, 8),
        "target_masks": torch.cat(batch["masks"])[:, None],
        "scored_index": torch.tensor([0, 0]),
    }
    update_task_metrics(metrics, TASKS, decoded, batch)
    assert metrics["referring_segmentation"].update_called and not metrics["vqa"].update_called


def test_unknown_tasks_and_kinds_are_named():
    with pytest.raises(KeyError, match="roads"):
        build_task_metrics(TASKS, {"roads": "answer"}, "global")
    with pytest.raises(ValueError, match="unknown metric kind"):
        build_task_metrics(TASKS, {"vqa": "bleu"}, "global")
    metrics = build_task_metrics(TASKS, KINDS, "global")["val"]
    with pytest.raises(KeyError, match="'roads'"):
        update_task_metrics(
            metrics, TASKS, {"mask_logits": torch.zeros(1, 1, 8, 8)}, {"task": ["roads"], "image": torch.zeros(1)}
        )


def test_a_routing_classifier_is_scored_against_the_gold_granularity():
    """MagCrop's classifier accuracy over a split equals scikit-learn's on the same predictions."""
    from catalogue import tiny_granularity_classifier
    from sklearn.metrics import accuracy_score

    from rsvlm.crops.magcrop import MagCrop
    from rsvlm.models.task_scoring import ROUTING, log_task_metrics, routing_labels, update_routing_metric

    torch.manual_seed(5)
    cropper = MagCrop(boxes="given", classifier=tiny_granularity_classifier().eval(), route="classifier").eval()
    metrics = build_task_metrics(["vqa"], {"vqa": "answer"}, "global", routing_labels(cropper))
    batches = [
        {"instruction": ["What is this scene?", "Is there a ship?"], "granularity": ["image", "region"]},
        {"instruction": ["Segment the small boat by the pier.", "Where is the red car?"], "granularity": [2, "region"]},
    ]
    predicted, gold = [], []
    for batch in batches:
        update_routing_metric(metrics["test"], cropper, batch)
        predicted += cropper.routing(batch)
        gold += [g if isinstance(g, str) else ["image", "region", "pixel"][g] for g in batch["granularity"]]
    update_routing_metric(metrics["test"], cropper, {"instruction": ["no gold label"]})  # skipped

    logged = {}

    class Logger:
        def log_dict(self, values):
            logged.update({k: float(v) for k, v in values.items()})

    log_task_metrics(Logger(), metrics["test"], "test", ["vqa"])
    assert logged == pytest.approx({f"test/{ROUTING}/accuracy": accuracy_score(gold, predicted)})
    assert ROUTING not in build_task_metrics(["vqa"], {"vqa": "answer"}, "global")["test"]
