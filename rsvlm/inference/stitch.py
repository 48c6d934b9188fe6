"""Stitching tile predictions into one scene: a weighted average of overlapping logits.

:class:`Stitcher` averages the tiles' logits where they overlap, weighted per pixel:

* ``blend="cosine"`` (default): weight ``sin²(π·(i + ½)/n)`` along each axis of a tile of
  side n (a Hann window sampled between its zeros), so pixels near a tile's border, where
  the model sees the least context, count least; the weight is never 0, so pixels that only
  one tile covers (near the scene's border) keep that tile's logit.
* ``blend="mean"``: plain average.

Both are weighted averages, so stitching tiles of one known logit field gives that field back
(up to float rounding). Accumulators are float32 ``H×W`` (two per scene in memory). The windows
come from :func:`rsvlm.data.tiling.tile_windows`; :func:`window_prediction` places a predicted
tile on its window (padding cut off, a test-time flip undone), so a tile read in several flips
adds the mean of its mirrored-back answers.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from rsvlm.data.tiling import Window, flip_tile

Blend = Literal["cosine", "mean"]
BLENDS: tuple[str, ...] = ("cosine", "mean")


def blend_weights(height: int, width: int, blend: Blend = "cosine") -> np.ndarray:
    """Per-pixel weight ``height``×``width`` (float32, all > 0) of one tile (see module docstring)."""
    if blend == "mean":
        return np.ones((height, width), dtype=np.float32)
    if blend != "cosine":
        raise ValueError(f"blend must be 'cosine' or 'mean', got {blend!r}")

    def axis(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2

    return np.outer(axis(height), axis(width)).astype(np.float32)


def window_prediction(
    meta: dict[str, Any], logits: torch.Tensor, valid: torch.Tensor
) -> tuple[Window, torch.Tensor, torch.Tensor]:
    """A predict tile's ``T×T`` ``logits`` and ``valid`` pixels on its window of the scene.

    Returns:
        ``(window, h×w logits, h×w valid)``: ``meta["window"]`` ``(row, col, h, w)``, the padding
        past ``h×w`` cut off and the tile's test-time flip (``meta["flip"]``, none when absent)
        undone.
    """
    window: Window = tuple(int(x) for x in meta["window"])  # type: ignore[assignment]
    _, _, h, w = window
    flip = meta.get("flip", "none")
    return window, flip_tile(logits[:h, :w], flip), flip_tile(valid[:h, :w], flip)


class Stitcher:
    """Weighted average of tile logits over a scene.

    Args:
        height, width: scene size.
        blend: ``"cosine"`` or ``"mean"``.
    """

    def __init__(self, height: int, width: int, blend: Blend = "cosine") -> None:
        self.height, self.width, self.blend = height, width, blend
        self._sum = np.zeros((height, width), dtype=np.float32)
        self._weight = np.zeros((height, width), dtype=np.float32)
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def add(self, window: Window, logits: np.ndarray | torch.Tensor) -> None:
        """Add ``h×w`` logits of the window ``(row, col, h, w)``."""
        r, c, h, w = window
        x = (
            logits.detach().float().cpu().numpy()
            if isinstance(logits, torch.Tensor)
            else np.asarray(logits, np.float32)
        )
        if x.shape != (h, w):
            raise ValueError(f"Stitcher.add: logits of window {window} must be {h}×{w}, got {x.shape}")
        if r < 0 or c < 0 or r + h > self.height or c + w > self.width:
            raise ValueError(f"Stitcher.add: window {window} lies outside the {self.height}×{self.width} scene")
        if (h, w) not in self._cache:
            self._cache[(h, w)] = blend_weights(h, w, self.blend)
        weight = self._cache[(h, w)]
        self._sum[r : r + h, c : c + w] += weight * x
        self._weight[r : r + h, c : c + w] += weight

    @property
    def covered(self) -> np.ndarray:
        """``H×W`` bool: pixels that some tile covered."""
        return self._weight > 0

    def result(self) -> np.ndarray:
        """``H×W`` float32 stitched logits; raises if a pixel was not covered."""
        if not self.covered.all():
            missing = int((~self.covered).sum())
            raise ValueError(f"Stitcher: {missing} pixel(s) of the {self.height}×{self.width} scene have no tile")
        return self._sum / self._weight


__all__ = ["BLENDS", "Blend", "Stitcher", "blend_weights", "window_prediction"]


def mask_probabilities(logits: np.ndarray) -> np.ndarray:
    """``sigmoid(logits)`` in float64, ``H×W``: the one formula behind every saved mask, probability
    file and :class:`~rsvlm.inference.prediction.Prediction`, so that they agree pixel for pixel."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
