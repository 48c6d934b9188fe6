"""Target masks of an instruction record: their three JSON forms, checks, decoding and encoding.

A record's ``masks`` list holds one object per target, in the order of the ``[SEG]`` tokens of
the answer (GeoMag §3.5), in pixels of the record's first image::

    {"path": "masks/00012.tif", "threshold": 50}   # a raster file: foreground = band 1 > threshold (default 0)
    {"rle": {"size": [H, W], "counts": "..."}}      # COCO RLE, compressed string or run lengths (pycocotools)
    {"polygons": [[x0, y0, x1, y1, ...], ...]}      # COCO polygons (each closed implicitly), their union

Paths are absolute in memory; the JSON-lines file stores them relative to its folder when they
lie under it (:mod:`rsvlm.data.multitask.jsonl`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from rsvlm.data.raster import read_window

MASK_FORMS = ("path", "rle", "polygons")
_OPTIONAL = {"path": {"threshold"}, "rle": set(), "polygons": set()}


def mask_form(mask: Any, where: str) -> str:
    """Which of :data:`MASK_FORMS` ``mask`` is; a ValueError naming ``where`` when it is none or several."""
    if not isinstance(mask, Mapping):
        raise ValueError(f"{where}: a mask is an object with one of 'path', 'rle', 'polygons', got {mask!r}")
    forms = [f for f in MASK_FORMS if f in mask]
    if len(forms) != 1:
        raise ValueError(f"{where}: a mask has exactly one of 'path', 'rle', 'polygons', got keys {sorted(mask)}")
    extra = sorted(set(mask) - {forms[0], *_OPTIONAL[forms[0]]})
    if extra:
        raise ValueError(f"{where}: unknown key(s) {', '.join(extra)} for a {forms[0]} mask")
    return forms[0]


def _check_rle(rle: Any, where: str, size: Sequence[int] | None) -> None:
    shape = rle.get("size") if isinstance(rle, Mapping) else None
    counts = rle.get("counts") if isinstance(rle, Mapping) else None
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ValueError(f"{where}: rle must be {{'size': [H, W], 'counts': ...}} with positive H, W, got {rle!r}")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != shape[0] * shape[1]:
            raise ValueError(f"{where}: rle run lengths must be non-negative integers summing to H·W")
    elif not isinstance(counts, str):
        raise ValueError(f"{where}: rle counts must be a COCO string or a list of run lengths")
    if size is not None and list(shape) != list(size):
        raise ValueError(f"{where}: rle size {shape} differs from the image size {list(size)} (H, W)")


def _check_polygons(polygons: Any, where: str, size: Sequence[int] | None) -> None:
    if not isinstance(polygons, list) or not polygons:
        raise ValueError(f"{where}: polygons must be a non-empty list of [x0, y0, x1, y1, ...]")
    for i, poly in enumerate(polygons):
        ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
        if not ok or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly):
            raise ValueError(f"{where}: polygons[{i}] must be >= 3 finite (x, y) pairs, got {poly!r}")
        if size is not None:
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < 0 or min(ys) < 0 or max(xs) > size[1] or max(ys) > size[0]:
                raise ValueError(f"{where}: polygons[{i}] leaves the {size[0]}×{size[1]} image")


def check_mask(mask: Any, where: str, size: Sequence[int] | None = None, check_files: bool = True) -> str:
    """Check one mask object (form, keys, RLE size = image size, polygons inside, file present).

    Args:
        mask: the JSON object.
        where: prefix of the error message (file, line, record and field).
        size: ``(H, W)`` of the record's image, or None to skip the geometry checks.
        check_files: check that a ``path`` mask exists.

    Returns:
        Its form (one of :data:`MASK_FORMS`).

    Raises:
        ValueError: a one-line message starting with ``where``.
    """
    form = mask_form(mask, where)
    if form == "rle":
        _check_rle(mask["rle"], where, size)
    elif form == "polygons":
        _check_polygons(mask["polygons"], where, size)
    else:
        path, threshold = mask["path"], mask.get("threshold", 0)
        if not isinstance(path, str) or not path:
            raise ValueError(f"{where}: path must be a non-empty string, got {path!r}")
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            raise ValueError(f"{where}: threshold must be a number, got {threshold!r}")
        if check_files and not os.path.exists(path):
            raise ValueError(f"{where}: mask file not found: {path}")
    return form


def decode_mask(mask: Mapping[str, Any], size: Sequence[int] | None = None, where: str = "mask") -> np.ndarray:
    """``H×W`` bool of one mask object.

    Args:
        mask: a mask in one of the three forms.
        size: ``(H, W)``: needed by ``polygons``; checked against ``rle`` and ``path`` masks.
        where: prefix of error messages.
    """
    form = check_mask(mask, where, size if mask_form(mask, where) != "path" else None)
    if form == "polygons":
        if size is None:
            raise ValueError(f"{where}: decoding polygons needs the image size")
        h, w = int(size[0]), int(size[1])
        rles = coco_mask.frPyObjects([[float(v) for v in p] for p in mask["polygons"]], h, w)
        return coco_mask.decode(coco_mask.merge(rles)).astype(bool)
    if form == "rle":
        rle = mask["rle"]
        if isinstance(rle["counts"], list):
            rle = coco_mask.frPyObjects({"size": rle["size"], "counts": rle["counts"]}, *rle["size"])
        return coco_mask.decode(rle).astype(bool)
    data = read_window(mask["path"])[0]
    out = data[0] > float(mask.get("threshold", 0))
    if size is not None and list(out.shape) != [int(s) for s in size]:
        raise ValueError(f"{where}: mask file {mask['path']} is {out.shape[0]}×{out.shape[1]}, the image {list(size)}")
    return out


def rle_of(array: np.ndarray) -> dict[str, Any]:
    """The compressed COCO RLE JSON object ``{"size": [H, W], "counts": str}`` of an ``H×W`` mask."""
    rle = coco_mask.encode(np.asfortranarray(np.asarray(array) != 0, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_segmentation_rle(segmentation: Any, height: int, width: int, where: str) -> dict[str, Any]:
    """One compressed RLE for a COCO ``segmentation`` (the union of its parts).

    Accepts the forms COCO and the refer API meet: a list of polygons, one RLE object
    (compressed or run lengths) or a list of RLE objects.
    """
    if isinstance(segmentation, Mapping):
        parts: list[Any] = [segmentation]
    elif isinstance(segmentation, list) and segmentation:
        parts = segmentation
    else:
        raise ValueError(f"{where}: segmentation must be polygons or RLE, got {segmentation!r}")
    if all(isinstance(p, list) for p in parts):
        _check_polygons(parts, where, None)
        rles = coco_mask.frPyObjects([[float(v) for v in p] for p in parts], height, width)
    elif all(isinstance(p, Mapping) for p in parts):
        rles = []
        for p in parts:
            _check_rle(p, where, (height, width))
            counts = p["counts"]
            # Run lengths must be compressed before merge(); a string is already compressed.
            rles.append(
                coco_mask.frPyObjects(dict(p), height, width)
                if isinstance(counts, list)
                else {"size": list(p["size"]), "counts": counts.encode("ascii")}
            )
    else:
        raise ValueError(f"{where}: segmentation mixes polygons and RLE objects")
    merged = coco_mask.merge(rles)
    return {"size": [int(s) for s in merged["size"]], "counts": merged["counts"].decode("ascii")}
