"""What the app does, as plain functions of files and arrays (the page in :mod:`rsvlm.app.ui` calls them).

Every failure a user can cause (an unreadable file, a 1-band image for a 6-band model, a missing
category) becomes :class:`AppError` with the same one-line message the command line prints.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsvlm.contracts import RsvlmError
from rsvlm.io.text import one_line

TASKS = ("land-cover category", "free-text question", "referring expression")
#: How a referring expression becomes the instruction (LISA / GeoPixel's wording).
REFERRING_TEMPLATE = "Please segment {expression} in this image."
RGB_NAMES = ("red", "green", "blue")
#: What a click on the scene adds.
PROMPT_TOOLS = ("point", "box")


class AppError(RsvlmError, ValueError):
    """A request the page answers with a one-line message."""


def scene_bands(path: str, model_bands: Sequence[str]) -> tuple[str, ...] | None:
    """Band names of a scene: its GeoTIFF band descriptions, else the model's when the count
    matches, else red/green/blue for a 3-band picture; None when unknown."""
    from rsvlm.data.raster import open_raster

    with open_raster(path, f"cannot read {path}") as src:
        count, descriptions = src.count, src.descriptions
    if all(descriptions) and len(descriptions) == count:
        return tuple(d.lower() for d in descriptions)
    if count == len(model_bands):
        return tuple(model_bands)
    if count in (3, 4):
        return RGB_NAMES + (("alpha",) if count == 4 else ())
    return None


def preview(path: str | None, model_bands: Sequence[str], composite: str = "auto") -> np.ndarray | None:
    """``H×W×3`` uint8 composite of an uploaded scene (true colour, else false colour, else grey)."""
    from rsvlm.data.raster import read_raster
    from rsvlm.io.pictures import composite_or_stretch

    if not path:
        return None
    try:
        raster = read_raster(path)
        data = np.where(raster.valid[None], raster.data, np.nan)
        return composite_or_stretch(data, scene_bands(path, model_bands), composite)
    except (RsvlmError, OSError, ValueError) as err:
        raise AppError(one_line(err)) from err


def click_to_pixel(x: int, y: int) -> list[float]:
    """A click on picture pixel ``(x, y)`` (column, row) → its centre in continuous pixels."""
    return [x + 0.5, y + 0.5]


def add_click(
    mode: str, x: int, y: int, points: list, boxes: list, corner: list | None
) -> tuple[list, list, list | None]:
    """One click of the prompt tool: ``mode`` "point" adds a point; "box" takes two clicks, the
    first corner and the opposite one. Returns the new ``(points, boxes, pending corner)``."""
    if mode not in PROMPT_TOOLS:
        raise AppError(f"unknown prompt tool {mode!r}; choose one of {', '.join(PROMPT_TOOLS)}")
    if mode == "point":
        return [*points, click_to_pixel(x, y)], boxes, None
    if corner is None:
        return points, boxes, [x, y]
    (x0, x1), (y0, y1) = sorted((corner[0], x)), sorted((corner[1], y))
    return points, [*boxes, [float(x0), float(y0), float(x1 + 1), float(y1 + 1)]], None


def add_drag(value: str, points: list, boxes: list) -> tuple[list, list]:
    """A box dragged on the scene, ``"x0,y0,x1,y1"`` in picture pixels (any two opposite corners),
    added to ``boxes`` (edges: the box covers both end pixels). Returns ``(points, boxes)``."""
    try:
        x0, y0, x1, y1 = (int(float(v)) for v in value.split(","))
    except ValueError:
        raise AppError(f"a dragged box is 'x0,y0,x1,y1', got {value!r}") from None
    (left, right), (top, bottom) = sorted((x0, x1)), sorted((y0, y1))
    return points, [*boxes, [float(left), float(top), float(right + 1), float(bottom + 1)]]


def painted_mask(editor_value: dict | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The pixels painted in the free-form editor (``H×W`` bool at the scene's size), or None."""
    layers = (editor_value or {}).get("layers") or []
    painted = [np.asarray(layer)[..., 3] > 0 for layer in layers if np.asarray(layer).ndim == 3]
    if not painted or not any(p.any() for p in painted):
        return None
    mask = np.any(painted, axis=0)
    if mask.shape != tuple(shape):
        raise AppError(f"the painted layer is {mask.shape[1]}×{mask.shape[0]} but the scene is {shape[1]}×{shape[0]}")
    return mask


def mark_prompts(picture: np.ndarray, points: Sequence, boxes: Sequence, corner: Sequence | None = None) -> np.ndarray:
    """``picture`` with the prompts drawn on it as the model will see them (and a pending box corner)."""
    from rsvlm.data.visual_prompts import prompt_batch, prompts_from_arguments
    from rsvlm.prompts.geometry import overlay

    extra = [click_to_pixel(*corner)] if corner is not None else []
    prompts = prompts_from_arguments(points=[*points, *extra] or None, boxes=list(boxes) or None, where="app")
    if not prompts:
        return picture
    return overlay(picture, prompt_batch([prompts], image_size=picture.shape[:2]))


def run(
    predictor: Any,
    path: str | None,
    task: str,
    category: str | None,
    question: str | None,
    points: Sequence[Sequence[float]] = (),
    out_dir: str | None = None,
    progress: bool = False,
    boxes: Sequence[Sequence[float]] = (),
    painted: np.ndarray | None = None,
) -> tuple[np.ndarray, str, list[str]]:
    """Run the model on an uploaded scene, with the clicked points and boxes (continuous pixels)
    and the painted free-form region (``H×W`` bool) as visual prompts.

    Returns:
        ``(overlay H×W×3 uint8, answer text, [mask GeoTIFF, overlay PNG, answer JSON])``, the
        files written into ``out_dir`` (a new temporary folder by default).
    """
    if not path:
        raise AppError("upload a scene first (GeoTIFF of the model's bands, PNG or JPEG)")
    if task not in TASKS:
        raise AppError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    instruction = None
    if task in TASKS[1:]:
        if not (question or "").strip():
            raise AppError(f"type {'a question' if task == TASKS[1] else 'an expression'} for the {task} task")
        text = question.strip()
        instruction = text if task == TASKS[1] else REFERRING_TEMPLATE.format(expression=text.rstrip("."))
    elif getattr(predictor, "whole_image", False):
        raise AppError("this model answers questions: choose the free-text question or referring expression task")
    elif not category:
        raise AppError("choose a land-cover category")
    if getattr(predictor, "whole_image", False):  # what the question asks about, for MagCrop's routing
        given_granularity = {"granularity": "pixel" if task == TASKS[2] else "region"}
    else:
        given_granularity = {}
    given = {"points": [list(p) for p in points], "boxes": [list(b) for b in boxes], "mask": painted}
    given = {k: v for k, v in given.items() if v is not None and len(v)}
    prompts = given if predictor.takes_visual_prompts else {}
    try:
        result = predictor.predict(
            path, category=category or None, instruction=instruction, progress=progress, **prompts, **given_granularity
        )
        folder = Path(out_dir or tempfile.mkdtemp(prefix="rsvlm-app-"))
        files = result.save(folder, overwrite=True)
        picture = result.show()
    except (RsvlmError, OSError, ValueError) as err:
        raise AppError(one_line(err)) from err
    answer = result.text if len(result.texts) == 1 else "\n".join(f"tile {i}: {t}" for i, t in enumerate(result.texts))
    if given and not prompts:
        answer += f"\n({', '.join(given)} ignored: this model takes no visual prompts)"
    return picture, answer, [str(files[k]) for k in ("mask", "overlay", "json")]
