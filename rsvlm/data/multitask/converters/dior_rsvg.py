"""DIOR-RSVG (Zhan et al., TGRS 2023) → instruction records: grounding, ROC, region captions.

Official layout (ZhanYang-nwpu/RSVG-pytorch, README and ``data_loader.py``)::

    DIOR_RSVG/
    ├── Annotations/00001.xml ...   # VOC-style, one file per image
    ├── JPEGImages/00001.jpg ...
    ├── train.txt  val.txt  test.txt   # one integer per line: 26,991 / 3,829 / 7,500

Each ``<object>`` holds ``<name>`` (the DIOR class), ``<bndbox>`` (``xmin ymin xmax ymax``,
integer pixels) and ``<description>`` (the referring expression). A split file lists **object
indices**: the official loader walks every XML of ``Annotations`` (``os.walk``, paths sorted as
strings), counts objects in document order from 0, and keeps an object when its count is listed.
This module does the same; it reads children by tag (the official loader reads them by position:
``member[2]`` = bndbox, ``member[3]`` = description, the same elements in the released files).
The image size comes from the VOC ``<size>`` element, or the image header when absent.

Boxes are kept as the official loader reads them: ``[xmin, ymin, xmax, ymax]`` as pixel-edge
coordinates (no VOC 1-based shift). Class names are made readable (``storagetank`` → ``storage
tank``, :data:`DIOR_CLASS_NAMES`), because ROC is scored by word overlap (S-IoU) and sentence
similarity (SS) against them (choice; ``readable_labels=False`` keeps the raw names).

Tasks (the ROC records are GeoMag's "ROC built from the VG boxes" and EarthGPT-X's DIOR-RSVG ROC):

* ``grounding``: "Where is the {expression}? Answer with its bounding box." → ``<p>{class}</p>[box]``;
* ``referring_classification``: ``earthgptx`` "What is the category of <Region 1>? …" with the box in
  visual-prompt slot 1; ``geomag`` the box written in the question as LLaVA-1.5 text;
* ``region_captioning``: "Please give a brief description of <Region 1>." → the expression (slot 1).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

from rsvlm.data.multitask.converters.common import ConverterError, image_size, require_file
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, InstructRecord, Turn
from rsvlm.data.multitask.templates import Style, check_style, grounding_turns, region_caption_turns, roc_turns
from rsvlm.data.multitask.validate import check_record

SOURCE = "dior_rsvg"
TASKS = ("grounding", "referring_classification", "region_captioning")
DIOR_CLASS_NAMES = {
    "airplane": "airplane",
    "airport": "airport",
    "baseballfield": "baseball field",
    "basketballcourt": "basketball court",
    "bridge": "bridge",
    "chimney": "chimney",
    "dam": "dam",
    "expressway-service-area": "expressway service area",
    "expressway-toll-station": "expressway toll station",
    "golffield": "golf field",
    "groundtrackfield": "ground track field",
    "harbor": "harbor",
    "overpass": "overpass",
    "ship": "ship",
    "stadium": "stadium",
    "storagetank": "storage tank",
    "tenniscourt": "tennis court",
    "trainstation": "train station",
    "vehicle": "vehicle",
    "windmill": "windmill",
}


def readable_label(name: str) -> str:
    """The readable class name of a DIOR ``<name>`` (unknown names: lower case, ``-``/``_`` → space)."""
    key = name.strip().lower()
    return DIOR_CLASS_NAMES.get(key, key.replace("-", " ").replace("_", " "))


def read_split(path: Path) -> list[int]:
    """The object indices of a split file (one integer per line; blank lines skipped)."""
    require_file(path, "DIOR-RSVG split file")
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(int(line.strip()))
            except ValueError:
                raise ConverterError(
                    f"{path}:{number}: expected an object index (integer), got {line.strip()!r}"
                ) from None
    return out


def annotation_files(folder: Path) -> list[str]:
    """Every ``.xml`` under ``folder``, in the official loader's order (``os.walk`` paths sorted as strings)."""
    if not folder.is_dir():
        raise ConverterError(f"{folder}: DIOR-RSVG Annotations folder not found")
    found = [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".xml")]
    return sorted(found)


