"""Mask losses against formulas computed independently in numpy and against torch's BCE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsvlm.training.losses import DICE_EPS, LossWeights, bce_loss, combine, dice_loss


def _batch(seed: int, b: int = 3, h: int = 7, w: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 1, h, w, generator=g, dtype=torch.float64) * 3
    target = torch.rand(b, 1, h, w, generator=g) > 0.6
    valid = torch.rand(b, 1, h, w, generator=g) > 0.3
    return logits, target, valid


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_bce(logits, target, valid):
    per_mask = []
    for x, t, v in zip(logits, target, valid):
        x, t = x[v], t[v].astype(float)
        p = _np_sigmoid(x)
        per_mask.append(np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p))))
    return np.mean(per_mask)


def _np_dice(logits, target, valid, eps):
    per_mask = []
    for x, t, v in zip(logits, target, valid):
        p, t = _np_sigmoid(x[v]), t[v].astype(float)
        per_mask.append(1 - (2 * np.sum(p * t) + eps) / (np.sum(p**2) + np.sum(t**2) + eps))
    return np.mean(per_mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bce_matches_numpy_per_mask_mean(seed):
    logits, target, valid = _batch(seed)
    got = bce_loss(logits, target, valid)
    expected = _np_bce(logits.numpy(), target.numpy(), valid.numpy())
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_bce_without_valid_equals_torch():
    logits, target, _ = _batch(3)
    # Equal-sized masks: mean of per-mask means equals the global mean.
    expected = F.binary_cross_entropy_with_logits(logits, target.double())
    assert bce_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_bce_per_mask_mean_differs_from_pixel_mean_with_uneven_valid():
    logits, target, valid = _batch(4)
    pixel_mean = F.binary_cross_entropy_with_logits(logits[valid], target[valid].double())
    got = bce_loss(logits, target, valid)
    per_mask = [F.binary_cross_entropy_with_logits(logits[i][valid[i]], target[i][valid[i]].double()) for i in range(3)]
    assert got.item() == pytest.approx(torch.stack(per_mask).mean().item(), rel=1e-5)
    assert got.item() != pytest.approx(pixel_mean.item(), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eps", [DICE_EPS, 1e-6])
def test_dice_matches_numpy(seed, eps):
    logits, target, valid = _batch(seed)
    got = dice_loss(logits, target, valid, eps=eps)
    expected = _np_dice(logits.numpy(), target.numpy(), valid.numpy(), eps)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_invalid_pixels_are_ignored():
    logits, target, valid = _batch(5)
    scrambled = torch.where(valid, logits, torch.full_like(logits, 40.0))
    flipped = torch.where(valid, target, ~target)
    assert bce_loss(scrambled, flipped, valid).item() == pytest.approx(bce_loss(logits, target, valid).item())
    assert dice_loss(scrambled, flipped, valid).item() == pytest.approx(dice_loss(logits, target, valid).item())


def test_mask_without_valid_pixels_is_left_out():
    logits, target, valid = _batch(6)
    valid[1] = False
    keep = [0, 2]
    assert bce_loss(logits, target, valid).item() == pytest.approx(
        bce_loss(logits[keep], target[keep], valid[keep]).item()
    )
    assert dice_loss(logits, target, valid).item() == pytest.approx(
        dice_loss(logits[keep], target[keep], valid[keep]).item()
    )
    none = torch.zeros_like(valid)
    x = logits.clone().requires_grad_(True)
    loss = bce_loss(x, target, none) + dice_loss(x, target, none)
    assert loss.item() == 0.0
    loss.backward()


def test_perfect_prediction_gives_low_losses_and_gradients_flow():
    target = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    target[:, :, 2:6, 2:6] = True
    logits = (target.float() * 2 - 1) * 30
    assert bce_loss(logits, target).item() < 1e-6
    assert dice_loss(logits, target).item() < 1e-6
    x = torch.zeros(2, 1, 8, 8, requires_grad=True)
    (bce_loss(x, target) + dice_loss(x, target)).backward()
    assert x.grad.abs().sum() > 0


def test_shape_errors_are_named():
    with pytest.raises(ValueError, match="target shape"):
        bce_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="valid must be a bool"):
        dice_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))


def test_weights_and_combine():
    assert LossWeights.paper() == LossWeights(1.0, 1.0, 1.0)
    assert LossWeights.released() == LossWeights(text=1.0, bce=2.0, dice=1.0)
    text, bce, dice = torch.tensor(0.7), torch.tensor(0.3), torch.tensor(0.2)
    assert combine(LossWeights.released(), text=text, bce=bce, dice=dice).item() == pytest.approx(0.7 + 0.6 + 0.2)
    assert combine(LossWeights(text=0.5), text=text).item() == pytest.approx(0.35)
    with pytest.raises(ValueError):
        combine(LossWeights())
