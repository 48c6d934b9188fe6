"""Drawing visual prompts: SAE canvases, ViP-LLaVA overlays, and stroke resampling.

Coordinates follow :class:`rsvlm.contracts.VisualPromptBatch`: pixels ``(x, y)``, x right, y down,
pixel ``(i, j)`` covering ``[j, j+1) × [i, i+1)``, so its centre is ``(j + 0.5, i + 0.5)``.

A prompt's mark is the set of pixels whose **centre** lies in its (closed) shape:

* point: the disc of radius ``r`` around the point;
* box: the rectangle ``[x0, x1] × [y0, y1]`` (``box_style="outline"``: its pixels within
  ``line_width`` of the border, ViP-LLaVA's rectangle);
* scribble: the points within ``w/2`` of the polyline (a round-capped stroke). Width 1 is the
  Bresenham line between the pixels holding consecutive vertices (PIL ``ImageDraw``, no
  anti-aliasing), since a 1-px band by the centre rule doubles up at ties;
* mask: the mask itself (nearest-neighbour when the canvas has another size).

Why the centre rule in numpy rather than ``cv2.circle``/``cv2.polylines``: cv2's filled discs
are a pixel wider than their radius and its thick lines differ from the stroke by 20-40 % of
the pixels, whereas the centre rule is exactly equivariant under the flips, quarter turns and
integer shifts of :mod:`rsvlm.data.transforms`, so transforming a prompt and transforming its
raster give the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from rsvlm.contracts import PROMPT_KINDS, VisualPromptBatch

#: Overlay colours, slot k → ``PALETTE[k % len(PALETTE)]``: ViP-LLaVA's colour pool (red, lime,
#: blue, yellow, fuchsia, aqua, orange, purple, gold) and white for a tenth slot.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 165, 0),
    (128, 0, 128),
    (255, 215, 0),
    (255, 255, 255),
)

BoxStyle = Literal["fill", "outline"]
_POINT, _BOX, _SCRIBBLE, _MASK = (PROMPT_KINDS[k] for k in ("point", "box", "scribble", "mask"))


def default_point_radius(side: int) -> int:
    """Disc radius for a canvas whose longer side is ``side``: ``max(2, round(side / 112))``
    (ViP-LLaVA's radius 3 at 336 px)."""
    return max(2, round(side / 112))


def default_line_width(side: int) -> int:
    """Stroke width for a canvas whose longer side is ``side``: ``max(2, round(3 * side / 336))``."""
    return max(2, round(3 * side / 336))


def resample_stroke(vertices: np.ndarray, count: int) -> np.ndarray:
    """``count`` points equally spaced by arc length along a polyline.

    Args:
        vertices: ``P×2`` ``(x, y)``, P >= 1.
        count: number of points, >= 1.

    Returns:
        ``count×2`` float64; the first and last vertex are included (``count`` >= 2). A single
        vertex, a zero-length stroke or ``count == 1`` gives the first vertex repeated.
    """
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    if len(v) == 0:
        raise ValueError("vertices: a stroke needs at least one vertex")
    if count < 1:
        raise ValueError(f"count: must be >= 1, got {count}")
    step = np.linalg.norm(np.diff(v, axis=0), axis=1)
    # Repeated vertices would give np.interp a flat run of arc length, which it does not define.
    v = v[np.concatenate([[True], step > 0])]
    arc = np.concatenate([[0.0], np.cumsum(step[step > 0])])
    if count == 1 or arc[-1] == 0:
        return np.repeat(v[:1], count, axis=0)
    at = np.linspace(0.0, arc[-1], count)
    return np.stack([np.interp(at, arc, v[:, 0]), np.interp(at, arc, v[:, 1])], axis=1)


def _clip_segment(a: np.ndarray, b: np.ndarray, width: float, height: float) -> tuple[float, float] | None:
    """Parameters ``(t0, t1)`` of the part of segment a→b inside ``[0, width] × [0, height]``
    (Liang–Barsky), or None when it misses the window."""
    d, t0, t1 = b - a, 0.0, 1.0
    for p, q in ((-d[0], a[0]), (d[0], width - a[0]), (-d[1], a[1]), (d[1], height - a[1])):
        if p == 0 and q < 0:
            return None
        if p < 0:
            t0 = max(t0, q / p)
        elif p > 0:
            t1 = min(t1, q / p)
    return (t0, t1) if t0 <= t1 else None


def clip_polyline(vertices: np.ndarray, width: float, height: float) -> np.ndarray | None:
    """The longest connected piece of a polyline inside the window ``[0, width] × [0, height]``.

    Args:
        vertices: ``P×2`` ``(x, y)``, P >= 2.
        width, height: the window's size.

    Returns:
        ``Q×2`` float64, the piece's vertices with the crossing points on the window's border
        (each segment clipped exactly, Liang–Barsky), or None when the polyline misses the window.
        A stroke that leaves and re-enters keeps only its longest piece, so one stroke stays one.
    """
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 2)
    pieces: list[list[np.ndarray]] = []
    joined = False  # the previous segment ended inside, so the next one continues its piece
    for a, b in zip(vertices[:-1], vertices[1:]):
        part = _clip_segment(a, b, width, height)
        if part is None:
            joined = False
            continue
        start, end = a + part[0] * (b - a), a + part[1] * (b - a)
        if not (joined and part[0] == 0):
            pieces.append([start])
        pieces[-1].append(end)
        joined = part[1] == 1
    if not pieces:
        return None
    lengths = [np.linalg.norm(np.diff(np.stack(p), axis=0), axis=1).sum() for p in pieces]
    return np.stack(pieces[int(np.argmax(lengths))])


