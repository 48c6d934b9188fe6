"""GeoPixelD (GeoPixel, Shabbir et al. 2025) → grounded-conversation-generation (GCG) records.

Official layout (mbzuai-oryx/GeoPixel ``docs/dataset.md``: annotations from the Hugging Face dataset
``MBZUAI/GeoPixelD``, images the iSAID / DOTA-v1.0 scenes cut into 800×800 patches)::

    GeoPixelD/
    ├── train/<patch>.json  <patch>.png
    ├── test/<patch>.json   <patch>.png
    └── GeoPixelD.json                  # LLaVA-style training list (optional here)

A patch's JSON (the repo's sample ``data/GeoPixelD/train/P0224_0_800_0_800.json``)::

    {"id": 0, "img": "data/GeoPixelD/train/P0224_0_800_0_800.png",
     "gcg_description": "... The <p> tennis court-1 </p> [SEG] at right is ... <p> tennis court-2 </p> [SEG] , ...",
     "polygons": [[[[x, y], [x, y], ...], ...], ...]}    # one entry per [SEG], in order; each a list of polygons

GeoPixel's loader (``data_mix.py``) also takes ``"segmentation": [COCO RLE, ...]`` (one per
``[SEG]``) instead of ``polygons``; both are read. ``GeoPixelD.json`` is a list of
``{"id", "conversations": [{"from": "human"}, {"from": "bot", "value": <description>}], "image",
"polygons": <patch JSON path>}`` whose paths are relative to the GeoPixel repository
(``data/GeoPixelD/train/…``): only the split folder and file name are kept and looked up under
``root``.

One record per patch (folder mode) or per list entry (``conversations=`` given), task ``gcg``:

* the answer is the description as written (GeoPixel's ``<p> phrase </p> [SEG]``, spaces kept);
* the question is GeoPixel's own (the one of ``GeoPixelD.json``, :data:`GCG_QUESTION`) in folder
  mode, the list's human turn otherwise (``<image>\\n`` put in front when missing);
* ``labels`` are the phrases, ``masks`` one per ``[SEG]`` in text order, each the union of its
  polygons rasterised as GeoPixel does (``cv2.fillPoly`` of the points cast to int32, boundary
  pixels included) and stored as compressed COCO RLE.

A description whose ``[SEG]`` count differs from its phrases or from its masks is an error naming
the file and field (GeoPixel's loader asserts the same).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rsvlm.data.multitask.converters.common import ConverterError, image_size, require_file
from rsvlm.data.multitask.masks import coco_segmentation_rle, rle_of
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, ROLE_ALIASES, InstructRecord, Turn
from rsvlm.data.multitask.templates import IMAGE_PREFIX
from rsvlm.data.multitask.validate import IMAGE_TOKEN, SEG_TOKEN, check_record

SOURCE = "geopixeld"
GCG_QUESTION = (
    "Could you perform an in-depth analysis of this photo, including interleaved segmentation masks to map each "
    "part of your answer to specific image object?"
)
_PHRASE = re.compile(r"<p>\s*(.*?)\s*</p>\s*\[SEG\]", re.DOTALL)
_ROLES = {**ROLE_ALIASES, "bot": "gpt"}


def read_json(path: Path, what: str) -> Any:
    """A JSON file's value (errors name the file)."""
    require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConverterError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def fill_polygons(polygons: Any, size: tuple[int, int], where: str) -> np.ndarray:
    """``H×W`` bool: the union of ``polygons`` (lists of ``[x, y]``) filled as GeoPixel's loader does."""
    if not isinstance(polygons, list) or not polygons:
        raise ConverterError(f"{where}: must be a non-empty list of polygons ([[x, y], ...]), got {polygons!r}")
    mask = np.zeros(size, dtype=np.uint8)
    for i, poly in enumerate(polygons):
        try:
            points = np.asarray(poly, dtype=np.float64)
        except (TypeError, ValueError):
            points = None
        if points is None or points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise ConverterError(f"{where}[{i}]: a polygon is a list of [x, y] points, got {poly!r}")
        if not np.isfinite(points).all():
            raise ConverterError(f"{where}[{i}]: coordinates must be finite")
        # GeoPixel casts to int32 (truncation) and fills each polygon separately into one mask.
        cv2.fillPoly(mask, [points.astype(np.int32)], color=1)
    return mask.astype(bool)


def phrase_masks(annotation: Mapping[str, Any], size: tuple[int, int], where: str) -> list[dict[str, Any]]:
    """One ``{"rle": ...}`` per ``[SEG]`` from ``polygons`` or ``segmentation`` (COCO RLE)."""
    height, width = size
    if "polygons" in annotation:
        groups = annotation["polygons"]
        if not isinstance(groups, list):
            raise ConverterError(f"{where}: field 'polygons' must be a list (one entry per [SEG])")
        return [
            {"rle": rle_of(fill_polygons(g, size, f"{where}: field 'polygons[{i}]'"))} for i, g in enumerate(groups)
        ]
    if "segmentation" in annotation:
        parts = annotation["segmentation"]
        if not isinstance(parts, list):
            raise ConverterError(f"{where}: field 'segmentation' must be a list of COCO RLE (one per [SEG])")
        try:
            return [
                {"rle": coco_segmentation_rle(p, height, width, f"{where}: field 'segmentation[{i}]'")}
                for i, p in enumerate(parts)
            ]
        except ValueError as error:
            raise ConverterError(str(error)) from None
    raise ConverterError(f"{where}: field 'polygons' (or 'segmentation') missing")


