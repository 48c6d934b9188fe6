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

TASKS = ("land-cover category", "free-text question", "referring expression")
#: How a referring expression becomes the instruction (LISA / GeoPixel's wording).
REFERRING_TEMPLATE = "Please segment {expression} in this image."
RGB_NAMES = ("red", "green", "blue")


class AppError(RsvlmError, ValueError):
    """A request the page answers with a one-line message."""


def one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


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


def mark_points(picture: np.ndarray, points: Sequence[Sequence[int]], radius: int = 3) -> np.ndarray:
    """``picture`` with a yellow square of side ``2·radius+1`` at each ``(x, y)`` point."""
    out = picture.copy()
    h, w = out.shape[:2]
    for x, y in points:
        out[max(0, y - radius) : min(h, y + radius + 1), max(0, x - radius) : min(w, x + radius + 1)] = (255, 255, 0)
    return out


def run(
    predictor: Any,
    path: str | None,
    task: str,
    category: str | None,
    question: str | None,
    points: Sequence[Sequence[int]] = (),
    out_dir: str | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, str, list[str]]:
    """Run the model on an uploaded scene.

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
    elif not category:
        raise AppError("choose a land-cover category")
    prompts = {}
    if points and getattr(predictor.model, "prompt_encoder", None) is not None:
        prompts["points"] = [list(p) for p in points]
    try:
        result = predictor.predict(
            path, category=category or None, instruction=instruction, progress=progress, **prompts
        )
        folder = Path(out_dir or tempfile.mkdtemp(prefix="rsvlm-app-"))
        files = result.save(folder, overwrite=True)
        picture = result.show()
    except (RsvlmError, OSError, ValueError) as err:
        raise AppError(one_line(err)) from err
    answer = result.text if len(result.texts) == 1 else "\n".join(f"tile {i}: {t}" for i, t in enumerate(result.texts))
    if points and "points" not in prompts:
        answer += "\n(points ignored: this model takes no visual prompts)"
    return picture, answer, [str(files[k]) for k in ("mask", "overlay", "json")]
