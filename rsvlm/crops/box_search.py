"""Prompt-guided cropping's box search: the crop box of an attention map (GeoMag's PSC).

:func:`adaptive_box` is the sliding-window search of ViCrop (``bbox_from_att_image_adaptive``),
reimplemented with its tie-breaking: for each size ratio the window with the largest attention
sum (scanning x-major, the first maximum kept) scores its excess over the mean of its
left/right/up/down neighbour windows, per cell; the first best ratio wins. Boxes are integer
``(x1, y1, x2, y2)``, half-open, in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[int, int, int, int]
RATIOS: tuple[float, ...] = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


def window_sums(attention: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """``S[y, x] = Σ attention[y:y+bh, x:x+bw]`` for every window inside the map (integral image)."""
    table = np.pad(np.cumsum(np.cumsum(attention.astype(np.float64), 0), 1), ((1, 0), (1, 0)))
    return table[bh:, bw:] - table[:-bh, bw:] - table[bh:, :-bw] + table[:-bh, :-bw]


def _first_max_x_major(sums: np.ndarray) -> tuple[int, int]:
    """``(y, x)`` of the first maximum when scanning x (columns) in the outer loop, y inner."""
    flat = sums.T.reshape(-1)  # column-major order
    index = int(np.argmax(flat))  # numpy keeps the first of equal maxima
    return index % sums.shape[0], index // sums.shape[0]


def adaptive_box(
    attention: np.ndarray, image_size: tuple[int, int], bbox_size: float, ratios: Sequence[float] = RATIOS
) -> Box:
    """The crop box of an attention map (see the module docstring).

    Args:
        attention: ``g_h×g_w`` attention map over the image's token grid.
        image_size: ``(W, H)`` of the image the box is for.
        bbox_size: base side ``s`` in pixels; candidate sides are ``s·r`` for each ratio.
        ratios: candidate size ratios, in order (ties go to the first).

    Returns:
        ``(x1, y1, x2, y2)`` inside the image; the whole image when even the first ratio's window
        covers the grid.
    """
    attention = np.asarray(attention, dtype=np.float64)
    grid_h, grid_w = attention.shape
    width, height = image_size
    cell_w, cell_h = width / grid_w, height / grid_h
    best: tuple[float, float, int, int, int, int] | None = None  # diff, ratio, x, y, bw, bh
    for i, ratio in enumerate(ratios):
        bw = min(int(bbox_size * ratio / cell_w), grid_w)
        bh = min(int(bbox_size * ratio / cell_h), grid_h)
        if grid_w - bw < 1 and grid_h - bh < 1:
            if i == 0:
                return 0, 0, int(width), int(height)
            continue
        bw, bh = max(bw, 1), max(bh, 1)
        sums = window_sums(attention, bh, bw)
        y, x = _first_max_x_major(sums)
        around = [
            sums[y + dy, x + dx]
            for dy, dx in ((0, -1), (0, 1), (-1, 0), (1, 0))  # left, right, up, down
            if 0 <= y + dy < sums.shape[0] and 0 <= x + dx < sums.shape[1]
        ]
        # No neighbour (a single window position): the window's own mean (numpy's mean of nothing is NaN).
        diff = (sums[y, x] - (np.mean(around) if around else 0.0)) / (bw * bh)
        if best is None or diff > best[0]:
            best = (diff, ratio, x, y, bw, bh)
    assert best is not None  # ratios[0] either returned or was evaluated
    _, ratio, x, y, bw, bh = best
    half = int(bbox_size * ratio // 2)
    cx = int(x * cell_w + cell_w * bw / 2)
    cy = int(y * cell_h + cell_h * bh / 2)
    cx = min(max(cx, half), int(width) - half)
    cy = min(max(cy, half), int(height) - half)
    return max(0, cx - half), max(0, cy - half), min(int(width), cx + half), min(int(height), cy + half)


def crop_side(parent_w: int, parent_h: int, fraction: float = 0.42, max_fraction: float = 0.9) -> float:
    """Base crop side for a parent of ``parent_w×parent_h``: ``fraction·min(W, H)``; ``adaptive_box``
    scales it by up to 2, so it is capped at ``max_fraction/2`` of the parent's shorter side
    (each crop then covers less than its parent)."""
    shorter = min(parent_w, parent_h)
    return min(fraction * shorter, max_fraction * shorter / max(RATIOS))
