"""Checks of an :class:`~rsvlm.data.multitask.records.InstructRecord` beyond its types.

:func:`check_record` raises one :class:`~rsvlm.data.multitask.records.InstructRecordError` per
record, one line naming where it is (file and line, or the source file a converter read), the
record id and the field:

* task, granularity, modality and coordinate convention from their closed sets;
* the conversation: at least one human and one gpt turn, no empty text, human first, roles
  alternating; ``<image>`` once per image;
* "Region k" / "<Region k>" in the text needs visual-prompt slot k (SPHINX-V's numbering, from 1);
* ``[SEG]`` tokens in the answers: as many as masks;
* ``boxes``, ``masks`` and ``labels``: each empty or one per target;
* geometry inside the image: boxes, prompt boxes and points; polygon and RLE sizes; mask files
  present (``check_files``);
* band count = the image's (``check_files`` and ``bands`` given).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from rsvlm.data.modalities import MODALITY_IDS
from rsvlm.data.multitask.masks import check_mask
from rsvlm.data.multitask.records import COORD_CONVENTIONS, GRANULARITIES, TASKS, InstructRecord, InstructRecordError
from rsvlm.data.raster import RasterError, read_header
from rsvlm.data.visual_prompts import prompts_from_json

IMAGE_TOKEN = "<image>"
SEG_TOKEN = "[SEG]"
_REGION = re.compile(r"\bRegion\s+(\d+)\b")


def _error(record: InstructRecord, where: str, name: str, what: str) -> InstructRecordError:
    return InstructRecordError(f"{where}: record {record.id!r}: field {name!r}: {what}")


def _check_closed(record: InstructRecord, where: str) -> None:
    """The closed sets again: a record made in memory has not been through ``from_dict``."""
    for name, known in (
        ("task", TASKS),
        ("granularity", GRANULARITIES),
        ("modality", tuple(MODALITY_IDS)),
        ("coord_convention", COORD_CONVENTIONS),
    ):
        if getattr(record, name) not in known:
            raise _error(record, where, name, f"unknown {name} {getattr(record, name)!r}; known: {', '.join(known)}")


def _check_conversation(record: InstructRecord, where: str) -> None:
    turns = record.conversations
    if not turns:
        raise _error(record, where, "conversations", "is empty: a record needs at least one human and one gpt turn")
    for i, turn in enumerate(turns):
        if not turn.text.strip():
            raise _error(record, where, f"conversations[{i}].value", f"empty {turn.role} turn")
        expected = "human" if i % 2 == 0 else "gpt"
        if turn.role != expected:
            raise _error(
                record, where, f"conversations[{i}].from", f"expected {expected!r} (turns alternate, human first)"
            )
    if len(turns) < 2:
        raise _error(record, where, "conversations", "has no gpt turn (nothing to answer or learn)")
    found = sum(t.text.count(IMAGE_TOKEN) for t in turns)
    if found != len(record.images):
        raise _error(
            record, where, "conversations", f"{found} {IMAGE_TOKEN} placeholder(s) for {len(record.images)} image(s)"
        )
    for i, turn in enumerate(turns):
        for match in _REGION.finditer(turn.text):
            k = int(match.group(1))
            if not 1 <= k <= len(record.visual_prompts):
                raise _error(
                    record,
                    where,
                    f"conversations[{i}].value",
                    f"'Region {k}' has no visual prompt slot {k} ({len(record.visual_prompts)} visual_prompts)",
                )
    segs = sum(t.text.count(SEG_TOKEN) for t in turns if t.role == "gpt")
    if segs and segs != len(record.masks):
        raise _error(
            record, where, "masks", f"{len(record.masks)} mask(s) for {segs} {SEG_TOKEN} token(s) in the answers"
        )


def _check_counts(record: InstructRecord, where: str) -> None:
    lengths = {n: len(getattr(record, n)) for n in ("boxes", "masks", "labels") if getattr(record, n)}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{n} {k}" for n, k in lengths.items())
        raise _error(record, where, "boxes/masks/labels", f"one entry per target or none, got {shown}")


def _inside(box: Sequence[float], size: Sequence[int] | None) -> bool:
    x0, y0, x1, y1 = box
    return size is None or (x0 >= 0 and y0 >= 0 and x1 <= size[1] and y1 <= size[0])


def _check_box(record: InstructRecord, where: str, name: str, box: object, size: Sequence[int] | None) -> None:
    ok = isinstance(box, (list, tuple)) and len(box) == 4
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    if not ok:
        raise _error(record, where, name, f"a box is 4 finite numbers [x0, y0, x1, y1], got {box!r}")
    if box[2] < box[0] or box[3] < box[1]:
        raise _error(record, where, name, f"needs x0 <= x1 and y0 <= y1, got {list(box)}")
    if not _inside(box, size):
        raise _error(record, where, name, f"{list(box)} lies outside the {size[0]}×{size[1]} image (H×W)")


def _check_prompts(record: InstructRecord, where: str, size: Sequence[int] | None) -> None:
    try:
        prompts = prompts_from_json(record.visual_prompts, "visual_prompts")
    except ValueError as error:
        raise _error(record, where, "visual_prompts", str(error)) from None
    for k, p in enumerate(prompts):
        name = f"visual_prompts[{k}]"
        if p.mask is not None:
            if size is not None and list(p.mask.shape) != list(size):
                raise _error(record, where, name, f"mask size {list(p.mask.shape)} differs from the image {list(size)}")
        elif not _inside(p.bounds, size):
            raise _error(
                record, where, name, f"{[round(v, 3) for v in p.bounds]} lies outside the {size[0]}×{size[1]} image"
            )


def image_size(record: InstructRecord, where: str, check_files: bool = True) -> list[int] | None:
    """``(H, W)`` of the record's first image: its ``size`` field, else the file's header.

    With ``check_files`` the image must exist, and a given ``size`` or ``bands`` must match the file.
    Without it a record lacking ``size`` has no geometry checks.
    """
    if not check_files:
        return record.size
    path = record.image
    if not os.path.exists(path):
        raise _error(record, where, "image", f"image file not found: {path}")
    if record.size is not None and record.bands is None:
        return record.size  # no need to open the file: nothing else to compare with it
    try:
        header = read_header(path)
    except RasterError as error:
        raise _error(record, where, "image", str(error)) from None
    if record.bands is not None and len(record.bands) != header.count:
        raise _error(record, where, "bands", f"{len(record.bands)} band names for {header.count} band(s) in {path}")
    actual = [header.height, header.width]
    if record.size is not None and list(record.size) != actual:
        raise _error(record, where, "size", f"{record.size} but {path} is {actual} (H, W)")
    return actual


def check_record(record: InstructRecord, where: str, check_files: bool = True) -> None:
    """Check ``record`` (see the module docstring); raise an :class:`InstructRecordError` naming ``where``.

    Args:
        record: the record (paths absolute).
        where: the file and line it came from, or the source a converter read.
        check_files: also check that the image and mask files exist (and read the image header
            when ``size`` is missing or ``bands`` given).
    """
    _check_closed(record, where)
    _check_conversation(record, where)
    _check_counts(record, where)
    size = image_size(record, where, check_files)
    for i, box in enumerate(record.boxes):
        _check_box(record, where, f"boxes[{i}]", box, size)
    for i, mask in enumerate(record.masks):
        try:
            check_mask(mask, f"masks[{i}]", size, check_files)
        except ValueError as error:
            raise _error(record, where, f"masks[{i}]", str(error).removeprefix(f"masks[{i}]: ")) from None
    _check_prompts(record, where, size)
