"""Drawing of the generated RGB "aerial" scenes of :mod:`rsvlm.data.multitask.generated`.

A scene is a textured background of one :data:`SCENE_CLASSES` class with small flat-coloured objects
of :data:`OBJECT_CLASSES` on it. Objects are rotated rectangles, ellipses or crosses (:class:`Shape`):
a pixel belongs to an object when its centre ``(col + 0.5, row + 0.5)`` lies inside the shape, so a
shape's stored numbers give its pixels exactly (:func:`rasterise`).

Backgrounds keep every channel in ``[20, 200]`` while each :data:`COLOURS` entry has a channel outside
that range, so no background pixel ever has an object's colour: the pixels of one colour are objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

#: Object colours (RGB); each has a channel outside the backgrounds' [20, 200].
COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "red": (225, 35, 35),
    "yellow": (240, 220, 40),
    "orange": (245, 140, 20),
    "blue": (30, 90, 235),
}
BACKGROUND_RANGE = (20, 200)


@dataclass(frozen=True)
class ObjectKind:
    """How one object class is drawn: shape, length / width / span ranges (pixels) and its colours."""

    shape: str
    length: tuple[int, int]
    width: tuple[int, int]
    colours: tuple[str, ...]
    span: tuple[int, int] = (0, 0)


#: Object classes; colours overlap between classes so that other classes are colour distractors.
OBJECT_CLASSES: dict[str, ObjectKind] = {
    "ship": ObjectKind("ellipse", (9, 13), (3, 5), ("white", "red", "orange")),
    "car": ObjectKind("rect", (6, 8), (3, 4), ("red", "white", "blue", "yellow")),
    "storage tank": ObjectKind("disc", (5, 8), (5, 8), ("white", "yellow", "orange")),
    "airplane": ObjectKind("cross", (9, 13), (3, 3), ("white", "blue", "red"), span=(8, 12)),
    "building": ObjectKind("rect", (6, 10), (5, 8), ("orange", "red", "blue", "white")),
}


@dataclass(frozen=True)
class Shape:
    """One object's geometry in pixels: centre, length along ``angle`` (degrees), width across it;
    a cross adds a bar of ``span`` across the first one (an airplane's wings)."""

    kind: str
    cx: float
    cy: float
    length: float
    width: float
    angle: float
    span: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def half_extents(self) -> tuple[float, float]:
        """Half width and half height of the axis-aligned box around the shape (a superset of its pixels)."""
        c, s = abs(math.cos(math.radians(self.angle))), abs(math.sin(math.radians(self.angle)))
        a, b = self.length / 2, self.width / 2
        if self.kind in ("ellipse", "disc"):
            return math.sqrt((a * c) ** 2 + (b * s) ** 2), math.sqrt((a * s) ** 2 + (b * c) ** 2)
        ex, ey = a * c + b * s, a * s + b * c
        if self.kind == "cross":
            wing = self.span / 2
            ex, ey = max(ex, b * c + wing * s), max(ey, b * s + wing * c)
        return ex, ey

    def bounds(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` whole pixels (end exclusive) that hold every pixel of the shape."""
        ex, ey = self.half_extents()
        return (
            math.floor(self.cx - ex),
            math.floor(self.cy - ey),
            math.ceil(self.cx + ex),
            math.ceil(self.cy + ey),
        )


def rasterise(shape: Shape, size: tuple[int, int]) -> np.ndarray:
    """``H×W`` bool: the pixels whose centres lie inside ``shape``."""
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    dx, dy = cols + 0.5 - shape.cx, rows + 0.5 - shape.cy
    theta = math.radians(shape.angle)
    u = dx * math.cos(theta) + dy * math.sin(theta)  # along the length
    v = -dx * math.sin(theta) + dy * math.cos(theta)  # across it
    a, b = shape.length / 2, shape.width / 2
    if shape.kind in ("ellipse", "disc"):
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    inside = (np.abs(u) <= a) & (np.abs(v) <= b)
    if shape.kind == "cross":
        inside |= (np.abs(u) <= b) & (np.abs(v) <= shape.span / 2)
    return inside


def sample_shape(rng: np.random.Generator, name: str, size: int) -> Shape:
    """A random shape of class ``name`` lying inside a ``size``² scene (numbers rounded as stored)."""
    kind = OBJECT_CLASSES[name]
    length = int(rng.integers(kind.length[0], kind.length[1] + 1))
    # A disc's width is its length; others draw their own.
    width = length if kind.shape == "disc" else int(rng.integers(kind.width[0], kind.width[1] + 1))
    span = int(rng.integers(kind.span[0], kind.span[1] + 1)) if kind.shape == "cross" else 0
    angle = 0.0 if kind.shape == "disc" else round(float(rng.uniform(0.0, 180.0)), 1)
    shape = Shape(kind.shape, 0.0, 0.0, float(length), float(width), angle, float(span))
    # The centre is drawn where the whole shape fits, so that few draws are rejected.
    ex, ey = shape.half_extents()
    cx = round(float(rng.uniform(ex, max(ex, size - ex))), 2)
    cy = round(float(rng.uniform(ey, max(ey, size - ey))), 2)
    return replace(shape, cx=cx, cy=cy)


def _kinds(names: Iterable[str] | None) -> list[ObjectKind]:
    return list(OBJECT_CLASSES.values()) if names is None else [OBJECT_CLASSES[n] for n in names]


def max_extent(names: Iterable[str] | None = None) -> float:
    """The largest side of any object's box (pixels), over every rotation, among the classes ``names``
    (default: all of :data:`OBJECT_CLASSES`)."""
    sides = []
    for kind in _kinds(names):
        a, b, w = kind.length[1], kind.width[1], kind.span[1]
        sides.append(math.hypot(max(a, w), b) if kind.shape != "disc" else a)
    return max(sides)


def mean_extent(names: Iterable[str] | None = None) -> float:
    """A typical object box side (mid-range sizes at 45°) among the classes ``names`` (default: all):
    the unit of the packing check."""
    sides = []
    for kind in _kinds(names):
        a, b, w = (sum(r) / 2 for r in (kind.length, kind.width, kind.span))
        sides.append((max(a, w) + b) / math.sqrt(2) if kind.shape != "disc" else a)
    return sum(sides) / len(sides)


# ---------------------------------------------------------------------------------------------- backgrounds
def coarse_noise(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """``size``² noise in [-1, 1] that varies over ``cell`` pixels (a coarse grid, bilinear upsampled)."""
    grid = rng.uniform(-1.0, 1.0, (size // cell + 2, size // cell + 2)).astype(np.float32)
    image = Image.fromarray(grid).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _fine(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    return rng.normal(0.0, sigma, (size, size, 1)).astype(np.float32)


def _farmland(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two to four parcels, each a crop colour with plough stripes in its own direction."""
    crops = np.array([(90, 140, 50), (150, 120, 70), (170, 160, 80), (110, 165, 75)], np.float32)
    cuts = np.sort(rng.integers(size // 5, size - size // 5, int(rng.integers(1, 4))))
    edges = [0, *cuts.tolist(), size]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    along = cols if rng.random() < 0.5 else rows  # parcels side by side or stacked
    out = np.empty((size, size, 3), np.float32)
    for k in range(len(edges) - 1):
        part = (along >= edges[k]) & (along < edges[k + 1])
        stripe_axis = rows if rng.random() < 0.5 else cols
        stripes = 12.0 * np.sin(2 * np.pi * stripe_axis / float(rng.uniform(3.0, 6.0)))
        out[part] = crops[int(rng.integers(len(crops)))] + stripes[part, None]
    return out + _fine(rng, size, 4.0)


def _forest(rng: np.random.Generator, size: int) -> np.ndarray:
    """Dark green canopy in crowns of a few pixels."""
    base = np.array((40, 85, 40), np.float32)
    canopy = coarse_noise(rng, size, 3)[..., None] * np.array((12, 22, 12), np.float32)
    return base + canopy + _fine(rng, size, 5.0)


def _residential(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey streets around blocks of muted roofs."""
    period, street = int(rng.integers(12, 17)), int(rng.integers(2, 4))
    roofs = np.array([(160, 110, 90), (150, 150, 150), (130, 90, 70), (175, 160, 140)], np.float32)
    rows, cols = np.mgrid[0:size, 0:size]
    offset = rng.integers(0, period, 2)
    block_r, block_c = (rows + offset[0]) // period, (cols + offset[1]) // period
    pick = rng.integers(0, len(roofs), (size // period + 2, size // period + 2))
    out = roofs[pick[block_r, block_c]]
    is_street = ((rows + offset[0]) % period < street) | ((cols + offset[1]) % period < street)
    out[is_street] = (120, 120, 115)
    return out + _fine(rng, size, 4.0)


def _harbour(rng: np.random.Generator, size: int) -> np.ndarray:
    """Blue water with a grey quay along one edge."""
    water = np.array((40, 75, 130), np.float32) + coarse_noise(rng, size, 8)[..., None] * 10.0
    out = np.broadcast_to(water, (size, size, 3)).copy()
    width = int(rng.integers(size // 7, size // 4 + 1))
    side = int(rng.integers(4))
    quay = np.zeros((size, size), bool)
    quay[:width] = True
    out[np.rot90(quay, side)] = (150, 150, 140)
    return out + _fine(rng, size, 3.0)


def _desert(rng: np.random.Generator, size: int) -> np.ndarray:
    """Pale sand with broad dunes."""
    dunes = coarse_noise(rng, size, 12)[..., None] * np.array((15, 14, 10), np.float32)
    return np.array((185, 160, 115), np.float32) + dunes + _fine(rng, size, 3.0)


#: Scene classes → their background painter (``size``² float RGB before clipping).
SCENE_CLASSES = {
    "farmland": _farmland,
    "forest": _forest,
    "residential": _residential,
    "harbour": _harbour,
    "desert": _desert,
}


def background(rng: np.random.Generator, scene_class: str, size: int) -> np.ndarray:
    """``size×size×3`` uint8 background of ``scene_class``, every channel in :data:`BACKGROUND_RANGE`."""
    painted = SCENE_CLASSES[scene_class](rng, size)
    return np.clip(np.rint(painted), *BACKGROUND_RANGE).astype(np.uint8)
