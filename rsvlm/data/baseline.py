"""The classical baseline of every SPEX table: spectral index + Otsu threshold per image.

``IndexBaseline("water", "sentinel2").predict(image, valid)`` is the coarse mask of
:func:`rsvlm.data.indices.coarse_mask` (NDWI / NDVI / NDBI > Otsu threshold of that image's
valid pixels). :meth:`IndexBaseline.evaluate` scores it like the learned models
(:class:`rsvlm.training.metrics.BinarySegmentationMetrics`), F1 / Recall / Precision / OA /
IoU of the target class, averaged as they were (``average``):

* ``"global"``: one confusion matrix accumulated over all pixels of all images, 0 where a
  denominator is 0 (sklearn's ``zero_division=0``);
* ``"image"``: the mean of per-image scores, 1 where a denominator is 0 on an image (sklearn's
  ``zero_division=1``: an empty target with an empty prediction scores 1 everywhere); images
  without a valid pixel are left out of the mean.

:class:`ScoreAccumulator` does the counting for predictions made elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from rsvlm.data.bands import BandSpec, band_spec
from rsvlm.data.indices import INDEX_FOR_CATEGORY, coarse_mask, normalize_category

METRIC_NAMES = ("F1", "Recall", "Precision", "OA", "IoU")


def confusion_counts(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> dict[str, int]:
    """TP / FP / FN / TN of binary H×W masks over the valid pixels.

    Raises:
        ValueError: shapes differ.
    """
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(target, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction is {p.shape} but target is {t.shape}")
    if valid is not None:
        v = np.asarray(valid, dtype=bool)
        if v.shape != p.shape:
            raise ValueError(f"valid is {v.shape} but prediction is {p.shape}")
        p, t = p[v], t[v]
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(p.size - tp - fp - fn)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _ratio(num: int, den: int, zero_division: float = 0.0) -> float:
    return float(num) / den if den > 0 else zero_division


def scores(counts: Mapping[str, int], zero_division: float = 0.0) -> dict[str, float]:
    """F1, Recall, Precision, OA and IoU of a confusion matrix (``zero_division`` where a denominator is 0)."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    return {
        "F1": _ratio(2 * tp, 2 * tp + fp + fn, zero_division),
        "Recall": _ratio(tp, tp + fn, zero_division),
        "Precision": _ratio(tp, tp + fp, zero_division),
        "OA": _ratio(tp + tn, tp + fp + fn + tn, zero_division),
        "IoU": _ratio(tp, tp + fp + fn, zero_division),
    }


class ScoreAccumulator:
    """Scores of binary H×W predictions over a set of images, averaged globally or per image.

    Args:
        average: ``"global"`` or ``"image"`` (see the module docstring).
    """

    def __init__(self, average: Literal["global", "image"] = "global") -> None:
        if average not in ("global", "image"):
            raise ValueError(f"average must be 'global' or 'image', got {average!r}")
        self.average = average
        self.total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        self.score_sums = dict.fromkeys(METRIC_NAMES, 0.0)
        self.images = 0
        self.scored = 0

    def add(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> dict[str, int]:
        """Count one image: ``pred`` and ``target`` H×W (bool or 0/1), ``valid`` H×W or None.

        Returns:
            The image's own counts ``tp, fp, fn, tn``.
        """
        counts = confusion_counts(pred, target, valid)
        for k, v in counts.items():
            self.total[k] += v
        self.images += 1
        if sum(counts.values()) > 0:  # an image without a valid pixel has no score
            for k, v in scores(counts, zero_division=1.0).items():
                self.score_sums[k] += v
            self.scored += 1
        return counts

    def result(self) -> dict[str, float | int]:
        """The five scores, the pooled counts ``tp, fp, fn, tn`` and ``images`` (images added)."""
        if self.average == "image":
            means = {k: v / self.scored if self.scored else 0.0 for k, v in self.score_sums.items()}
        else:
            means = scores(self.total)
        return {**means, **self.total, "images": self.images}


class IndexBaseline:
    """Index + Otsu land-cover predictor.

    Args:
        category: vegetation, water or building(s).
        bands: band spec of the images: a preset name (``"sentinel2"``) or a list of names.
    """

    def __init__(self, category: str, bands: str | list[str] | BandSpec) -> None:
        self.category = normalize_category(category)
        self.bands = band_spec(bands)
        self.index_name = INDEX_FOR_CATEGORY[self.category]

    def predict(self, image: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """H×W bool mask of ``category`` for a C×H×W image (invalid pixels False)."""
        return coarse_mask(image, self.category, self.bands, valid)

    def evaluate(
        self, samples: Iterable[Any], average: Literal["global", "image"] = "global"
    ) -> dict[str, float | int]:
        """Scores over a set of images, averaged as ``average`` says (see the module docstring).

        Args:
            samples: iterable of ``(image C×H×W, target H×W)`` or
                ``(image, target, valid H×W | None)`` tuples, or mappings with keys
                ``"image"``, ``"mask"`` (or ``"target"``) and optional ``"valid"``.
                Only pixels valid for the sample are counted; the image's validity is also
                used for the prediction.
            average: ``"global"`` (one confusion matrix) or ``"image"`` (mean of per-image scores).

        Returns:
            ``{"F1", "Recall", "Precision", "OA", "IoU"}`` plus the counts ``tp, fp, fn, tn``
            and ``images`` (number of samples).
        """
        accumulator = ScoreAccumulator(average)
        for sample in samples:
            image, target, valid = _unpack(sample)
            accumulator.add(self.predict(image, valid), target, valid)
        return accumulator.result()

    def __repr__(self) -> str:
        return f"IndexBaseline(category={self.category!r}, bands={list(self.bands.names)!r}) [{self.index_name} > Otsu]"


def _unpack(sample: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if isinstance(sample, Mapping):
        target = sample["mask"] if "mask" in sample else sample["target"]
        return np.asarray(sample["image"]), np.asarray(target), sample.get("valid")
    if isinstance(sample, Sequence) and len(sample) in (2, 3):
        valid = sample[2] if len(sample) == 3 else None
        return np.asarray(sample[0]), np.asarray(sample[1]), valid
    raise TypeError(
        "IndexBaseline.evaluate: each sample must be (image, target[, valid]) or a "
        f"mapping with 'image', 'mask' and optional 'valid'; got {type(sample)}"
    )
