"""What one tile of a prediction turns into on the image: the answer's boxes in the image's pixels
(:func:`tile_groundings`; or, for an answer that segments what it names, the mask's box:
:func:`segmented_groundings`), the boxes GeoJSON beside the answer JSON (:func:`boxes_path`,
:func:`save_boxes`), and a whole-image model's square output mapped back to the image
(:func:`whole_image_tile`). One owner for the helpers :class:`rsvlm.inference.prediction.Prediction`,
:class:`rsvlm.inference.writer.PredictionWriter` and :mod:`rsvlm.inference.whole_image` share, so
that none of the three imports another at module level for them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rsvlm.data.coords import Grounding
from rsvlm.data.raster import read_header


def tile_groundings(meta: Mapping[str, Any], size: Sequence[int], text: str | None) -> list[Grounding]:
    """The boxes and points one tile's answer writes, in the image's pixels.

    The answer's coordinates are normalised on the square the model saw (:mod:`rsvlm.data.coords`).
    A tile meta with the resize info (``square``: a whole-image model's tile, see
    :func:`whole_image_tile`; or no ``window`` but ``original_size``,
    ``resized_size`` and ``pad``: a whole image resized to the model input) is read on that square
    of side S and mapped back
    through its padding and resize (:func:`rsvlm.data.multitask.geometry.unmove_boxes`, centred or
    bottom/right as the image was padded); a tiled scene's tile (``window``: row, col, ...) is read on
    its ``size`` and shifted by the window's offset.

    Args:
        meta: the tile's meta, as :meth:`rsvlm.inference.writer.PredictionWriter.add` receives it
            after :func:`whole_image_tile`.
        size: ``(T, T)``: the tile's logits shape (used for ``window`` tiles).
        text: the tile's answer (None: nothing).
    """
    import torch

    from rsvlm.data.coords import parse_grounding
    from rsvlm.data.multitask.geometry import square_side, unmove_boxes

    if not text:
        return []
    info = meta.get("square", meta if "window" not in meta else None)
    if info is not None:
        side = square_side(info)
        found = parse_grounding(text, (side, side))

        def move(values: list[list[float]]) -> list[list[float]]:
            return unmove_boxes(torch.tensor(values, dtype=torch.float64), info).tolist() if values else []

    else:
        row, col = meta["window"][:2]
        found = parse_grounding(text, (int(size[0]), int(size[1])))

        def move(values: list[list[float]]) -> list[list[float]]:
            return [[v + (col if i % 2 == 0 else row) for i, v in enumerate(xy)] for xy in values]

    for g in found:
        g.boxes, g.points = move(g.boxes), move(g.points)
    return found


def segmented_groundings(text: str | None, logits: Any, offset: Sequence[int] = (0, 0)) -> list[Grounding]:
    """The box of an answer that segments what it names without writing coordinates
    (``<p>ship</p> [SEG]``, a demo trained with ``grounding_answer: mask``): one
    :class:`~rsvlm.data.coords.Grounding` with the phrase and the box of the mask's largest 8-connected
    region (``logits`` ``h×w`` > 0, :func:`rsvlm.training.metrics.grounding.mask_boxes`, as the grounding
    metric reads it), shifted by the tile's ``offset`` (row, col); empty when the answer writes
    coordinates, has no ``[SEG]`` or the mask is empty."""
    import re

    from rsvlm.data.coords import parse_grounding
    from rsvlm.data.multitask.validate import SEG_TOKEN
    from rsvlm.training.metrics.grounding import mask_boxes

    if not text or SEG_TOKEN not in text or parse_grounding(text, (1, 1)):
        return []
    box = mask_boxes(torch.as_tensor(logits, dtype=torch.float32)[None, None])[0]
    if not box.any():
        return []
    row, col = (float(v) for v in offset[:2])
    phrase = re.search(rf"<p>(.*?)</p>\s*{re.escape(SEG_TOKEN)}", text, re.DOTALL)
    moved = (box + torch.tensor([col, row, col, row], dtype=box.dtype)).tolist()
    return [Grounding(phrase.group(1).strip() if phrase else None, boxes=[moved])]


def answer_groundings(
    meta: Mapping[str, Any], size: Sequence[int], text: str | None, tile_logits: Any, offset: Sequence[int]
) -> list[Grounding]:
    """The boxes of one tile's answer in the image's pixels: those it writes (:func:`tile_groundings`,
    ``size`` the model's logits shape), else its mask's (:func:`segmented_groundings`, ``tile_logits``
    ``h×w`` on the image at ``offset`` (row, col)). One rule for :attr:`Prediction.boxes` and the writer."""
    return tile_groundings(meta, size, text) or segmented_groundings(text, tile_logits, offset)


def boxes_path(json_path: str | os.PathLike) -> Path:
    """``<stem>.boxes.geojson`` of the answer JSON ``<stem>.json`` (:func:`rsvlm.inference.writer.output_paths`)."""
    return Path(json_path).with_suffix(".boxes.geojson")


def save_boxes(
    json_path: str | os.PathLike, groundings: Sequence[Grounding], crs: Any, transform: Any, overwrite: bool
) -> Path | None:
    """Write the boxes and points of ``groundings`` (image pixels) as ``<stem>.boxes.geojson`` beside
    the answer JSON: a FeatureCollection in ``crs`` through ``transform``, pixel coordinates without a
    CRS when ``transform`` is None (:func:`rsvlm.io.geojson.write_groundings`). One path for
    :meth:`Prediction.save` and :class:`rsvlm.inference.writer.PredictionWriter`.

    Returns:
        the path written, or None (nothing written) when there are no boxes or points.
    """
    from rsvlm.io.geojson import write_groundings

    found = [g for g in groundings if g.boxes or g.points]
    if not found:
        return None
    return write_groundings(boxes_path(json_path), found, crs if transform is not None else None, transform, overwrite)


def whole_image_tile(
    meta: Mapping[str, Any], logits: torch.Tensor, valid: torch.Tensor, text: str | None
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, str | None]:
    """One whole-image sample's prediction on the model's square → the image's one tile, as
    :meth:`rsvlm.inference.writer.PredictionWriter.add` and :class:`Prediction` hold it.

    Args:
        meta: the sample's meta (:class:`rsvlm.data.multitask.predict.WholeImagePredictDataset`):
            ``image`` (path), ``resize`` (the resize info), ``bands``, ``instruction``, ``granularity``.
        logits: ``S×S`` mask logits on the square (any device).
        valid: ``S×S`` bool validity on the square.
        text: the generated answer.

    Returns:
        ``(tile meta, logits H×W float32 CPU, valid H×W bool CPU, text)``: the padding cut off and
        the resize undone; the tile meta is one window ``[0, 0, H, W]`` of the image with its CRS and
        transform (read from the file), ``bands``, ``category`` None, ``instruction``, ``granularity``
        and ``square``: the resize info, by which :attr:`rsvlm.inference.prediction.Prediction.boxes`
        maps the boxes the answer writes on the square back to the image
        (:func:`rsvlm.data.multitask.geometry.unmove_boxes`).
    """
    info = meta["resize"]
    square = to_original(logits.float().cpu(), info)
    inside = to_original(valid.float().cpu(), info) > 0.5
    header = read_header(meta["image"])
    height, width = square.shape
    tile = {
        "image": meta["image"],
        "window": [0, 0, height, width],
        "scene_size": [height, width],
        "tile_index": 0,
        "num_tiles": 1,
        "crs": header.crs,
        "transform": header.transform,
        "bands": list(meta["bands"]),
        "category": None,
        "instruction": meta["instruction"],
        "granularity": meta["granularity"],
        "square": dict(info),
    }
    return tile, square, inside, text


def to_original(square: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """``S×S`` on the model's square → ``H×W`` of the image: the padding cut off, the resize undone."""
    top, left = int(info["pad"][0]), int(info["pad"][1])
    h, w = (int(x) for x in info["resized_size"])
    crop = square[top : top + h, left : left + w].float()[None, None]
    height, width = (int(x) for x in info["original_size"])
    return F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
