"""Field-mosaic layouts of generated scenes: land divided into parcels, as farmland is.

The default layout of :mod:`rsvlm.data.scenes` draws blobby vegetation, a river or lakes and
building clusters on bare soil. Much real imagery at 1–10 m is instead a mosaic of parcels —
crop fields, bare fields, flooded fields (rice paddies, floods), built-up blocks — separated by
field edges and roads. :func:`parcel_layout` draws such a mosaic:

1. a square canvas 1.5× the scene side is split recursively into rectangles (the longer side at
   a uniform 30–70 % point) until every side is at most ``max_side`` (a side above
   ``2 · min_side`` splits again with probability 1/2, so parcel sizes vary);
2. each parcel takes a class with the scene's class weights (Dirichlet(1, 1, 1, 0.5) over soil,
   vegetation, water and building; each target category absent with probability
   :data:`rsvlm.data.scenes.ABSENT_RATE`), a built-up parcel becoming blocks of buildings with
   one-pixel soil streets;
3. parcels keep a one-pixel bare-soil edge with probability 1/2 per scene (roads, dykes);
4. the canvas is rotated by a uniform angle (nearest neighbour, ``scipy.ndimage.rotate``) and
   its centre cropped, and with probability 0.3 a river crosses the scene.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import rotate

_SOIL, _VEGETATION, _WATER, _BUILDING = 0, 1, 2, 3


def split_parcels(
    height: int, width: int, rng: np.random.Generator, min_side: int, max_side: int
) -> list[tuple[int, int, int, int]]:
    """Recursive splits of a ``height × width`` canvas: rectangles ``(y0, y1, x0, x1)`` that tile it."""
    done, todo = [], [(0, height, 0, width)]
    while todo:
        y0, y1, x0, x1 = todo.pop()
        h, w = y1 - y0, x1 - x0
        longest = max(h, w)
        must = longest > max_side
        may = longest >= 2 * min_side and rng.random() < 0.5
        if not (must or may):
            done.append((y0, y1, x0, x1))
            continue
        cut = int(round(rng.uniform(0.3, 0.7) * longest))
        cut = min(max(cut, min_side), longest - min_side) if longest >= 2 * min_side else longest // 2
        if h >= w:
            todo += [(y0, y0 + cut, x0, x1), (y0 + cut, y1, x0, x1)]
        else:
            todo += [(y0, y1, x0, x0 + cut), (y0, y1, x0 + cut, x1)]
    return done


def _built_up(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Blocks of buildings (2–4 px) separated by one-pixel streets, filling an ``h × w`` parcel."""
    block = np.zeros((h, w), dtype=bool)
    y = 0
    while y < h:
        bh = int(rng.integers(2, 5))
        x = 0
        while x < w:
            bw = int(rng.integers(2, 5))
            block[y : y + bh, x : x + bw] = True
            x += bw + 1
        y += bh + 1
    return block


def parcel_layout(
    size: int,
    rng: np.random.Generator,
    absent_rate: float,
    river: Callable[[np.random.Generator, int], np.ndarray],
    min_side: int = 5,
    max_side: int = 24,
) -> np.ndarray:
    """An ``size × size`` uint8 class map of a field mosaic (codes of :mod:`rsvlm.data.scenes`).

    Args:
        size: scene side in pixels.
        rng: draws everything.
        absent_rate: probability that a target category is absent from the scene.
        river: ``river(rng, size)`` → ``size × size`` bool river mask (the scenes' own).
        min_side, max_side: parcel side bounds in pixels.
    """
    canvas = int(np.ceil(1.5 * size))
    weights = rng.dirichlet([1.0, 1.0, 1.0, 0.5])
    present = rng.random(3) >= absent_rate  # vegetation, water, building
    weights[1:] *= present
    weights /= weights.sum()
    edges = rng.random() < 0.5
    classes = np.zeros((canvas, canvas), dtype=np.uint8)
    for y0, y1, x0, x1 in split_parcels(canvas, canvas, rng, min_side, max_side):
        kind = int(rng.choice(4, p=weights))
        if edges:
            y1, x1 = y1 - 1, x1 - 1
        if kind == _BUILDING:
            classes[y0:y1, x0:x1][_built_up(y1 - y0, x1 - x0, rng)] = _BUILDING
        else:
            classes[y0:y1, x0:x1] = kind
    angle = rng.uniform(0.0, 90.0)
    rotated = rotate(classes, angle, reshape=False, order=0, mode="constant", cval=_SOIL)
    start = (canvas - size) // 2
    out = np.ascontiguousarray(rotated[start : start + size, start : start + size])
    if present[1] and rng.random() < 0.3:
        out[river(rng, size)] = _WATER
    return out
