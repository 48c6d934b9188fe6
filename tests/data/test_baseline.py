"""Index baseline: predictions equal index > Otsu, scores equal scikit-learn's on pooled pixels."""

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from rsvlm.data.baseline import IndexBaseline, ScoreAccumulator, confusion_counts, scores
from rsvlm.training.metrics import BinarySegmentationMetrics


def _scene(rng, h=24, w=32):
    # gaofen2 = blue, green, red, nir; a water rectangle (green > nir) on land (nir > green).
    img = rng.uniform(0.05, 0.1, size=(4, h, w)).astype(np.float32)
    img[3] += 0.3
    truth = np.zeros((h, w), bool)
    r, c = rng.integers(0, h // 2), rng.integers(0, w // 2)
    truth[r : r + h // 3, c : c + w // 3] = True
    img[1][truth] += 0.2
    img[3][truth] -= 0.35
    noisy = truth ^ (rng.random((h, w)) < 0.02)  # labels disagree on 2% of pixels
    return img, noisy


def test_predict_is_ndwi_above_otsu():
    rng = np.random.default_rng(0)
    img, _ = _scene(rng)
    valid = rng.random(img.shape[1:]) > 0.1
    g, n = img[1].astype(np.float64), img[3].astype(np.float64)
    ndwi = ((g - n) / (g + n)).astype(np.float32)
    expected = (ndwi > threshold_otsu(ndwi[valid])) & valid
    np.testing.assert_array_equal(IndexBaseline("water", "gaofen2").predict(img, valid), expected)


def test_evaluate_matches_sklearn_on_pooled_valid_pixels():
    rng = np.random.default_rng(1)
    base = IndexBaseline("water", ["blue", "green", "red", "nir"])
    samples, preds, targets = [], [], []
    for i in range(3):
        img, target = _scene(rng)
        valid = rng.random(target.shape) > 0.2 if i else None
        samples.append((img, target, valid) if i != 1 else {"image": img, "mask": target, "valid": valid})
        v = np.ones(target.shape, bool) if valid is None else valid
        preds.append(base.predict(img, valid)[v])
        targets.append(target[v])
    out = base.evaluate(samples)
    y, p = np.concatenate(targets), np.concatenate(preds)
    assert out["F1"] == pytest.approx(f1_score(y, p))
    assert out["Recall"] == pytest.approx(recall_score(y, p))
    assert out["Precision"] == pytest.approx(precision_score(y, p))
    assert out["OA"] == pytest.approx(accuracy_score(y, p))
    assert out["IoU"] == pytest.approx(jaccard_score(y, p))
    assert out["images"] == 3 and out["tp"] + out["fp"] + out["fn"] + out["tn"] == y.size
    assert out["F1"] > 0.8  # the scene is separable, so the baseline must work


def test_zero_division_is_zero_like_sklearn():
    z = np.zeros((3, 3), bool)
    s = scores(confusion_counts(z, z))
    y = z.ravel()
    assert s["Precision"] == precision_score(y, y, zero_division=0) == 0.0
    assert s["F1"] == f1_score(y, y, zero_division=0) == 0.0
    assert s["OA"] == 1.0 and s["IoU"] == 0.0


def test_shape_errors_and_bad_samples():
    with pytest.raises(ValueError, match="target"):
        confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="image, target"):
        IndexBaseline("vegetation", "naip").evaluate([np.zeros((4, 2, 2))])
    with pytest.raises(ValueError, match="unknown land-cover category"):
        IndexBaseline("roads", "naip")


def test_evaluate_image_average_is_mean_of_sklearn_per_image_scores():
    """average='image': mean over images of sklearn scores with zero_division=1, as the metric."""
    rng = np.random.default_rng(2)
    base = IndexBaseline("water", "gaofen2")
    samples, per_image = [], []
    for i in range(4):
        img, target = _scene(rng)
        if i == 2:
            target[:] = False  # an image with an empty target: its scores follow zero_division=1
        valid = rng.random(target.shape) > 0.3
        samples.append((img, target, valid))
        y, p = target[valid], base.predict(img, valid)[valid]
        per_image.append(
            [
                f1_score(y, p, zero_division=1),
                recall_score(y, p, zero_division=1),
                precision_score(y, p, zero_division=1),
                accuracy_score(y, p),
                jaccard_score(y, p, zero_division=1),
            ]
        )
    samples.append((samples[0][0], samples[0][1], np.zeros_like(samples[0][1])))  # no valid pixel: left out
    out = base.evaluate(samples, average="image")
    expected = np.mean(per_image, axis=0)
    for name, value in zip(["F1", "Recall", "Precision", "OA", "IoU"], expected):
        assert out[name] == pytest.approx(value), name
    assert out["images"] == 5
    # per-image averaging gives something else than the pooled matrix here
    assert out["F1"] != pytest.approx(base.evaluate(samples)["F1"])


def test_image_average_matches_binary_segmentation_metrics():
    """Same convention as the learned models' metric (empty target + empty prediction = 1)."""
    rng = np.random.default_rng(3)
    preds = rng.random((5, 8, 8)) > 0.6
    targets = rng.random((5, 8, 8)) > 0.5
    preds[1] = targets[1] = False  # empty target, empty prediction
    preds[2] = False  # empty prediction of a non-empty target
    targets[3] = False  # empty target with false positives
    valid = rng.random((5, 8, 8)) > 0.1
    acc = ScoreAccumulator("image")
    for p, t, v in zip(preds, targets, valid):
        acc.add(p, t, v)
    metric = BinarySegmentationMetrics(from_logits=False, average="image")
    metric.update(
        torch.from_numpy(preds[:, None]).float(),
        torch.from_numpy(targets[:, None]).float(),
        torch.from_numpy(valid[:, None]),
    )
    reference = metric.compute()
    out = acc.result()
    for name, value in reference.items():
        assert out[name] == pytest.approx(float(value), abs=1e-6), name


def test_unknown_average_is_an_error():
    with pytest.raises(ValueError, match="average"):
        IndexBaseline("water", "gaofen2").evaluate([], average="micro")
