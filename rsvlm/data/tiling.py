"""Windows that cover a scene of any size with fixed-size tiles.

:func:`tile_windows` covers an H×W scene with ``tile``×``tile`` windows whose starts are
``tile − overlap`` apart; the last window of a row/column is moved back to end exactly at the
scene's edge, so every window lies inside the scene and is full size (a scene smaller than a
tile is one window of the scene's size, padded to the tile by the dataset that reads it).
"""

from __future__ import annotations

#: (row offset, column offset, height, width) of a window in scene pixels.
Window = tuple[int, int, int, int]


def _starts(n: int, tile: int, stride: int) -> list[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride))
    return starts + [n - tile]


def tile_windows(height: int, width: int, tile: int, overlap: int = 0) -> list[Window]:
    """Windows covering an ``height``×``width`` scene, row-major.

    Args:
        height, width: scene size in pixels.
        tile: window side (the model input size).
        overlap: pixels shared by neighbouring windows (at least; the last window of a row or
            column may overlap more, to end at the edge). ``0 <= overlap < tile``.

    Returns:
        ``(row, col, h, w)`` windows; ``h = min(tile, height)``, ``w = min(tile, width)``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"tile_windows: scene size must be positive, got {height}×{width}")
    if tile < 1:
        raise ValueError(f"tile_windows: tile must be >= 1, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile_windows: overlap must satisfy 0 <= overlap < tile={tile}, got {overlap}")
    stride = tile - overlap
    h, w = min(tile, height), min(tile, width)
    return [(r, c, h, w) for r in _starts(height, tile, stride) for c in _starts(width, tile, stride)]
