"""Boxes and points written in text, and read back: the grounding format of EarthGPT / MMRS-1M.

A box is written ``[x0,y0,x1,y1]`` and a point ``[x,y]``, each coordinate normalised to [0, 1]
on the square the model sees, with 3 decimals (``decimals`` sets it: 2 gives one token per coordinate
in a tokenizer with every two-digit number, as the offline demo's); several boxes of one phrase share a bracket,
separated by ``;``; a phrase is tagged ``<p>phrase</p>`` before its bracket::

    <p>the ship</p>[0.125,0.250,0.375,0.500;0.600,0.100,0.700,0.200]

The square is the image padded to side ``S = max(H, W)``: at the bottom/right (``bottom_right``,
the SPEX recipes) or centred (``center``, MMRS-1M / SPHINX-V's ``vp_normalize``), so that a
normalised ``u`` is the pixel ``u·S − pad``. Ferret's form, integers in 0–999, reads with
``scale=999``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

PadMode = Literal["bottom_right", "center"]
_NUMBER = r"-?\d+(?:\.\d+)?"
_BRACKET = re.compile(rf"\[\s*({_NUMBER}(?:\s*[,;]\s*{_NUMBER})*)\s*\]")
_PHRASE = re.compile(r"<p>(.*?)</p>\s*$", re.DOTALL)


@dataclass
class Grounding:
    """One phrase and the boxes (``x0, y0, x1, y1`` in pixels) and points (``x, y``) written after it."""

    phrase: str | None
    boxes: list[list[float]] = field(default_factory=list)
    points: list[list[float]] = field(default_factory=list)


def pad_offset(size: tuple[int, int], pad: PadMode) -> tuple[float, float]:
    """``(pad_x, pad_y)``: where the image's (0, 0) lies on the square of side ``max(H, W)``."""
    if pad not in ("bottom_right", "center"):
        raise ValueError(f"pad must be 'bottom_right' or 'center', got {pad!r}")
    height, width = size
    if pad == "bottom_right":
        return 0.0, 0.0
    side = max(height, width)
    return (side - width) / 2, (side - height) / 2


def _normalise(values: list[float], size: tuple[int, int], pad: PadMode) -> list[float]:
    side = max(size)
    pad_x, pad_y = pad_offset(size, pad)
    return [(v + (pad_x if i % 2 == 0 else pad_y)) / side for i, v in enumerate(values)]


def _to_pixels(values: list[float], size: tuple[int, int], pad: PadMode, scale: float) -> list[float]:
    side = max(size)
    pad_x, pad_y = pad_offset(size, pad)
    return [v / scale * side - (pad_x if i % 2 == 0 else pad_y) for i, v in enumerate(values)]


def check_decimals(decimals: int, field: str = "decimals") -> None:
    """A one-line ValueError naming ``field`` unless ``decimals`` is an integer in 1..6."""
    if not (isinstance(decimals, int) and 1 <= decimals <= 6):
        raise ValueError(f"{field}: must be an integer in 1..6, got {decimals!r}")


def format_box(
    box: list[float] | tuple[float, ...], size: tuple[int, int], pad: PadMode = "bottom_right", decimals: int = 3
) -> str:
    """``[x0,y0,x1,y1]`` of a pixel box on an image of ``size`` (H, W), normalised, ``decimals`` decimals."""
    if len(box) != 4:
        raise ValueError(f"format_box: a box is [x0, y0, x1, y1], got {list(box)}")
    check_decimals(decimals)
    return "[" + ",".join(f"{v:.{decimals}f}" for v in _normalise(list(box), size, pad)) + "]"


def format_point(
    point: list[float] | tuple[float, ...], size: tuple[int, int], pad: PadMode = "bottom_right", decimals: int = 3
) -> str:
    """``[x,y]`` of a pixel point, normalised, ``decimals`` decimals."""
    if len(point) != 2:
        raise ValueError(f"format_point: a point is [x, y], got {list(point)}")
    check_decimals(decimals)
    return "[" + ",".join(f"{v:.{decimals}f}" for v in _normalise(list(point), size, pad)) + "]"


def format_grounding(
    phrase: str, boxes: list[list[float]], size: tuple[int, int], pad: PadMode = "bottom_right", decimals: int = 3
) -> str:
    """``<p>phrase</p>[box;box;…]`` for pixel boxes."""
    inner = ";".join(format_box(b, size, pad, decimals)[1:-1] for b in boxes)
    return f"<p>{phrase}</p>[{inner}]"


def parse_grounding(
    text: str, size: tuple[int, int], pad: PadMode = "bottom_right", scale: float = 1.0
) -> list[Grounding]:
    """Every bracket of coordinates in ``text``, in order, with the ``<p>phrase</p>`` just before it.

    Groups of four numbers are boxes, of two points; a bracket whose groups are neither (e.g.
    ``[1, 2, 3]``) is not a coordinate and is skipped, as is a box with x1 < x0 or y1 < y0.

    Args:
        size: ``(H, W)`` of the image the coordinates refer to.
        pad: how it was padded to a square.
        scale: the value of a normalised 1 (1.0 here, 999 in Ferret's integer form).
    """
    found: list[Grounding] = []
    start = 0
    for match in _BRACKET.finditer(text):
        phrase_match = _PHRASE.search(text[start : match.start()])
        start = match.end()
        groups = [[float(v) for v in g.split(",")] for g in re.sub(r"\s+", "", match.group(1)).split(";")]
        boxes = [_to_pixels(g, size, pad, scale) for g in groups if len(g) == 4]
        boxes = [b for b in boxes if b[2] >= b[0] and b[3] >= b[1]]
        points = [_to_pixels(g, size, pad, scale) for g in groups if len(g) == 2]
        if not boxes and not points:
            continue
        phrase = phrase_match.group(1).strip() if phrase_match else None
        found.append(Grounding(phrase=phrase, boxes=boxes, points=points))
    return found
