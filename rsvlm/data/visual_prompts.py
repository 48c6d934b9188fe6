"""Visual prompts on the data side: one prompt, its parsing, batching, geometry and synthesis.

A :class:`VisualPrompt` is a point, box, scribble or mask in pixel coordinates ``(x, y)`` of its
image (x right, y down, pixel ``(i, j)`` covering ``[j, j+1) × [i, i+1)``: SAM's convention, a
pixel centre at +0.5). The helpers here read prompts from user arguments and JSON records,
batch them into a :class:`rsvlm.contracts.VisualPromptBatch`, move them with the image
(tile windows, :func:`rsvlm.data.transforms.resize_pad`, :func:`~rsvlm.data.transforms.random_dihedral`)
and synthesise training prompts from masks (ViP-LLaVA points and scribbles, SPHINX-V box jitter).

JSON form of one prompt (``label`` 1 = foreground, 0 = background; default 1)::

    {"type": "point", "xy": [x, y], "label": 1}
    {"type": "box", "box": [x0, y0, x1, y1]}
    {"type": "scribble", "xy": [[x, y], ...]}
    {"type": "mask", "rle": {"size": [H, W], "counts": "..."}}   # COCO RLE (pycocotools)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask

from rsvlm.contracts import PROMPT_KINDS, VisualPromptBatch
from rsvlm.prompts.geometry import clip_polyline, resample_stroke

PromptKind = Literal["point", "box", "scribble", "mask"]
_JSON_KEYS = {"point": ("xy", "label"), "box": ("box", "label"), "scribble": ("xy", "label"), "mask": ("rle", "label")}


@dataclass(frozen=True, eq=False)
class VisualPrompt:
    """One visual prompt in pixel coordinates of its image.

    Attributes:
        kind: ``"point"``, ``"box"``, ``"scribble"`` or ``"mask"``.
        vertices: ``P×2`` float ``(x, y)``: ``1×2`` for a point, ``P >= 2`` for a scribble, else None.
        box: ``(x0, y0, x1, y1)`` with ``x0 <= x1``, ``y0 <= y1`` for a box, else None.
        mask: ``H×W`` bool with at least one pixel for a mask, else None.
        label: 1 foreground, 0 background (SAM's point labels).
    """

    kind: PromptKind
    vertices: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None
    label: int = 1

    def __post_init__(self) -> None:
        if self.kind not in get_args(PromptKind):
            raise ValueError(f"kind: must be one of {', '.join(get_args(PromptKind))}, got {self.kind!r}")
        if self.label not in (0, 1):
            raise ValueError(f"label: must be 0 (background) or 1 (foreground), got {self.label!r}")
        used = {"point": "vertices", "scribble": "vertices", "box": "box", "mask": "mask"}[self.kind]
        for field in ("vertices", "box", "mask"):
            if (getattr(self, field) is None) == (field == used):
                wanted = "needs" if field == used else "takes no"
                raise ValueError(f"{field}: a {self.kind} prompt {wanted} {field}")
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, used, getattr(self, f"_checked_{used}")())

    def _checked_vertices(self) -> np.ndarray:
        v = np.array(self.vertices, dtype=np.float64)
        v = v.reshape(1, 2) if self.kind == "point" and v.size == 2 else v
        if self.kind == "point" and v.shape != (1, 2):
            raise ValueError(f"vertices: a point needs 1×2 (x, y), got shape {v.shape}")
        if v.ndim != 2 or v.shape[1] != 2 or (self.kind == "scribble" and len(v) < 2):
            raise ValueError(f"vertices: a scribble needs P×2 (x, y) with P >= 2, got shape {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError(f"vertices: coordinates must be finite, got {v.tolist()}")
        v.setflags(write=False)
        return v

    def _checked_box(self) -> tuple[float, float, float, float]:
        b = np.asarray(self.box, dtype=np.float64).ravel()
        if b.shape != (4,) or not np.isfinite(b).all():
            raise ValueError(f"box: must be 4 finite numbers [x0, y0, x1, y1], got {np.asarray(self.box).tolist()}")
        if b[2] < b[0] or b[3] < b[1]:
            raise ValueError(f"box: needs x0 <= x1 and y0 <= y1, got {b.tolist()}")
        return tuple(float(c) for c in b)

    def _checked_mask(self) -> np.ndarray:
        m = np.array(self.mask) != 0
        if m.ndim != 2:
            raise ValueError(f"mask: must be 2-D (H×W), got shape {m.shape}")
        if not m.any():
            raise ValueError("mask: has no foreground pixel")
        m.setflags(write=False)
        return m

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the box; a mask's pixel edges (x1 = last column + 1); the
        extent of a scribble's vertices; a point repeated."""
        if self.box is not None:
            return self.box
        if self.mask is not None:
            rows, cols = np.nonzero(self.mask)
            return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)
        (x0, y0), (x1, y1) = self.vertices.min(axis=0), self.vertices.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