def _text(element: ET.Element, tag: str, where: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ConverterError(f"{where}: field {tag!r} missing or empty")
    return child.text.strip()


def _number(element: ET.Element, tag: str, where: str) -> float:
    text = _text(element, tag, where)
    try:
        return float(text)
    except ValueError:
        raise ConverterError(f"{where}: field {tag!r}: expected a number, got {text!r}") from None


def iter_objects(root: Path) -> Iterator[tuple[int, str, ET.Element, ET.Element]]:
    """``(object index, xml path, annotation root, object)`` over all annotations, in the split files' order."""
    index = 0
    for xml in annotation_files(root / "Annotations"):
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as error:
            raise ConverterError(f"{xml}: not valid XML ({error})") from None
        for obj in tree.findall("object"):
            yield index, xml, tree, obj
            index += 1


def _size(tree: ET.Element, xml: str, image: Path) -> tuple[int, int]:
    size = tree.find("size")
    if size is None or size.find("width") is None:
        return image_size(image, xml)
    return int(_number(size, "height", f"{xml}: size")), int(_number(size, "width", f"{xml}: size"))


def _record(
    task: str,
    index: int,
    split: str,
    image: Path,
    size: tuple[int, int],
    label: str,
    box: list[float],
    text: str,
    style: Style,
) -> InstructRecord:
    """The record of object ``index`` for one task."""
    prompts: list[dict] = []
    if task == "grounding":
        human, gpt = grounding_turns(text, label, [box], size)
    elif task == "region_captioning":
        human, gpt = region_caption_turns(text)
        prompts = [{"type": "box", "box": box, "label": 1}]
    else:
        human, gpt = roc_turns(style, label, box, size)
        prompts = [{"type": "box", "box": box, "label": 1}] if style == "earthgptx" else []
    return InstructRecord(
        id=f"{SOURCE}_{index:05d}_{task}",
        images=[str(image)],
        task=task,
        granularity=DEFAULT_GRANULARITY[task],
        conversations=[Turn("human", human), Turn("gpt", gpt)],
        source=SOURCE,
        split=split,
        size=list(size),
        boxes=[box],
        labels=[label],
        visual_prompts=prompts,
        coord_convention="center",
        meta={"object_index": index, "expression": text},
    )


def convert_dior_rsvg(
    root: str | os.PathLike,
    split: str = "train",
    tasks: Sequence[str] = ("grounding", "referring_classification"),
    style: Style = "earthgptx",
    readable_labels: bool = True,
    check_files: bool = True,
) -> list[InstructRecord]:
    """Instruction records of one DIOR-RSVG split (one record per listed object and task).

    Args:
        root: the ``DIOR_RSVG`` folder (``Annotations/``, ``JPEGImages/``, ``<split>.txt``).
        split: ``train``, ``val`` or ``test`` (the split file's stem).
        tasks: any of :data:`TASKS`.
        style: template family (:mod:`rsvlm.data.multitask.templates`).
        readable_labels: map DIOR class names to readable phrases (:func:`readable_label`).
        check_files: check the records (images present, boxes inside) before returning them.

    Raises:
        ConverterError: a missing file or field, a malformed number, or a split index past the last object.
    """
    check_style(style)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks: {unknown} not among the DIOR-RSVG tasks {', '.join(TASKS)}")
    base = Path(root)
    split_file = base / f"{split}.txt"
    wanted = set(read_split(split_file))
    records, count = [], 0
    for index, xml, tree, obj in iter_objects(base):
        count = index + 1
        if index not in wanted:
            continue
        where = f"{xml}: object {index}"
        image = base / "JPEGImages" / _text(tree, "filename", xml)
        size = _size(tree, xml, image)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ConverterError(f"{where}: field 'bndbox' missing")
        box = [_number(bndbox, tag, f"{where}: bndbox") for tag in ("xmin", "ymin", "xmax", "ymax")]
        name = _text(obj, "name", where)
        label = readable_label(name) if readable_labels else name
        description = _text(obj, "description", where)
        for task in tasks:
            record = _record(task, index, split, image, size, label, box, description, style)
            check_record(record, where, check_files)
            records.append(record)
    past = sorted(i for i in wanted if i >= count)
    if past:
        raise ConverterError(f"{split_file}: object index {past[0]} past the last of the {count} annotated objects")
    return records
