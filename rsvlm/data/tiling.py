"""Windows that cover a scene of any size with fixed-size tiles.

:func:`tile_windows` covers an H×W scene with ``tile``×``tile`` windows whose starts are
``tile − overlap`` apart, row-major. What happens at the bottom / right edge is ``edge``:

* ``"shift"`` (prediction): the last window of a row/column is moved back to end exactly at the
  scene's edge, so every window lies inside the scene and is full size;
* ``"pad"`` (SPIE builder): windows keep their regular starts and the last ones are cut at the
  edge; ``h``/``w`` are the parts inside the scene and the reader pads the rest of the tile.

Either way a scene side smaller than a tile gives one window of the scene's size there (padded
to the tile by the dataset that reads it).

Test-time flips (:data:`FLIPS`): a prediction tile may be read mirrored (:func:`flip_tile`) and
its prediction mirrored back with the same call (each flip is its own inverse), so that the
scene's stitcher averages the model's answers on the tile and on its mirror images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar

import numpy as np

#: (row offset, column offset, height, width) of a window in scene pixels.
Window = tuple[int, int, int, int]

#: Test-time flips of a tile by name: the axes each one reverses (rows -2, columns -1).
FLIPS: dict[str, tuple[int, ...]] = {"none": (), "horizontal": (-1,), "vertical": (-2,), "both": (-2, -1)}

ArrayT = TypeVar("ArrayT")


def check_flips(flips: Sequence[str], field: str) -> tuple[str, ...]:
    """``flips`` as a tuple, or a ValueError naming ``field``: names of :data:`FLIPS`, each once,
    ``"none"`` among them (the unflipped pass is the one whose texts are kept)."""
    names = tuple(flips)
    unknown = [f for f in names if f not in FLIPS]
    if unknown:
        raise ValueError(f"{field}: unknown flip {unknown[0]!r}; choose from {list(FLIPS)}")
    if len(set(names)) != len(names) or "none" not in names:
        raise ValueError(f"{field}: give each flip once and 'none' among them, got {list(names)}")
    return names


def flip_tile(array: ArrayT, flip: str) -> ArrayT:
    """``array`` (numpy or torch, ``...×h×w``) mirrored as ``flip`` says; flipping twice gives it back."""
    axes = FLIPS[flip]
    if not axes:
        return array
    if isinstance(array, np.ndarray):
        return np.ascontiguousarray(np.flip(array, axis=axes))  # type: ignore[return-value]
    return array.flip(axes)  # type: ignore[attr-defined]


def _spans(n: int, tile: int, stride: int, overlap: int, edge: str) -> list[tuple[int, int]]:
    """(start, length) of the windows along one side of ``n`` pixels."""
    if n <= tile:
        return [(0, n)]
    if edge == "pad":
        # A window that would only repeat the previous one's overlap is not started.
        return [(s, min(tile, n - s)) for s in range(0, n - overlap, stride)]
    starts = list(range(0, n - tile, stride))
    return [(s, tile) for s in [*starts, n - tile]]


def tile_windows(
    height: int, width: int, tile: int, overlap: int = 0, edge: Literal["shift", "pad"] = "shift"
) -> list[Window]:
    """Windows covering an ``height``×``width`` scene, row-major.

    Args:
        height, width: scene size in pixels.
        tile: window side (the model input size).
        overlap: pixels shared by neighbouring windows (at least; with ``edge="shift"`` the last
            window of a row or column may overlap more, to end at the edge). ``0 <= overlap < tile``.
        edge: ``"shift"`` the last windows back inside the scene, or cut them (``"pad"``).

    Returns:
        ``(row, col, h, w)`` windows. ``"shift"``: ``h = min(tile, height)``, ``w = min(tile,
        width)``; ``"pad"``: ``h``, ``w`` are the parts of each window inside the scene.
    """
    if height < 1 or width < 1:
        raise ValueError(f"tile_windows: scene size must be positive, got {height}×{width}")
    if tile < 1:
        raise ValueError(f"tile_windows: tile must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile_windows: overlap must satisfy 0 <= overlap < tile={tile}, got {overlap}")
    if edge not in ("shift", "pad"):
        raise ValueError(f"tile_windows: edge must be 'shift' or 'pad', got {edge!r}")
    stride = tile - overlap
    rows, cols = _spans(height, tile, stride, overlap, edge), _spans(width, tile, stride, overlap, edge)
    return [(r, c, h, w) for r, h in rows for c, w in cols]