def _numbers(value: Any, where: str, expected: str, lengths: tuple[int, ...]) -> np.ndarray:
    """``value`` as a float vector of one of ``lengths``, else a ValueError naming ``where``."""
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        v = None
    if v is None or v.ndim != 1 or len(v) not in lengths:
        shown = value.tolist() if isinstance(value, np.ndarray) else value
        raise ValueError(f"{where} must be {expected}, got {shown!r}")
    return v


def _made(where: str, **fields: Any) -> VisualPrompt:
    """A :class:`VisualPrompt`, its validation error prefixed with ``where``."""
    try:
        return VisualPrompt(**fields)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _point(value: Any, where: str, label: Any = 1) -> VisualPrompt:
    v = _numbers(value, where, "[x, y] or [x, y, label]", (2, 3))
    if len(v) == 3:  # a label given as a number: 1.0 is 1, but 0.5 stays 0.5 and is refused
        label = int(v[2]) if v[2].is_integer() else float(v[2])
    return _made(where, kind="point", vertices=v[:2], label=label)


def _scribble(value: Any, where: str, label: Any = 1) -> VisualPrompt:
    items = value if isinstance(value, (list, tuple, np.ndarray)) else None
    if items is None or len(items) < 2:
        raise ValueError(f"{where} must be [[x, y], ...] with at least 2 vertices, got {value!r}")
    v = [_numbers(p, f"{where}[{i}]", "[x, y]", (2,)) for i, p in enumerate(items)]
    return _made(where, kind="scribble", vertices=np.stack(v), label=label)


def prompts_from_arguments(
    points: Sequence[Sequence[float]] | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    scribbles: Sequence[Sequence[Sequence[float]]] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    where: str = "predict",
) -> list[VisualPrompt]:
    """Prompts from user arguments, in the order points, boxes, scribbles, masks.

    Args:
        points: ``[[x, y], ...]`` or ``[[x, y, label], ...]``.
        boxes: ``[[x0, y0, x1, y1], ...]``.
        scribbles: ``[[[x, y], ...], ...]``.
        masks: ``H×W`` arrays (nonzero = inside).
        where: prefix of the error messages (the command or function the user called).
    """
    out = [_point(p, f"{where}: points[{i}]") for i, p in enumerate([] if points is None else points)]
    for i, b in enumerate([] if boxes is None else boxes):
        at = f"{where}: boxes[{i}]"
        out.append(_made(at, kind="box", box=_numbers(b, at, "[x0, y0, x1, y1]", (4,))))
    out += [_scribble(s, f"{where}: scribbles[{i}]") for i, s in enumerate([] if scribbles is None else scribbles)]
    out += [_made(f"{where}: masks[{i}]", kind="mask", mask=m) for i, m in enumerate([] if masks is None else masks)]
    return out


