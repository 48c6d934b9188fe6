"""RSVQA-LR / RSVQA-HR (Lobry et al., TGRS 2020) → visual-question-answering instruction records.

Official layout (Zenodo 6344334 and 6344367; syvlo/RSVQA ``VQA_model/VQALoader.py`` and
``AutomaticDB/DataSpecification.md``)::

    RSVQA_LR/                                      RSVQA_HR/
    ├── Images_LR/<image id>.tif  (256², S2 RGB)    ├── Data/<image id>.tif  (512², USGS RGB)
    ├── LR_split_<split>_images.json                ├── USGS_split_<split>_images.json
    ├── LR_split_<split>_questions.json             ├── USGS_split_<split>_questions.json
    └── LR_split_<split>_answers.json               └── USGS_split_<split>_answers.json

LR splits: ``train``, ``val``, ``test``; HR adds ``test_phili`` (the Philadelphia test set, "test 2").
Each file is one JSON object holding one list, cross-referenced by ids::

    {"images":    [{"id", "questions_ids": [int], "active": bool, ...}]}
    {"questions": [{"id", "img_id", "type", "question", "answers_ids": [int], "active": bool, ...}]}
    {"answers":   [{"id", "question_id", "answer", "active": bool, ...}]}

Traversal follows the official loader: the active images in file order, each image's
``questions_ids`` in order, the answer ``answers_ids[0]``; one record per question.

Assumptions (read from the official code and third-party loaders, not from the files themselves):

* Entries are looked up by their ``id`` field (the official loader indexes the lists by position,
  which is the same in the released files); an entry switched off may hold only ``id`` and
  ``active``. A missing ``active`` counts as active.
* A question with ``active: false`` is skipped (the official loader reads only the image flag); the
  answer's own flag is not read, as in the official loader.
* ``type`` is one of ``presence``, ``comp`` (the released name of comparison), ``count``, ``area``
  (HR) or ``rural_urban`` (LR); it is stored as the record's ``qtype`` with ``comp`` →
  ``comparison`` (the raw name stays in ``meta["type"]``). ``comparison`` is read as well.
* Image folders default to ``Images_LR`` (LR) and ``Data`` (HR); ``image_dir`` overrides them.

Templates: ``earthgptx`` asks the question as written (EarthGPT-X §4.1); ``geomag`` adds LLaVA-1.5's
short-answer instruction "Answer the question using a single word or phrase." (choice: GeoMag's base
model is LLaVA-1.5, trained with it on VQA). The answer is the gpt turn, as written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from rsvlm.data.multitask.converters.common import ConverterError, image_size, require_file
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, QTYPES, InstructRecord, Turn
from rsvlm.data.multitask.templates import IMAGE_PREFIX, Style, check_style
from rsvlm.data.multitask.validate import check_record

Variant = Literal["lr", "hr"]
SOURCES = {"lr": "rsvqa_lr", "hr": "rsvqa_hr"}
PREFIXES = {"lr": "LR", "hr": "USGS"}
IMAGE_DIRS = {"lr": "Images_LR", "hr": "Data"}
SPLITS = {"lr": ("train", "val", "test"), "hr": ("train", "val", "test", "test_phili")}
#: Released type names → the record's ``qtype``.
QTYPE_NAMES = {
    "presence": "presence",
    "comp": "comparison",
    "comparison": "comparison",
    "count": "count",
    "area": "area",
    "rural_urban": "rural_urban",
}
SHORT_ANSWER = "Answer the question using a single word or phrase."


def read_list(path: Path, key: str) -> list[Mapping[str, Any]]:
    """The ``key`` list of one RSVQA file (``{"<key>": [...]}``).

    Raises:
        ConverterError: the file is missing, not JSON, or lacks the list (names the file and field).
    """
    require_file(path, f"RSVQA {key} file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConverterError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    items = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise ConverterError(f"{path}: field {key!r} missing or not a list of objects")
    return items


def by_id(items: list[Mapping[str, Any]], path: Path, key: str) -> dict[Any, Mapping[str, Any]]:
    """``{id: entry}`` of one list; a missing or repeated id is an error naming the file and entry."""
    out: dict[Any, Mapping[str, Any]] = {}
    for n, item in enumerate(items):
        if "id" not in item:
            raise ConverterError(f"{path}: {key}[{n}]: field 'id' missing")
        if item["id"] in out:
            raise ConverterError(f"{path}: {key}[{n}]: field 'id': {item['id']!r} repeated")
        out[item["id"]] = item
    return out


def _field(item: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in item:
        raise ConverterError(f"{where}: field {name!r} missing")
    return item[name]


def _text(item: Mapping[str, Any], name: str, where: str) -> str:
    value = _field(item, name, where)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
        raise ConverterError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
    return str(value).strip()


def _ids(item: Mapping[str, Any], name: str, where: str) -> list[Any]:
    value = _field(item, name, where)
    if not isinstance(value, list):
        raise ConverterError(f"{where}: field {name!r} must be a list of ids, got {value!r}")
    return value


def vqa_question(style: Style, question: str) -> str:
    """The human turn of one question (the gpt turn is the answer as written)."""
    check_style(style)
    text = " ".join(question.split())
    return IMAGE_PREFIX + (text if style == "earthgptx" else f"{text}\n{SHORT_ANSWER}")


def convert_rsvqa(
    root: str | os.PathLike,
    variant: Variant = "lr",
    split: str = "train",
    style: Style = "earthgptx",
    qtypes: Sequence[str] | None = None,
    image_dir: str | None = None,
    check_files: bool = True,
) -> list[InstructRecord]:
    """VQA records of one RSVQA split (one per active question of an active image).

    Args:
        root: the dataset folder (split files and the image folder).
        variant: ``lr`` (``LR_split_*``, source ``rsvqa_lr``) or ``hr`` (``USGS_split_*``, ``rsvqa_hr``).
        split: one of :data:`SPLITS` of the variant.
        style: template family (see the module docstring).
        qtypes: keep only these question types (record names: ``comparison``, not ``comp``); None keeps all.
        image_dir: the image folder under ``root`` (default :data:`IMAGE_DIRS`).
        check_files: check the records (images present) before returning them.

    Raises:
        ConverterError: a missing file, id or field, or an unknown question type (names the file and field).
    """
    check_style(style)
    if variant not in SOURCES:
        raise ValueError(f"variant: must be 'lr' or 'hr', got {variant!r}")
    if split not in SPLITS[variant]:
        raise ValueError(f"split: RSVQA-{variant.upper()} has {', '.join(SPLITS[variant])}, got {split!r}")
    unknown = sorted(set(qtypes or ()) - set(QTYPES))
    if unknown:
        raise ValueError(f"qtypes: {unknown} not among {', '.join(QTYPES)}")
    base, prefix, source = Path(root), PREFIXES[variant], SOURCES[variant]
    paths = {key: base / f"{prefix}_split_{split}_{key}.json" for key in ("images", "questions", "answers")}
    images = read_list(paths["images"], "images")
    questions = by_id(read_list(paths["questions"], "questions"), paths["questions"], "questions")
    answers = by_id(read_list(paths["answers"], "answers"), paths["answers"], "answers")
    folder = base / (image_dir or IMAGE_DIRS[variant])
    records = []
    for n, image in enumerate(images):
        if not image.get("active", True):
            continue
        at = f"{paths['images']}: images[{n}]"
        image_id = _field(image, "id", at)
        path = folder / f"{image_id}.tif"
        size: tuple[int, int] | None = None
        for qid in _ids(image, "questions_ids", at):
            where = f"{paths['questions']}: question {qid!r}"
            if qid not in questions:
                raise ConverterError(f"{where}: not found (listed by image {image_id!r} in {paths['images']})")
            question = questions[qid]
            if not question.get("active", True):
                continue
            raw_type = _text(question, "type", where)
            if raw_type not in QTYPE_NAMES:
                raise ConverterError(
                    f"{where}: field 'type': unknown type {raw_type!r}; known: {', '.join(QTYPE_NAMES)}"
                )
            qtype = QTYPE_NAMES[raw_type]
            if qtypes is not None and qtype not in qtypes:
                continue
            answer_ids = _ids(question, "answers_ids", where)
            if not answer_ids or answer_ids[0] not in answers:
                raise ConverterError(
                    f"{where}: field 'answers_ids': {answer_ids!r} has no answer in {paths['answers']}"
                )
            answer = _text(answers[answer_ids[0]], "answer", f"{paths['answers']}: answer {answer_ids[0]!r}")
            size = size or image_size(path, f"{paths['images']}: image {image_id!r}")
            human = vqa_question(style, _text(question, "question", where))
            record = InstructRecord(
                id=f"{source}_{split}_{qid}",
                images=[str(path)],
                task="vqa",
                granularity=DEFAULT_GRANULARITY["vqa"],
                conversations=[Turn("human", human), Turn("gpt", answer)],
                source=source,
                split=split,
                size=list(size),
                qtype=qtype,
                coord_convention="center",
                meta={"question_id": qid, "image_id": image_id, "type": raw_type},
            )
            check_record(record, where, check_files)
            records.append(record)
    return records