def _cell_range(lo: float, hi: float, n: int) -> tuple[int, int]:
    """``(start, stop)`` of the cells k in ``[0, n)`` whose centre ``k + 0.5`` may lie in ``[lo, hi]``."""
    return max(0, math.floor(lo - 0.5)), min(n, math.ceil(hi + 0.5))


def _draw_capsules(out: np.ndarray, vertices: np.ndarray, radius: float) -> None:
    """Set in ``out`` (H×W bool) the pixels whose centre is within ``radius`` of the polyline
    ``vertices`` (P×2; one vertex is a disc). Each segment only visits its bounding window."""
    h, w = out.shape
    ends = np.concatenate([vertices, vertices[-1:]]) if len(vertices) == 1 else vertices
    for a, b in zip(ends[:-1], ends[1:]):
        i0, i1 = _cell_range(min(a[1], b[1]) - radius, max(a[1], b[1]) + radius, h)
        j0, j1 = _cell_range(min(a[0], b[0]) - radius, max(a[0], b[0]) + radius, w)
        if i0 >= i1 or j0 >= j1:
            continue
        py = np.arange(i0, i1, dtype=np.float64)[:, None] + 0.5 - a[1]
        px = np.arange(j0, j1, dtype=np.float64)[None, :] + 0.5 - a[0]
        d = b - a
        length2 = float(d @ d)
        t = np.clip((px * d[0] + py * d[1]) / length2, 0.0, 1.0) if length2 > 0 else 0.0
        out[i0:i1, j0:j1] |= (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 <= radius * radius


def _draw_bresenham(out: np.ndarray, vertices: np.ndarray) -> None:
    """Set in ``out`` (H×W bool) the 1-px Bresenham polyline through the pixels holding ``vertices``."""
    h, w = out.shape
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    cells = [(math.floor(x), math.floor(y)) for x, y in vertices]
    if len(cells) == 1:
        draw.point(cells, fill=1)
    else:
        draw.line(cells, fill=1, width=1)
    out |= np.asarray(canvas, dtype=bool)


def _draw_box(out: np.ndarray, box: np.ndarray, style: BoxStyle, thickness: int) -> None:
    """Set in ``out`` (an empty H×W bool canvas) the pixels whose centre is in ``box`` =
    ``(x0, y0, x1, y1)``; ``"outline"`` keeps those within ``thickness`` of its border."""
    h, w = out.shape
    x0, y0, x1, y1 = (float(c) for c in box)

    def span(lo: float, hi: float, n: int) -> slice:
        # Centres k + 0.5 in [lo, hi] ⇔ k in [ceil(lo - 0.5), floor(hi - 0.5)].
        return slice(max(0, math.ceil(lo - 0.5)), max(0, min(n, math.floor(hi - 0.5) + 1)))

    out[span(y0, y1, h), span(x0, x1, w)] = True
    if style == "outline":
        out[span(y0 + thickness, y1 - thickness, h), span(x0 + thickness, x1 - thickness, w)] = False


def _canvas_masks(prompts: VisualPromptBatch, size: tuple[int, int]) -> np.ndarray | None:
    """``B×M×H×W`` bool masks of ``prompts`` on a canvas of ``size`` (nearest-exact, as
    :func:`rsvlm.data.transforms.resize_pad` resizes masks), or None."""
    if prompts.masks is None:
        return None
    masks = prompts.masks.detach().cpu()
    if tuple(masks.shape[-2:]) != size:
        masks = F.interpolate(masks.float(), size=size, mode="nearest-exact") > 0.5
    return masks.bool().numpy()


def slot_marks(
    prompts: VisualPromptBatch,
    size: tuple[int, int] | None = None,
    point_radius: int | None = None,
    line_width: int | None = None,
    box_style: BoxStyle = "fill",
) -> np.ndarray:
    """Each slot's mark (see the module docstring), ``B×M×H×W`` bool; empty slots are all False.

    Args:
        prompts: the batch; its coordinates are in ``prompts.image_size``.
        size: ``(H, W)`` of the canvas (default ``prompts.image_size``); coordinates are scaled by
            ``W / W0`` and ``H / H0`` and masks resized by nearest neighbour.
        point_radius, line_width: in canvas pixels; default :func:`default_point_radius` and
            :func:`default_line_width` of the canvas' longer side.
        box_style: ``"fill"`` or ``"outline"`` (``line_width`` thick).
    """
    if box_style not in ("fill", "outline"):
        raise ValueError(f"box_style: must be 'fill' or 'outline', got {box_style!r}")
    h0, w0 = prompts.image_size
    h, w = (int(s) for s in (size or prompts.image_size))
    side = max(h, w)
    radius = default_point_radius(side) if point_radius is None else point_radius
    width = default_line_width(side) if line_width is None else line_width
    if radius < 1 or width < 1:
        raise ValueError(f"point_radius, line_width: must be >= 1 pixel, got {radius}, {width}")
    scale = np.array([w / w0, h / h0])
    kind = prompts.kind.detach().cpu().numpy()
    points = prompts.points.detach().cpu().double().numpy() * scale
    npoints = prompts.npoints.detach().cpu().numpy()
    boxes = prompts.boxes.detach().cpu().double().numpy() * np.tile(scale, 2)
    masks = _canvas_masks(prompts, (h, w))
    out = np.zeros((*kind.shape, h, w), dtype=bool)
    for b, m in zip(*np.nonzero(kind)):
        vertices = points[b, m, : max(1, npoints[b, m])]
        if kind[b, m] == _POINT:
            _draw_capsules(out[b, m], vertices[:1], radius)
        elif kind[b, m] == _BOX:
            _draw_box(out[b, m], boxes[b, m], box_style, width)
        elif kind[b, m] == _SCRIBBLE and width == 1:
            _draw_bresenham(out[b, m], vertices)
        elif kind[b, m] == _SCRIBBLE:
            _draw_capsules(out[b, m], vertices, width / 2)
        elif kind[b, m] == _MASK:
            if masks is None:
                raise ValueError(f"masks: slot ({b}, {m}) is a mask prompt but the batch has no masks")
            out[b, m] = masks[b, m]
        else:
            raise ValueError(f"kind: slot ({b}, {m}) has kind {kind[b, m]}, not one of {PROMPT_KINDS}")
    return out


def rasterize(
    prompts: VisualPromptBatch,
    size: tuple[int, int] | None = None,
    point_radius: int | None = None,
    line_width: int | None = None,
    box_style: BoxStyle = "fill",
) -> torch.Tensor:
    """The SAE canvas: ``B×(M+3)×H×W`` float in {0, 1} on ``prompts``' device.

    Channel k < M is slot k's mark (identity channels, "Region k+1"); channels M, M+1, M+2 are
    the union of the point, box and free-form (scribble or mask) marks. Background prompts
    (label 0) are drawn like foreground ones. Arguments as in :func:`slot_marks`.
    """
    marks = slot_marks(prompts, size, point_radius, line_width, box_style)
    kind = prompts.kind.detach().cpu().numpy()[..., None, None]
    types = [marks & (kind == _POINT), marks & (kind == _BOX), marks & ((kind == _SCRIBBLE) | (kind == _MASK))]
    canvas = np.concatenate([marks, *(t.any(axis=1, keepdims=True) for t in types)], axis=1)
    return torch.from_numpy(canvas.astype(np.float32)).to(prompts.kind.device)


def prompt_layer(
    prompts: VisualPromptBatch,
    size: tuple[int, int] | None = None,
    colours: Sequence[tuple[int, int, int]] = PALETTE,
    alpha: int = 160,
    point_radius: int | None = None,
    line_width: int | None = None,
) -> np.ndarray:
    """The transparent RGBA layer of one sample's prompts, ``H×W×4`` uint8.

    Slot k is painted in ``colours[k % len(colours)]`` with opacity ``alpha``, later slots over
    earlier ones (as ViP-LLaVA's ``ImageDraw`` on an RGBA layer replaces pixels); boxes as
    outlines so the object stays visible. Unmarked pixels are ``(0, 0, 0, 0)``.
    """
    if prompts.batch_size != 1:
        raise ValueError(f"prompts: an overlay draws one sample, got a batch of {prompts.batch_size}")
    if not 0 <= alpha <= 255:
        raise ValueError(f"alpha: must be in 0..255, got {alpha}")
    if not colours:
        raise ValueError("colours: needs at least one colour")
    marks = slot_marks(prompts, size, point_radius, line_width, box_style="outline")[0]
    layer = np.zeros((*marks.shape[1:], 4), dtype=np.uint8)
    for k, mark in enumerate(marks):
        layer[mark] = (*colours[k % len(colours)], alpha)
    return layer


def alpha_composite(image_rgb: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """``layer`` (``H×W×4`` uint8) over an opaque ``image_rgb`` (``H×W×3`` uint8) → ``H×W×3`` uint8.

    The integer arithmetic of Pillow's ``ImagingAlphaComposite`` (7 extra bits, rounded divisions
    by 255), so the bytes equal ``PIL.Image.alpha_composite``'s without a round trip through PIL.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"image_rgb: expected H×W×3 uint8, got {image_rgb.shape} {image_rgb.dtype}")
    if layer.shape != (*image_rgb.shape[:2], 4) or layer.dtype != np.uint8:
        raise ValueError(f"layer: expected {(*image_rgb.shape[:2], 4)} uint8, got {layer.shape} {layer.dtype}")
    dst, src = image_rgb.astype(np.int64), layer[..., :3].astype(np.int64)
    src_a = layer[..., 3:].astype(np.int64)
    out_a255 = src_a * 255 + 255 * (255 - src_a)  # the image is opaque: its alpha is 255
    coef1 = src_a * 255 * 255 * 128 // out_a255
    mixed = src * coef1 + dst * (255 * 128 - coef1) + (0x80 << 7)
    blended = ((((mixed >> 8) + mixed) >> 8) >> 7).astype(np.uint8)
    return np.where(src_a == 0, image_rgb, blended)


def overlay(
    image_rgb: np.ndarray,
    prompts: VisualPromptBatch,
    colours: Sequence[tuple[int, int, int]] = PALETTE,
    alpha: int = 160,
    point_radius: int | None = None,
    line_width: int | None = None,
) -> np.ndarray:
    """ViP-LLaVA-style picture: one sample's prompts (B = 1) drawn on ``image_rgb`` (``H×W×3``
    uint8) in the slot colours, alpha-composited; returns ``H×W×3`` uint8.

    The prompts are scaled from ``prompts.image_size`` to the image's size.
    """
    layer = prompt_layer(prompts, tuple(image_rgb.shape[:2]), colours, alpha, point_radius, line_width)
    return alpha_composite(image_rgb, layer)