def _mask_from_rle(rle: Any, where: str) -> np.ndarray:
    """``H×W`` bool from a COCO RLE ``{"size": [H, W], "counts": str | list[int]}``."""
    size = rle.get("size") if isinstance(rle, dict) else None
    counts = rle.get("counts") if isinstance(rle, dict) else None
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f"{where}: rle must be {{'size': [H, W], 'counts': ...}} with positive H, W, got {rle!r}")
    if isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts):
        if sum(counts) != size[0] * size[1]:
            raise ValueError(f"{where}: rle counts sum to {sum(counts)}, not H·W = {size[0] * size[1]}")
        rle = coco_mask.frPyObjects({"size": size, "counts": counts}, *size)
    elif not isinstance(counts, str):
        raise ValueError(f"{where}: rle counts must be a COCO string or a list of run lengths, got {type(counts)}")
    return coco_mask.decode(rle).astype(bool)


def prompts_from_json(items: list[dict], where: str) -> list[VisualPrompt]:
    """Prompts from their JSON form (see the module docstring); errors name ``where[i]``."""
    if not isinstance(items, list):
        raise ValueError(f"{where}: visual prompts must be a list of objects, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        kind = item.get("type") if isinstance(item, dict) else None
        if kind not in _JSON_KEYS:
            raise ValueError(f"{at}: needs 'type' one of {', '.join(_JSON_KEYS)}, got {item!r}")
        unknown = sorted(set(item) - {"type", *_JSON_KEYS[kind]})
        if unknown or _JSON_KEYS[kind][0] not in item:
            raise ValueError(f"{at}: a {kind} has keys type, {', '.join(_JSON_KEYS[kind])}; got {sorted(item)}")
        label, value = item.get("label", 1), item[_JSON_KEYS[kind][0]]
        if kind == "point":
            out.append(_made(at, kind="point", vertices=_numbers(value, f"{at}: xy", "[x, y]", (2,)), label=label))
        elif kind == "box":
            out.append(_made(at, kind="box", box=_numbers(value, f"{at}: box", "[x0, y0, x1, y1]", (4,)), label=label))
        elif kind == "scribble":
            out.append(_scribble(value, f"{at}: xy", label))
        else:
            out.append(_made(at, kind="mask", mask=_mask_from_rle(value, at), label=label))
    return out


def prompts_to_json(prompts: Sequence[VisualPrompt]) -> list[dict]:
    """The JSON form of ``prompts`` (masks as compressed COCO RLE); inverse of :func:`prompts_from_json`."""
    out: list[dict] = []
    for p in prompts:
        if p.kind == "point":
            item: dict[str, Any] = {"type": "point", "xy": p.vertices[0].tolist()}
        elif p.kind == "box":
            item = {"type": "box", "box": list(p.box)}
        elif p.kind == "scribble":
            item = {"type": "scribble", "xy": p.vertices.tolist()}
        else:
            rle = coco_mask.encode(np.asfortranarray(p.mask.astype(np.uint8)))
            item = {"type": "mask", "rle": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}}
        out.append({**item, "label": p.label})
    return out


def _slot_vertices(prompt: VisualPrompt, max_vertices: int) -> np.ndarray | None:
    """The vertices a slot stores: a scribble's resampled to ``max_vertices`` when it has more."""
    if prompt.kind == "scribble" and len(prompt.vertices) > max_vertices:
        return resample_stroke(prompt.vertices, max_vertices)
    return prompt.vertices


