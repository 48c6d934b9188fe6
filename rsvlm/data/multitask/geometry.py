"""An instruction sample on the model's square: resize (aspect kept) and pad, bottom/right or centred.

:func:`resize_pad_square` is :func:`rsvlm.data.transforms.resize_pad` (longer side → ``S``; image
bilinear, antialiased when shrinking; masks and validity nearest) followed, for ``pad="center"``,
by moving the resized content to the middle of the canvas: offsets ``top = (S − h) // 2`` and
``left = (S − w) // 2`` (LLaVA's ``expand2square`` and the MMRS-1M README also floor the half).
The pad is 0 in the image (the mean after normalisation, black on raw pixels), 0 in the masks and
invalid in ``valid``. ``bottom_right`` is the SPEX recipes' placement, ``center`` EarthGPT-X's and
LLaVA's (``earthgpt-x.md`` §4.1).

:func:`move_boxes` maps pixel boxes as :func:`rsvlm.data.visual_prompts.resize_pad_prompts` maps
prompts: ``x' = x·w/W + left``, ``y' = y·h/H + top`` (the resize maps pixel edges linearly);
:func:`unmove_boxes` is its inverse, ``x = (x' − left)·W/w``, ``y = (y' − top)·H/h``: what a box the
model writes on its square (``<p>phrase</p>[…]`` normalised on it, :mod:`rsvlm.data.coords`) is on the
image (:attr:`rsvlm.inference.prediction.Prediction.boxes`).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from rsvlm.data.transforms import resize_pad

PadMode = Literal["center", "bottom_right"]
PAD_MODES: tuple[str, ...] = get_args(PadMode)


def check_pad(pad: str, where: str = "pad") -> str:
    """``pad`` if it is one of :data:`PAD_MODES`, else a ValueError naming ``where``."""
    if pad not in PAD_MODES:
        raise ValueError(f"{where}: must be one of {', '.join(PAD_MODES)}, got {pad!r}")
    return pad


def resize_pad_square(
    image: Tensor, masks: Tensor | None, valid: Tensor, size: int, pad: PadMode = "center"
) -> tuple[Tensor, Tensor | None, Tensor, dict[str, Any]]:
    """Resize so the longer side is ``size``, then pad to a square (see the module docstring).

    Args:
        image: ``C×H×W`` float (normalised or raw).
        masks: ``T×H×W`` float in {0, 1}, or None.
        valid: ``1×H×W`` bool.
        size: output side S.
        pad: ``center`` or ``bottom_right``.

    Returns:
        ``(image C×S×S, masks T×S×S | None, valid 1×S×S, info)``; ``info`` as
        :func:`~rsvlm.data.transforms.resize_pad`'s (``original_size``, ``resized_size``, ``scale``)
        with ``pad`` = (top, left, bottom, right) of this placement.
    """
    check_pad(pad)
    image, masks, valid, info = resize_pad(image, masks, valid, size)
    if pad == "bottom_right":
        return image, masks, valid, info
    h, w = info["resized_size"]
    top, left = (size - h) // 2, (size - w) // 2
    spec = (left, size - w - left, top, size - h - top)  # F.pad order: left, right, top, bottom

    def moved(x: Tensor, value: float | bool) -> Tensor:
        return F.pad(x[..., :h, :w], spec, value=value)

    image, valid = moved(image, 0.0), moved(valid, False)
    masks = None if masks is None else moved(masks, 0.0)
    return image, masks, valid, {**info, "pad": [top, left, size - h - top, size - w - left]}


def move_boxes(boxes: Tensor, info: dict[str, Any]) -> Tensor:
    """``N×4`` pixel boxes ``(x0, y0, x1, y1)`` of the original image → the same boxes on the square.

    Args:
        boxes: ``N×4`` float (returned in its dtype).
        info: the ``info`` of :func:`resize_pad_square`.
    """
    (h0, w0), (h, w) = info["original_size"], info["resized_size"]
    top, left = info["pad"][0], info["pad"][1]
    scale = torch.tensor([w / w0, h / h0, w / w0, h / h0], dtype=torch.float64)
    shift = torch.tensor([left, top, left, top], dtype=torch.float64)
    # float64 as resize_pad_prompts computes, so a box and its visual prompt agree to the last bit.
    return (boxes.double() * scale + shift).to(boxes.dtype)


def square_side(info: dict[str, Any]) -> int:
    """Side S of the square that ``info`` (of :func:`resize_pad_square` or
    :func:`~rsvlm.data.transforms.resize_pad`) describes: the resized height plus its top and bottom pad."""
    return int(info["resized_size"][0]) + int(info["pad"][0]) + int(info["pad"][2])


def unmove_boxes(coords: Tensor, info: dict[str, Any]) -> Tensor:
    """Pixel coordinates on the square → the same on the original image (the inverse of :func:`move_boxes`).

    Args:
        coords: ``N×2k`` float, ``k`` interleaved ``(x, y)`` pairs per row (boxes ``N×4``, points ``N×2``),
            in pixels of the square (returned in its dtype).
        info: the ``info`` of :func:`resize_pad_square` (any placement) or
            :func:`~rsvlm.data.transforms.resize_pad` (bottom/right).
    """
    (h0, w0), (h, w) = info["original_size"], info["resized_size"]
    top, left = info["pad"][0], info["pad"][1]
    pairs = coords.shape[-1] // 2
    scale = torch.tensor([w0 / w, h0 / h] * pairs, dtype=torch.float64)
    shift = torch.tensor([left, top] * pairs, dtype=torch.float64)
    return ((coords.double() - shift) * scale).to(coords.dtype)
