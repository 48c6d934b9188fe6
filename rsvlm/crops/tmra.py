"""MagCrop's task-granularity resolution adjustment (TMRA, GeoMag Eq. 2–3) — pure functions, no model.

Images are ``C×H×W`` float tensors in ``[0, 1]`` (before any model normalisation); boxes are
integer ``(x1, y1, x2, y2)``, half-open, in pixels. Every composed image has **the geometry of the
input**: crops are pasted back where they came from, so masks, boxes and metrics need no remapping.

Task-granularity resolution adjustment (TMRA):

* ``D(x)`` (:func:`degrade`, Eq. 3): down to ``⌊H/4⌋×⌊W/4⌋`` (bilinear with antialiasing, as PIL
  resizes) and back up to ``H×W`` (bilinear): the same image at a quarter of the detail;
* image level: the image at ``100×100`` (:func:`resize_to`);
* region level: ``C₁ ⊕ D(I)`` (:func:`compose_region`): the crop at full detail over the degraded image;
* pixel level: ``C₂ ⊕ D(C₁) ⊕ D(D(I))`` (:func:`compose_pixel`), pasted coarse to fine so the finer
  crop wins; ``D(C₁)`` degrades the crop in its own frame.

The boxes come from prompt-guided cropping (:mod:`rsvlm.crops.box_search`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]


def _resize(x: torch.Tensor, size: tuple[int, int], antialias: bool) -> torch.Tensor:
    return F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=antialias)[0]


def degrade(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """``D(x)``: ``C×H×W`` → down by ``factor`` (antialiased bilinear) → back to ``H×W`` (bilinear)."""
    height, width = x.shape[-2:]
    small = _resize(x, (max(1, height // factor), max(1, width // factor)), antialias=True)
    return _resize(small, (height, width), antialias=False)


def resize_to(x: torch.Tensor, size: tuple[int, int] = (100, 100)) -> torch.Tensor:
    """The image-level input ``I_{100×100}`` (antialiased bilinear)."""
    return _resize(x, tuple(size), antialias=True)


def check_box(box: Sequence[int], height: int, width: int) -> Box:
    """``box`` as ints, or a ``ValueError`` naming it when it is empty or leaves the image."""
    x1, y1, x2, y2 = (int(v) for v in box)
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise ValueError(f"box {tuple(box)} is empty or outside the {width}×{height} image")
    return x1, y1, x2, y2


def crop(x: torch.Tensor, box: Sequence[int]) -> torch.Tensor:
    """``x[:, y1:y2, x1:x2]``."""
    x1, y1, x2, y2 = check_box(box, *x.shape[-2:])
    return x[:, y1:y2, x1:x2]


def paste(base: torch.Tensor, patch: torch.Tensor, box: Sequence[int]) -> torch.Tensor:
    """A copy of ``base`` with ``patch`` (``C×(y2−y1)×(x2−x1)``) written at ``box`` (the ⊕ operator)."""
    x1, y1, x2, y2 = check_box(box, *base.shape[-2:])
    if tuple(patch.shape[-2:]) != (y2 - y1, x2 - x1):
        raise ValueError(f"patch {tuple(patch.shape[-2:])} does not fit box {(x1, y1, x2, y2)}")
    out = base.clone()
    out[:, y1:y2, x1:x2] = patch
    return out


def compose_region(image: torch.Tensor, b1: Sequence[int]) -> torch.Tensor:
    """Region level: ``C₁(I) ⊕ D(I)``, ``C×H×W``."""
    return paste(degrade(image), crop(image, b1), b1)


def compose_pixel(image: torch.Tensor, b1: Sequence[int], b2: Sequence[int]) -> torch.Tensor:
    """Pixel level: ``C₂(C₁) ⊕ D(C₁) ⊕ D(D(I))``; ``b2`` in the frame of crop ``b1``."""
    x1, y1, _, _ = check_box(b1, *image.shape[-2:])
    first = crop(image, b1)
    u1, v1, u2, v2 = check_box(b2, *first.shape[-2:])
    out = paste(degrade(degrade(image)), degrade(first), b1)
    return paste(out, first[:, v1:v2, u1:u2], (x1 + u1, y1 + v1, x1 + u2, y1 + v2))