def prompt_batch(
    samples: Sequence[Sequence[VisualPrompt]],
    image_size: tuple[int, int],
    max_prompts: int | None = None,
    max_vertices: int = 64,
) -> VisualPromptBatch:
    """Pad the prompts of B samples into M slots (slot k = the sample's k-th prompt).

    Args:
        samples: B lists of prompts, in pixels of an ``image_size`` frame.
        image_size: ``(H, W)``; masks must have this shape.
        max_prompts: M (default: the largest count); a sample with more is an error.
        max_vertices: scribbles with more vertices are resampled to this many (:func:`resample_stroke`).

    Returns:
        A :class:`VisualPromptBatch` with P = the most vertices of any slot (>= 1); ``masks``
        ``B×M×H×W`` only when some slot is a mask.
    """
    h, w = (int(s) for s in image_size)
    counts = [len(s) for s in samples]
    m = max(counts, default=0) if max_prompts is None else max_prompts
    for b, n in enumerate(counts):
        if n > m:
            raise ValueError(f"samples[{b}]: has {n} visual prompts, more than max_prompts={m}")
    strokes = [[_slot_vertices(p, max_vertices) for p in sample] for sample in samples]
    p_max = max([1] + [len(v) for sample in strokes for v in sample if v is not None])
    kind, npoints, labels = (torch.zeros(len(samples), m, dtype=torch.int64) for _ in range(3))
    points, boxes = torch.zeros(len(samples), m, p_max, 2), torch.zeros(len(samples), m, 4)
    has_mask = any(p.kind == "mask" for s in samples for p in s)
    masks = torch.zeros(len(samples), m, h, w, dtype=torch.bool) if has_mask else None
    for b, sample in enumerate(samples):
        for k, p in enumerate(sample):
            kind[b, k], labels[b, k], boxes[b, k] = PROMPT_KINDS[p.kind], p.label, torch.tensor(p.bounds)
            if strokes[b][k] is not None:
                npoints[b, k] = len(strokes[b][k])
                points[b, k, : len(strokes[b][k])] = torch.tensor(strokes[b][k], dtype=torch.float32)
            if p.mask is not None:
                if p.mask.shape != (h, w):
                    raise ValueError(f"samples[{b}][{k}]: mask shape {p.mask.shape} differs from image_size {(h, w)}")
                masks[b, k] = torch.from_numpy(p.mask.copy())
    return VisualPromptBatch(kind, points, npoints, boxes, labels, (h, w), masks)


def _mapped(prompt: VisualPrompt, move: Callable[[np.ndarray], np.ndarray]) -> VisualPrompt:
    """``prompt`` with its points mapped by ``move`` (``N×2`` → ``N×2``); box corners re-sorted."""
    if prompt.kind == "box":
        corners = move(np.array(prompt.box).reshape(2, 2))
        return replace(prompt, box=(*corners.min(axis=0), *corners.max(axis=0)))
    return replace(prompt, vertices=move(prompt.vertices))


def _windowed(prompt: VisualPrompt, top: int, left: int, height: int, width: int) -> VisualPrompt | None:
    """``prompt`` seen by one window (see :func:`window_prompts`), or None."""
    offset = np.array([left, top], dtype=np.float64)
    if prompt.kind == "mask":
        crop = np.zeros((height, width), dtype=bool)
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(top + height, prompt.mask.shape[0]), min(left + width, prompt.mask.shape[1])
        if r0 < r1 and c0 < c1:
            crop[r0 - top : r1 - top, c0 - left : c1 - left] = prompt.mask[r0:r1, c0:c1]
        return replace(prompt, mask=crop) if crop.any() else None
    if prompt.kind == "box":
        x0, y0, x1, y1 = (np.array(prompt.box).reshape(2, 2) - offset).clip(0, [width, height]).ravel()
        return replace(prompt, box=(x0, y0, x1, y1)) if x0 < x1 and y0 < y1 else None
    if prompt.kind == "scribble":
        stroke = clip_polyline(prompt.vertices - offset, width, height)
        if stroke is not None and np.ptp(stroke, axis=0).any():
            return replace(prompt, vertices=stroke)
        # A stroke that only touches the window is a point there.
        xy = None if stroke is None else stroke[:1]
    else:
        xy = prompt.vertices - offset
    if xy is None or not (0 <= xy[0, 0] < width and 0 <= xy[0, 1] < height):
        return None
    return VisualPrompt("point", vertices=xy, label=prompt.label)


