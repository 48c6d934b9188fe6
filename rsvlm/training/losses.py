"""Mask losses (BCE, Dice) and their weighted sum with the text loss.

Shapes: B masks, H×W pixels. Every loss is computed per mask over its valid pixels and then
averaged over masks, so a large image does not outweigh a small one. A mask with no valid
pixel at all is left out of the average; if no mask has any, the loss is 0 (still attached
to the graph, so ``backward`` works).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

#: Dice smoothing term. 1.0 (V-Net / LISA-style "smooth") keeps the loss and its gradient
#: well defined on empty targets: an all-background mask is rewarded for predicting nothing
#: (loss 1 − 1/(Σp² + 1) → 0), whereas a tiny ε would pin that loss near 1.
DICE_EPS = 1.0


def _prepare(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes and return float32 ``logits``, ``target`` and ``valid`` flattened to ``B×N``."""
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"mask loss: logits must be B×1×H×W, got {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"mask loss: target shape {tuple(target.shape)} must equal logits shape {tuple(logits.shape)}")
    if valid is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    elif valid.shape != logits.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"mask loss: valid must be a bool tensor of shape {tuple(logits.shape)}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )
    # At least float32 even under fp16 autocast: sums over 512×512 pixels overflow half precision.
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return logits.to(dtype).flatten(1), target.to(dtype).flatten(1), valid.flatten(1)


def _mean_over_masks(per_mask: torch.Tensor, has_pixels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if not bool(has_pixels.any()):
        return logits.sum() * 0.0
    return per_mask[has_pixels].mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits: mean over valid pixels per mask, then over masks.

    Args:
        logits: ``B×1×H×W`` mask logits.
        target: ``B×1×H×W`` in {0, 1} (bool, int or float).
        valid: optional ``B×1×H×W`` bool, False for pixels to ignore (nodata, padding).

    Returns:
        Scalar loss.
    """
    x, t, v = _prepare(logits, target, valid)
    pixel = F.binary_cross_entropy_with_logits(x, t, reduction="none") * v
    count = v.sum(dim=1)
    per_mask = pixel.sum(dim=1) / count.clamp(min=1)
    return _mean_over_masks(per_mask, count > 0, logits)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, eps: float = DICE_EPS
) -> torch.Tensor:
    """Dice loss in the squared-denominator form, per mask then averaged over masks.

    ``1 − (2·Σ p·t + ε) / (Σ p² + Σ t² + ε)`` with ``p = sigmoid(logits)``, sums over the
    valid pixels of one mask.

    Args:
        logits: ``B×1×H×W`` mask logits.
        target: ``B×1×H×W`` in {0, 1}.
        valid: optional ``B×1×H×W`` bool, False for pixels to ignore.
        eps: smoothing term, :data:`DICE_EPS` (1.0) by default.

    Returns:
        Scalar loss.
    """
    x, t, v = _prepare(logits, target, valid)
    p = torch.sigmoid(x) * v
    t = t * v
    inter = (p * t).sum(dim=1)
    denom = p.square().sum(dim=1) + t.square().sum(dim=1)
    per_mask = 1.0 - (2.0 * inter + eps) / (denom + eps)
    return _mean_over_masks(per_mask, v.sum(dim=1) > 0, logits)


@dataclass
class LossWeights:
    """Weights of the text cross-entropy, BCE and Dice terms."""

    text: float = 1.0
    bce: float = 1.0
    dice: float = 1.0

    @classmethod
    def paper(cls) -> LossWeights:
        """The SPEX paper's weights: text 1, BCE 1, Dice 1."""
        return cls(text=1.0, bce=1.0, dice=1.0)

    @classmethod
    def released(cls) -> LossWeights:
        """The SPEX released code's weights: text 1, BCE 2, Dice 1."""
        return cls(text=1.0, bce=2.0, dice=1.0)


#: Mask loss terms by the name a recipe's ``loss_weights`` uses: ``(logits, target, valid) → scalar``.
MASK_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "bce": bce_loss,
    "dice": dice_loss,
}


def combine(weights: LossWeights | Mapping[str, float], **terms: torch.Tensor | None) -> torch.Tensor:
    """Weighted sum ``Σ w_name · term_name`` of the named terms that are given.

    Terms left as ``None`` (e.g. the mask terms in a text-only stage) are skipped; a given term
    without a weight is an error (a misspelt name would otherwise be silently dropped).
    """
    weights = asdict(weights) if isinstance(weights, LossWeights) else dict(weights)
    given = {name: x for name, x in terms.items() if x is not None}
    unweighted = sorted(set(given) - set(weights))
    if unweighted:
        raise KeyError(f"combine: no weight for loss term(s) {unweighted}; weights: {sorted(weights)}")
    if not given:
        raise ValueError(f"combine: give at least one of {', '.join(weights)}")
    names = [name for name in weights if name in given]
    total = weights[names[0]] * given[names[0]]
    for name in names[1:]:
        total = total + weights[name] * given[name]
    return total
