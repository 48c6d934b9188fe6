"""Grounded conversation generation (GeoPixelD) as GLaMM evaluates it (GeoPixel reuses it).

Per image: predicted masks (with phrases) and reference masks (with phrases).

* ``AP50``: pycocotools' ``COCOeval(..., "segm")`` with every predicted mask category 1, score 1;
  ``stats[1]`` (IoU 0.50, all areas, 100 detections);
* ``mIoU``: per image, greedily pair the largest entry of the IoU matrix and remove its row and
  column while it is > 0; the image's score is the mean of the paired IoUs (0 without pairs);
  the mean over images;
* ``recall``: greedy pairs with IoU ≥ 0.5 and phrase similarity ≥ 0.5 (``text_similarity``, GLaMM:
  cosine of mean-pooled ``bert-base-uncased`` states), over the number of reference phrases.
METEOR and CIDEr of the caption are :func:`rsvlm.training.metrics.captions.caption_scores`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class GroundedImage:
    """One image: ``H×W`` bool masks and their phrases, predicted and reference."""

    predicted: Sequence[np.ndarray]
    predicted_phrases: Sequence[str]
    reference: Sequence[np.ndarray]
    reference_phrases: Sequence[str]


def iou_matrix(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """``len(a)×len(b)`` IoU of bool masks (0 where both are empty)."""
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, g in enumerate(b):
            union = np.logical_or(p, g).sum()
            out[i, j] = np.logical_and(p, g).sum() / union if union else 0.0
    return out


def greedy_pairs(scores: np.ndarray, keep: Callable[[int, int], bool] = lambda i, j: True) -> list[tuple[int, int]]:
    """Pairs taken largest first, each row and column once, while the largest left is > 0 and ``keep``."""
    scores = scores.astype(float).copy()
    pairs = []
    while scores.size and scores.max() > 0:
        i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
        if not keep(int(i), int(j)):
            scores[i, j] = 0.0
            continue
        pairs.append((int(i), int(j)))
        scores[i, :] = 0.0
        scores[:, j] = 0.0
    return pairs


def gcg_scores(
    images: Sequence[GroundedImage], text_similarity: Callable[[str, str], float] | None = None
) -> dict[str, float]:
    """``AP50``, ``mIoU`` and (given ``text_similarity``) ``recall`` over the images."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    detections = []
    per_image, true_positives, references = [], 0, 0
    for image_id, item in enumerate(images, start=1):
        height, width = (item.reference or item.predicted)[0].shape
        gt["images"].append({"id": image_id, "height": height, "width": width})
        for mask in item.reference:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)),
                    "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": 0,
                }
            )
        for mask in item.predicted:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            detections.append({"image_id": image_id, "category_id": 1, "segmentation": rle, "score": 1.0})
        ious = iou_matrix(item.predicted, item.reference)
        paired = greedy_pairs(ious)
        per_image.append(float(np.mean([ious[i, j] for i, j in paired])) if paired else 0.0)
        references += len(item.reference)
        if text_similarity is not None:

            def keep(i: int, j: int, item=item, ious=ious) -> bool:
                return (
                    ious[i, j] >= 0.5 and text_similarity(item.predicted_phrases[i], item.reference_phrases[j]) >= 0.5
                )

            true_positives += len(greedy_pairs(np.where(ious >= 0.5, ious, 0.0), keep))
    out = {"mIoU": float(np.mean(per_image)) if per_image else 0.0}
    if detections and gt["annotations"]:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO()
            coco.dataset = gt
            coco.createIndex()
            results = coco.loadRes(detections)
        evaluator = COCOeval(coco, results, "segm")
        evaluator.params.catIds = [1]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its table
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        out["AP50"] = float(evaluator.stats[1])
    else:
        out["AP50"] = 0.0
    if text_similarity is not None:
        out["recall"] = true_positives / references if references else 0.0
    return out