def window_prompts(prompts: list[VisualPrompt], top: int, left: int, height: int, width: int) -> list[VisualPrompt]:
    """The prompts seen by a tile or crop window, in the window's pixels (order kept).

    Points outside the window are dropped; boxes are clipped to it (dropped without overlap);
    scribbles are clipped exactly (a stroke that leaves and comes back keeps its longest piece,
    so one prompt stays one prompt; one that only touches the window becomes a point); masks are
    cropped (zero outside the image) and dropped when empty.
    """
    kept = (_windowed(p, top, left, height, width) for p in prompts)
    return [p for p in kept if p is not None]


def resize_pad_prompts(prompts: list[VisualPrompt], info: dict[str, Any]) -> list[VisualPrompt]:
    """``prompts`` moved like the image by :func:`rsvlm.data.transforms.resize_pad`, whose ``info``
    (``original_size``, ``resized_size``, ``pad``) is given.

    Coordinates scale by ``w / W0`` and ``h / H0`` (the resize maps pixel edges linearly), then
    shift by the pad's ``(left, top)``. Masks are resized by nearest neighbour exactly as the
    image's mask; one that vanishes keeps the pixel holding its scaled centroid.
    """
    (h0, w0), (h, w) = info["original_size"], info["resized_size"]
    top, left, bottom, right = info["pad"]
    scale, shift = np.array([w / w0, h / h0]), np.array([left, top], dtype=np.float64)
    out = []
    for i, p in enumerate(prompts):
        if p.kind != "mask":
            out.append(_mapped(p, lambda xy: xy * scale + shift))
            continue
        if p.mask.shape != (h0, w0):
            raise ValueError(f"prompts[{i}]: mask shape {p.mask.shape} differs from original_size {(h0, w0)}")
        small = F.interpolate(torch.tensor(p.mask)[None, None].float(), size=(h, w), mode="nearest-exact")
        canvas = np.zeros((top + h + bottom, left + w + right), dtype=bool)
        canvas[top : top + h, left : left + w] = small[0, 0].numpy() > 0.5
        if not canvas.any():
            rows, cols = np.nonzero(p.mask)
            canvas[
                top + min(h - 1, int((rows.mean() + 0.5) * h / h0)),
                left + min(w - 1, int((cols.mean() + 0.5) * w / w0)),
            ] = True
        out.append(replace(p, mask=canvas))
    return out


def dihedral_prompts(prompts: list[VisualPrompt], size: tuple[int, int], rot90: int, flip: int) -> list[VisualPrompt]:
    """``prompts`` moved like an ``size`` = ``(H, W)`` image by :func:`rsvlm.data.transforms.random_dihedral`:
    ``rot90`` quarter turns counter-clockwise (``torch.rot90(dims=(-2, -1))``), then a left-right
    flip when ``flip`` is 1.

    One turn maps ``(x, y)`` → ``(y, W − x)`` and the frame to ``W×H``; a flip maps ``x`` → ``W − x``
    (edge coordinates: pixel centre j + 0.5 goes to W − 1 − j + 0.5, as the image's pixel j).
    """
    if rot90 not in range(4) or flip not in (0, 1):
        raise ValueError(f"rot90, flip: must be 0..3 and 0/1, got {rot90}, {flip}")
    h, w = size

    def move(xy: np.ndarray) -> np.ndarray:
        frame_w, frame_h = w, h
        for _ in range(rot90):
            xy = np.stack([xy[:, 1], frame_w - xy[:, 0]], axis=1)
            frame_w, frame_h = frame_h, frame_w
        return np.stack([frame_w - xy[:, 0], xy[:, 1]], axis=1) if flip else xy

    out = []
    for i, p in enumerate(prompts):
        if p.kind != "mask":
            out.append(_mapped(p, move))
            continue
        if p.mask.shape != (h, w):
            raise ValueError(f"prompts[{i}]: mask shape {p.mask.shape} differs from size {(h, w)}")
        turned = torch.rot90(torch.from_numpy(p.mask.copy()), rot90, dims=(-2, -1))
        out.append(replace(p, mask=(torch.flip(turned, dims=(-1,)) if flip else turned).numpy()))
    return out
