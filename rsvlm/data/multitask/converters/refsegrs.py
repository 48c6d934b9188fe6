"""RefSegRS (Yuan et al., TGRS 2024, LGCE) → referring-segmentation instruction records.

Official layout (zhu-xlab/rrsis points to the Hugging Face dataset ``JessicaYuan/RefSegRS``; the
loaders of LGCE and of the RRSIS works built on it read)::

    RefSegRS/
    ├── images/<id>.tif
    ├── masks/<id>.tif                      # binary, one band
    └── output_phrase_{train,val,test}.txt  # one "<id> <referring expression>" per line

An image id may appear on several lines (several expressions, each with the same mask file).
One record per non-blank line, in file order; the expression is the rest of the line after the
first space, trimmed (the official loader keeps the line's newline in the text). The mask stays a
file reference ``{"path": masks/<id>.tif, "threshold": 50}``: the LGCE loader reads it with
``cv2.imread(path, 2) > 50`` (foreground = value above 50). The image size is read from the
image header (once per image).
"""

from __future__ import annotations

import os
from pathlib import Path

from rsvlm.data.multitask.converters.common import ConverterError, image_size, require_file
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, InstructRecord, Turn
from rsvlm.data.multitask.templates import Style, check_style, refseg_turns
from rsvlm.data.multitask.validate import check_record

SOURCE = "refsegrs"
MASK_THRESHOLD = 50


def read_phrases(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, image id, expression)`` of a phrase file.

    Raises:
        ConverterError: a non-blank line without an expression (names the file and line).
    """
    require_file(path, "RefSegRS phrase file")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) < 2:
            raise ConverterError(f"{path}:{number}: expected '<image id> <expression>', got {line.strip()!r}")
        out.append((number, parts[0], parts[1].strip()))
    return out


def convert_refsegrs(
    root: str | os.PathLike,
    split: str = "train",
    style: Style = "earthgptx",
    mask_threshold: float = MASK_THRESHOLD,
    check_files: bool = True,
) -> list[InstructRecord]:
    """Referring-segmentation records of one RefSegRS split.

    Args:
        root: the ``RefSegRS`` folder.
        split: ``train``, ``val`` or ``test`` (``output_phrase_<split>.txt``).
        style: template family (:mod:`rsvlm.data.multitask.templates`).
        mask_threshold: foreground = mask value above this (the LGCE loader's 50).
        check_files: check that the images and masks exist.

    Raises:
        ConverterError: a missing phrase file or image, or a malformed line.
    """
    check_style(style)
    base = Path(root)
    phrases = base / f"output_phrase_{split}.txt"
    sizes: dict[str, tuple[int, int]] = {}
    records = []
    for number, image_id, expression in read_phrases(phrases):
        where = f"{phrases}:{number}"
        image = base / "images" / f"{image_id}.tif"
        if image_id not in sizes:
            sizes[image_id] = image_size(image, where)
        human, gpt = refseg_turns(style, expression)
        record = InstructRecord(
            id=f"{SOURCE}_{split}_{number:05d}",
            images=[str(image)],
            task="referring_segmentation",
            granularity=DEFAULT_GRANULARITY["referring_segmentation"],
            conversations=[Turn("human", human), Turn("gpt", gpt)],
            source=SOURCE,
            split=split,
            size=list(sizes[image_id]),
            masks=[{"path": str(base / "masks" / f"{image_id}.tif"), "threshold": mask_threshold}],
            coord_convention="center",
            meta={"image_id": image_id, "line": number, "expression": expression},
        )
        check_record(record, where, check_files)
        records.append(record)
    return records
