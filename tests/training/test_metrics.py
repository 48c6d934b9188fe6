"""BinarySegmentationMetrics against scikit-learn on the flattened valid pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score
from torchmetrics.utilities.data import dim_zero_sum

from rsvlm.training.metrics import METRIC_NAMES, BinarySegmentationMetrics


def _sklearn(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "F1": f1_score(y_true, y_pred, zero_division=0),
        "Recall": recall_score(y_true, y_pred, zero_division=0),
        "Precision": precision_score(y_true, y_pred, zero_division=0),
        "OA": accuracy_score(y_true, y_pred),
        "IoU": jaccard_score(y_true, y_pred, zero_division=0),
    }


def _batches(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        b, h, w = 2, 9 + i, 7
        target = torch.rand(b, 1, h, w, generator=g) > 0.65
        logits = torch.randn(b, 1, h, w, generator=g) + target.float() * 1.2 - 0.4
        valid = torch.rand(b, 1, h, w, generator=g) > 0.2
        yield logits, target, valid


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_global_scores_match_sklearn(seed, threshold):
    metric = BinarySegmentationMetrics()
    y_true, y_pred = [], []
    for logits, target, valid in _batches(seed):
        metric.update(logits, target, valid, threshold=threshold)
        y_true.append(target[valid].numpy())
        y_pred.append((torch.sigmoid(logits)[valid] > threshold).numpy())
    got = metric.compute()
    expected = _sklearn(np.concatenate(y_true), np.concatenate(y_pred))
    assert set(got) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert got[name].item() == pytest.approx(expected[name], abs=1e-6), name


def test_global_differs_from_mean_of_per_batch_scores():
    metric = BinarySegmentationMetrics()
    per_batch = []
    for logits, target, valid in _batches(3):
        metric.update(logits, target, valid)
        one = BinarySegmentationMetrics()
        one.update(logits, target, valid)
        per_batch.append(one.compute()["F1"].item())
    assert metric.compute()["F1"].item() != pytest.approx(float(np.mean(per_batch)), abs=1e-7)


def test_probabilities_and_no_valid_mask():
    metric = BinarySegmentationMetrics(from_logits=False)
    y_true, y_pred = [], []
    for logits, target, _ in _batches(4):
        probs = torch.sigmoid(logits)
        metric.update(probs, target.long())
        y_true.append(target.flatten().numpy())
        y_pred.append((probs > 0.5).flatten().numpy())
    expected = _sklearn(np.concatenate(y_true), np.concatenate(y_pred))
    got = metric.compute()
    for name in METRIC_NAMES:
        assert got[name].item() == pytest.approx(expected[name], abs=1e-6), name


def test_counts_are_summed_states_for_ddp():
    metric = BinarySegmentationMetrics()
    for name in ("tp", "fp", "tn", "fn"):
        assert metric._reductions[name] is dim_zero_sum, name
    # Merging two metrics' states (what DDP's sum does) equals one metric over all batches.
    a, b, whole = BinarySegmentationMetrics(), BinarySegmentationMetrics(), BinarySegmentationMetrics()
    for i, (logits, target, valid) in enumerate(_batches(5)):
        (a if i % 2 else b).update(logits, target, valid)
        whole.update(logits, target, valid)
    # The two ranks' states summed as DDP does (not every supported torchmetrics has merge_state).
    for name in ("tp", "fp", "tn", "fn"):
        setattr(a, name, dim_zero_sum(torch.stack([getattr(a, name), getattr(b, name)])))
    for name in METRIC_NAMES:
        assert a.compute()[name].item() == pytest.approx(whole.compute()[name].item())


def test_zero_division_is_zero():
    metric = BinarySegmentationMetrics()
    target = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    metric.update(torch.full((1, 1, 4, 4), -5.0), target)
    got = metric.compute()
    assert got["OA"].item() == 1.0
    for name in ("F1", "Recall", "Precision", "IoU"):
        assert got[name].item() == 0.0, name
    empty = BinarySegmentationMetrics()
    empty.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    assert empty.compute()["OA"].item() == 0.0


def test_bad_inputs_are_named():
    metric = BinarySegmentationMetrics()
    with pytest.raises(ValueError, match="target must hold only 0/1"):
        metric.update(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.full((1, 1, 2, 2), float("nan")), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        BinarySegmentationMetrics(from_logits=False).update(torch.full((1, 1, 2, 2), 3.0), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    # Invalid pixels may hold anything (e.g. a 255 nodata label).
    metric.update(torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 255.0), torch.zeros(1, 1, 2, 2, dtype=torch.bool))


def _sklearn_per_image_mean(images: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The mean over images of scikit-learn's scores with ``zero_division=1``."""
    rows = [
        {
            "F1": f1_score(t, p, zero_division=1),
            "Recall": recall_score(t, p, zero_division=1),
            "Precision": precision_score(t, p, zero_division=1),
            "OA": accuracy_score(t, p),
            "IoU": jaccard_score(t, p, zero_division=1),
        }
        for t, p in images
        if t.size
    ]
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES}


def test_per_image_scores_match_the_mean_of_sklearn_per_image():
    metric = BinarySegmentationMetrics(average="image")
    images = []
    for logits, target, valid in _batches(3):
        # Image 0 of each batch: empty target; the first batch's also has an empty prediction,
        # and its second image has no valid pixel at all (left out of the mean).
        target[0] = False
        if len(images) == 0:
            logits[0] = -10.0
            valid[1] = False
        metric.update(logits, target, valid)
        for b in range(logits.shape[0]):
            keep = valid[b].flatten().numpy()
            images.append(
                (target[b].flatten().numpy()[keep].astype(int), (logits[b].flatten().numpy()[keep] > 0).astype(int))
            )
    got = metric.compute()
    want = _sklearn_per_image_mean(images)
    for name in METRIC_NAMES:
        assert got[name].item() == pytest.approx(want[name], abs=1e-6), name
    assert metric.images.item() == sum(1 for t, _ in images if t.size)


def test_both_empty_image_scores_one_and_averages_differ():
    image = BinarySegmentationMetrics(average="image")
    whole = BinarySegmentationMetrics(average="global")
    target = torch.zeros(2, 1, 4, 4)
    target[1, :, :2] = 1
    logits = torch.full((2, 1, 4, 4), -5.0)
    logits[1, :, :1] = 5.0  # half of image 1's target found, nothing predicted on image 0
    for metric in (image, whole):
        metric.update(logits, target)
    per_image = image.compute()
    # Image 0: nothing there, nothing found → 1; image 1: F1 = 2·4/(2·4 + 0 + 4) = 2/3.
    assert per_image["F1"].item() == pytest.approx((1 + 2 / 3) / 2)
    assert whole.compute()["F1"].item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="average must be"):
        BinarySegmentationMetrics(average="pixel")