def phrases(description: str, count: int, where: str) -> list[str]:
    """The phrases of ``<p> … </p> [SEG]``, checked against ``count`` masks."""
    segs = description.count(SEG_TOKEN)
    found = _PHRASE.findall(description)
    if len(found) != segs:
        raise ConverterError(f"{where}: {segs} {SEG_TOKEN} token(s) but {len(found)} '<p> phrase </p> [SEG]' group(s)")
    if count != segs:
        raise ConverterError(f"{where}: {count} mask(s) for {segs} {SEG_TOKEN} token(s) in the description")
    return [" ".join(p.split()) for p in found]


def _turns(items: Any, where: str) -> list[Turn]:
    """A GeoPixelD.json conversation (``bot`` = gpt), ``<image>\\n`` in front of the first human turn."""
    if not isinstance(items, list) or not items:
        raise ConverterError(f"{where}: field 'conversations' missing or empty")
    turns = []
    for i, item in enumerate(items):
        role = _ROLES.get(item.get("from"), item.get("from")) if isinstance(item, Mapping) else None
        if role not in ("human", "gpt") or not isinstance(item.get("value"), str):
            raise ConverterError(f"{where}: field 'conversations[{i}]' must be {{'from', 'value'}}, got {item!r}")
        turns.append(Turn(role, item["value"]))
    if turns[0].role == "human" and IMAGE_TOKEN not in turns[0].text:
        turns[0] = Turn("human", IMAGE_PREFIX + turns[0].text)
    return turns


def _record(
    record_id: str,
    split: str,
    image: Path,
    turns: list[Turn],
    annotation: Mapping,
    where: tuple[str, str],
    meta: dict,
) -> InstructRecord:
    """One record; ``where`` = (the annotation file or list item, the field holding the answer text)."""
    at, text_field = where
    size = image_size(image, f"{at}: field 'image'")
    masks = phrase_masks(annotation, size, at)
    answer = "\n".join(t.text for t in turns if t.role == "gpt")
    labels = phrases(answer, len(masks), f"{at}: field {text_field!r}")
    return InstructRecord(
        id=record_id,
        images=[str(image)],
        task="gcg",
        granularity=DEFAULT_GRANULARITY["gcg"],
        conversations=turns,
        source=SOURCE,
        split=split,
        size=list(size),
        masks=masks,
        labels=labels,
        coord_convention="center",
        meta=meta,
    )


def _from_folder(base: Path, split: str, question: str, check_files: bool) -> list[InstructRecord]:
    folder = base / split
    if not folder.is_dir():
        raise ConverterError(f"{folder}: GeoPixelD split folder not found")
    records = []
    for path in sorted(folder.glob("*.json")):
        annotation = read_json(path, "GeoPixelD annotation")
        if not isinstance(annotation, Mapping) or not isinstance(annotation.get("gcg_description"), str):
            raise ConverterError(f"{path}: field 'gcg_description' missing or not a string")
        image = folder / Path(str(annotation.get("img") or f"{path.stem}.png")).name
        turns = [Turn("human", IMAGE_PREFIX + question), Turn("gpt", annotation["gcg_description"])]
        meta = {"patch": path.stem, "annotation_id": annotation.get("id")}
        where = (str(path), "gcg_description")
        record = _record(f"{SOURCE}_{split}_{path.stem}", split, image, turns, annotation, where, meta)
        check_record(record, str(path), check_files)
        records.append(record)
    return records


def _from_list(base: Path, split: str, conversations: str, check_files: bool) -> list[InstructRecord]:
    path = base / conversations
    items = read_json(path, "GeoPixelD conversation list")
    if not isinstance(items, list):
        raise ConverterError(f"{path}: expected a JSON list of samples, got {type(items).__name__}")
    records = []
    for n, item in enumerate(items):
        where = f"{path}: item {n}"
        if not isinstance(item, Mapping) or not isinstance(item.get("image"), str):
            raise ConverterError(f"{where}: field 'image' missing or not a path")
        if Path(item["image"]).parent.name != split:
            continue
        image = base / split / Path(item["image"]).name
        turns = _turns(item.get("conversations"), where)
        annotation: Any = item
        if isinstance(item.get("polygons"), str):
            annotation = read_json(base / split / Path(item["polygons"]).name, "GeoPixelD annotation")
            if not isinstance(annotation, Mapping):
                raise ConverterError(f"{where}: field 'polygons': the annotation file holds no object")
        meta = {"item": n, "patch": Path(item["image"]).stem}
        record_id = f"{SOURCE}_{split}_{item.get('id', n)}"
        record = _record(record_id, split, image, turns, annotation, (where, "conversations"), meta)
        check_record(record, where, check_files)
        records.append(record)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise ConverterError(f"{path}: field 'id': {next(i for i in ids if ids.count(i) > 1)!r} repeated")
    return records


def convert_geopixeld(
    root: str | os.PathLike,
    split: str = "train",
    conversations: str | None = None,
    question: str = GCG_QUESTION,
    check_files: bool = True,
) -> list[InstructRecord]:
    """GCG records of one GeoPixelD split (see the module docstring).

    Args:
        root: the ``GeoPixelD`` folder (``train/``, ``test/``).
        split: the split folder.
        conversations: a LLaVA-style list under ``root`` (``GeoPixelD.json``) giving the turns; None
            reads every ``<split>/*.json`` with :data:`GCG_QUESTION`.
        question: the instruction in folder mode.
        check_files: check the records (images present) before returning them.

    Raises:
        ConverterError: a missing file or field, malformed polygons or RLE, or ``[SEG]`` tokens that do
            not match the phrases or the masks (names the file and field).
    """
    base = Path(root)
    if conversations is None:
        return _from_folder(base, split, question, check_files)
    return _from_list(base, split, conversations, check_files)
