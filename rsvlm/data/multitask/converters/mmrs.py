"""MMRS-1M (EarthGPT's instruction data) → instruction records, one task file at a time.

Official form (wivizhang/EarthGPT README, "Datasets Usage guidelines"): each task ships an image
folder and one JSON file. Assumed here, as LLaVA's data format that EarthGPT's README implies
and the EarthGPT-X spec §4.2 restates (not confirmed from the data itself): the JSON file is a
list of ``{"id"?, "image": str | [str, ...], "conversations": [{"from": "human"|"gpt", "value":
str}, ...]}``, image paths relative to the task's image folder; ``user``/``assistant`` roles are
read as human/gpt. A first human turn without ``<image>`` gets ``<image>\\n`` in front.

Coordinates in the text are ``<p>phrase</p>[sx0,sy0,sx1,sy1;…]``, normalised after **centre**
padding with integer offsets (README)::

    pad_x0 = int((H - W) / 2) if H > W else 0;  pad_y0 = int((W - H) / 2) if W >= H else 0
    s = (x + pad) / max(H, W)      →      x = s · max(H, W) − pad

The text is kept as written (``coord_convention: center``); its boxes are read back to pixels
with :func:`rsvlm.data.coords.parse_grounding` (which centres with the exact half, (S − W)/2)
plus the README's integer rounding of the offset, so a box is exact in pixels even when
``|H − W|`` is odd (where the text, read with the exact half, is 0.5 px off). ``boxes`` and
``labels`` (the phrase before each bracket, ``""`` when none) follow the order of the brackets
in the conversation, human and gpt turns alike; points go to ``meta["points"]``. Coordinates
that leave the image by more than the 3-decimal rounding (0.0005·S + 0.5 px) are an error;
within it they are clipped.

Scene-level tasks (classification, captioning, VQA) carry no coordinates and are not parsed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rsvlm.data.coords import pad_offset, parse_grounding
from rsvlm.data.multitask.converters.common import ConverterError, image_size, require_file
from rsvlm.data.multitask.records import (
    DEFAULT_GRANULARITY,
    ROLE_ALIASES,
    TASKS,
    InstructRecord,
    Turn,
)
from rsvlm.data.multitask.validate import IMAGE_TOKEN, check_record

_SCENE_TASKS = ("scene_classification", "captioning", "vqa")


def mmrs_pad(size: tuple[int, int]) -> tuple[int, int]:
    """``(pad_x0, pad_y0)`` of the MMRS-1M README for an ``(H, W)`` image (integer, centre)."""
    height, width = size
    if height > width:
        return int((height - width) / 2), 0
    return 0, int((width - height) / 2)


def pixel_groundings(text: str, size: tuple[int, int], where: str) -> tuple[list[list[float]], list[str], list]:
    """Boxes (pixels), their phrases and points (pixels) of every bracket in ``text``.

    Raises:
        ConverterError: a coordinate outside the image by more than the rounding tolerance.
    """
    exact = pad_offset(size, "center")
    shift = [e - r for e, r in zip(exact, mmrs_pad(size))]  # README rounds the offset down; parse does not
    height, width = size
    tolerance = 0.0005 * max(size) + 0.5
    boxes, labels, points = [], [], []
    for found in parse_grounding(text, size, pad="center"):
        for group, out in ((found.boxes, boxes), (found.points, points)):
            for values in group:
                moved = [v + shift[i % 2] for i, v in enumerate(values)]
                limits = [width if i % 2 == 0 else height for i in range(len(moved))]
                if any(v < -tolerance or v > lim + tolerance for v, lim in zip(moved, limits)):
                    raise ConverterError(f"{where}: coordinates {values} (pixels) leave the {height}×{width} image")
                out.append([min(max(v, 0.0), float(lim)) for v, lim in zip(moved, limits)])
                if out is boxes:
                    labels.append(found.phrase or "")
    return boxes, labels, points


def _conversation(item: Mapping[str, Any], images: int, where: str) -> list[Turn]:
    turns = item.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ConverterError(f"{where}: field 'conversations' missing or empty")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise ConverterError(f"{where}: field 'conversations[{i}]': expected {{'from': ..., 'value': str}}")
        out.append(Turn(ROLE_ALIASES.get(turn["from"], turn["from"]), turn["value"]))
    if images and out[0].role == "human" and IMAGE_TOKEN not in "".join(t.text for t in out):
        out[0] = Turn("human", IMAGE_TOKEN * images + "\n" + out[0].text)
    return out


def convert_mmrs(
    json_path: str | os.PathLike,
    task: str,
    image_root: str | os.PathLike | None = None,
    source: str | None = None,
    split: str = "train",
    modality: str = "optical",
    granularity: str | None = None,
    check_files: bool = True,
) -> list[InstructRecord]:
    """Instruction records of one MMRS-1M task file.

    Args:
        json_path: the task's JSON list.
        task: the task of every item (:data:`rsvlm.data.multitask.records.TASKS`): MMRS-1M is one file per task.
        image_root: folder the ``image`` paths are relative to (default: the JSON's folder).
        source: the records' ``source`` (default ``mmrs1m-<json stem>``).
        split: the records' split.
        modality: ``optical``, ``sar`` or ``infrared`` (MMRS-1M mixes sensors across files).
        granularity: default: the task's (:data:`~rsvlm.data.multitask.records.DEFAULT_GRANULARITY`).
        check_files: check that the images exist (their headers are read for the size anyway).

    Raises:
        ConverterError: not a JSON list, an item without image or conversations, or coordinates off the image.
    """
    if task not in TASKS:
        raise ValueError(f"task: unknown task {task!r}; known: {', '.join(TASKS)}")
    path = Path(json_path)
    require_file(path, "MMRS-1M JSON file")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConverterError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(items, list):
        raise ConverterError(f"{path}: expected a JSON list of samples, got {type(items).__name__}")
    folder = Path(image_root) if image_root is not None else path.parent
    name = source or f"mmrs1m-{path.stem}"
    records = []
    for n, item in enumerate(items):
        where = f"{path}: item {n}"
        if not isinstance(item, Mapping):
            raise ConverterError(f"{where}: expected an object, got {type(item).__name__}")
        image = item.get("image")
        images = [image] if isinstance(image, str) else image
        if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
            raise ConverterError(f"{where}: field 'image' must be a path or a list of paths, got {image!r}")
        paths = [str(folder / p) for p in images]
        size = image_size(paths[0], f"{where}: field 'image'")
        turns = _conversation(item, len(paths), where)
        boxes: list[list[float]] = []
        labels: list[str] = []
        points: list[list[float]] = []
        if task not in _SCENE_TASKS:
            for i, turn in enumerate(turns):
                b, lab, p = pixel_groundings(turn.text, size, f"{where}: field 'conversations[{i}]'")
                boxes, labels, points = boxes + b, labels + lab, points + p
        record = InstructRecord(
            id=f"{name}_{item.get('id', n)}",
            images=paths,
            task=task,
            granularity=granularity or DEFAULT_GRANULARITY[task],
            conversations=turns,
            source=name,
            split=split,
            modality=modality,
            size=list(size),
            boxes=boxes,
            labels=labels,
            coord_convention="center",
            meta={"item": n, **({"points": points} if points else {})},
        )
        check_record(record, where, check_files)
        records.append(record)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        repeated = next(i for i in ids if ids.count(i) > 1)
        raise ConverterError(f"{path}: field 'id': {repeated!r} repeated")
    return records
