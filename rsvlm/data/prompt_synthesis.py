"""Training prompts drawn from ground truth: ViP-LLaVA points and scribbles in a mask, SPHINX-V box jitter.

The prompts are :class:`rsvlm.data.visual_prompts.VisualPrompt` in pixel coordinates of the mask
(pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``); every function draws from the ``rng`` it is
given, so a seeded generator reproduces the prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from rsvlm.data.visual_prompts import VisualPrompt


def _mask_cells(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mask as bool, rows, cols)`` of its pixels; a ValueError when it is not 2-D or empty."""
    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise ValueError(f"mask: must be 2-D (H×W), got shape {m.shape}")
    rows, cols = np.nonzero(m)
    if rows.size == 0:
        raise ValueError("mask: is empty, so no prompt can be synthesised in it")
    return m, rows, cols


def _inside(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``N`` bool: the pixel holding each point ``xy`` (``N×2``) is in ``mask``."""
    cells = np.floor(xy).astype(np.int64)
    ok = (cells >= 0).all(axis=1) & (cells[:, 0] < mask.shape[1]) & (cells[:, 1] < mask.shape[0])
    ok[ok] = mask[cells[ok, 1], cells[ok, 0]]
    return ok


def synthesize_point(mask: np.ndarray, rng: np.random.Generator, tries: int = 10) -> VisualPrompt:
    """A point prompt in ``mask`` (``H×W``), ViP-LLaVA-style: Gaussian around the mask's centroid
    with standard deviation 1/8 of its bounding box (per axis), redrawn up to ``tries`` times until
    it lands in the mask, else a uniformly drawn mask pixel. Snapped to the pixel centre."""
    m, rows, cols = _mask_cells(mask)
    centre = np.array([cols.mean(), rows.mean()]) + 0.5
    spread = np.array([np.ptp(cols) + 1, np.ptp(rows) + 1]) / 8
    for _ in range(tries):
        xy = rng.normal(centre, spread)[None]
        if _inside(m, xy)[0]:
            return VisualPrompt("point", vertices=np.floor(xy) + 0.5)
    k = rng.integers(rows.size)
    return VisualPrompt("point", vertices=[[cols[k] + 0.5, rows[k] + 0.5]])


def synthesize_scribble(mask: np.ndarray, rng: np.random.Generator, samples: int = 32, tries: int = 10) -> VisualPrompt:
    """A scribble in ``mask`` (``H×W``), ViP-LLaVA-style: the cubic Bézier curve whose 4 control
    points are random mask pixel centres, sampled at ``samples`` points. A curve that leaves a
    non-convex mask is redrawn up to ``tries`` times; then its outside points move to the nearest
    mask pixel centre, so every vertex lies in the mask."""
    m, rows, cols = _mask_cells(mask)
    t = np.linspace(0.0, 1.0, samples)[:, None]
    bernstein = np.concatenate([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], axis=1)
    for _ in range(tries):
        pick = rng.integers(rows.size, size=4)
        curve = bernstein @ (np.stack([cols[pick], rows[pick]], axis=1) + 0.5)
        inside = _inside(m, curve)
        if inside.all():
            return VisualPrompt("scribble", vertices=curve)
    _, (near_rows, near_cols) = ndimage.distance_transform_edt(~m, return_indices=True)
    cells = np.floor(curve[~inside]).astype(np.int64).clip(0, [m.shape[1] - 1, m.shape[0] - 1])
    curve[~inside] = np.stack([near_cols[cells[:, 1], cells[:, 0]], near_rows[cells[:, 1], cells[:, 0]]], 1) + 0.5
    return VisualPrompt("scribble", vertices=curve)


def jitter_box(
    box: Sequence[float],
    rng: np.random.Generator,
    shift: float = 1 / 8,
    scale: tuple[float, float] = (0.85, 1.15),
    image_size: tuple[int, int] | None = None,
) -> tuple[float, float, float, float]:
    """SPHINX-V's training jitter of ``box`` = ``(x0, y0, x1, y1)``: the centre moves by
    U(−shift, shift) × the width / height, each side is scaled by U(scale); clipped to
    ``image_size`` = ``(H, W)`` when given."""
    x0, y0, x1, y1 = VisualPrompt("box", box=box).box  # validates the box
    if shift < 0 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"shift, scale: need shift >= 0 and 0 < scale[0] <= scale[1], got {shift}, {scale}")
    size = np.array([x1 - x0, y1 - y0])
    centre = np.array([x0 + x1, y0 + y1]) / 2 + rng.uniform(-shift, shift, 2) * size
    half = size * rng.uniform(*scale, 2) / 2
    corners = np.stack([centre - half, centre + half])
    if image_size is not None:
        corners = corners.clip(0, [image_size[1], image_size[0]])
    return tuple(float(c) for c in corners.ravel())
