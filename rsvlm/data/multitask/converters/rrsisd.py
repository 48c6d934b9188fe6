"""RRSIS-D (Liu et al., CVPR 2024, RMSIN) → referring-segmentation instruction records.

Official layout (Lsan2401/RMSIN README, ``refer/refer.py`` and ``data/dataset_refer_bert.py``)::

    <data_root>/
    ├── rrsisd/
    │   ├── refs(unc).p        # pickle: list of refs
    │   └── instances.json     # COCO: images, annotations, categories
    └── images/rrsisd/JPEGImages/<file_name>

A ref is ``{"ref_id", "ann_id", "image_id", "category_id", "split": "train"|"val"|"test",
"sentences": [{"raw", "sent", "sent_id", "tokens"}, ...], "sent_ids", "file_name"}``; its
annotation's ``segmentation`` is COCO polygons, one RLE or a list of RLEs, and ``bbox`` is COCO
``[x, y, w, h]``. One record per (ref, sentence), as RMSIN tests every sentence of a ref; the text
is the sentence's ``raw`` (RMSIN's choice; ``sent`` when absent). The mask is the union of the
annotation's parts, stored as one COCO RLE (refer's ``getMask`` sums the parts and RMSIN keeps
pixels equal to 1, which drops overlaps of two parts: a difference only where parts overlap).
The image size comes from ``instances.json`` (``height``, ``width``).

Reading a pickle runs any code the file contains, so ``refs(unc).p`` is read only with
``trust_pickle=True``; otherwise a :class:`ConverterError` says so.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rsvlm.data.multitask.converters.common import ConverterError, require_file
from rsvlm.data.multitask.masks import coco_segmentation_rle
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, InstructRecord, Turn
from rsvlm.data.multitask.templates import Style, check_style, refseg_turns
from rsvlm.data.multitask.validate import check_record

SOURCE = "rrsisd"
SPLITS = ("train", "val", "test")


def load_refs(path: Path, trust_pickle: bool) -> list[Mapping[str, Any]]:
    """The refs of a refer-style pickle, read only when the caller trusts it.

    Raises:
        ConverterError: ``trust_pickle`` is False (with the reason), the file is missing or not a list of refs.
    """
    require_file(path, "refer refs pickle")
    if not trust_pickle:
        raise ConverterError(
            f"{path}: not read: unpickling runs any code the file holds; pass trust_pickle=True only for a "
            "file you trust (e.g. the official RRSIS-D download)"
        )
    with open(path, "rb") as f:
        # The caller vouched for the file (trust_pickle=True).
        refs = pickle.load(f)
    if not isinstance(refs, list) or not all(isinstance(r, Mapping) for r in refs):
        raise ConverterError(f"{path}: expected a list of refs (objects), got {type(refs).__name__}")
    return refs


def load_instances(path: Path) -> tuple[dict[int, Mapping], dict[int, Mapping], dict[int, str]]:
    """``(images by id, annotations by id, category names by id)`` of a COCO ``instances.json``."""
    require_file(path, "COCO instances.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConverterError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, Mapping) or not isinstance(data.get(key), list):
            raise ConverterError(f"{path}: field {key!r} missing or not a list")
    try:
        images = {int(i["id"]): i for i in data["images"]}
        anns = {int(a["id"]): a for a in data["annotations"]}
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as error:
        raise ConverterError(f"{path}: an image, annotation or category lacks 'id' or 'name' ({error!r})") from None
    return images, anns, cats


def _field(ref: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in ref:
        raise ConverterError(f"{where}: field {name!r} missing")
    return ref[name]


def _sentences(ref: Mapping[str, Any], where: str) -> list[tuple[Any, str]]:
    """``(sent_id, text)`` of a ref's sentences."""
    sentences = _field(ref, "sentences", where)
    if not isinstance(sentences, list) or not sentences:
        raise ConverterError(f"{where}: field 'sentences' must be a non-empty list")
    out = []
    for i, s in enumerate(sentences):
        text = s.get("raw") or s.get("sent") if isinstance(s, Mapping) else None
        if not isinstance(text, str) or not text.strip():
            raise ConverterError(f"{where}: field 'sentences[{i}]' has no 'raw' or 'sent' text")
        out.append((s.get("sent_id", i), text.strip()))
    return out


def _image_and_size(image: Mapping[str, Any], folder: Path, where: str) -> tuple[Path, int, int]:
    try:
        return folder / str(image["file_name"]), int(image["height"]), int(image["width"])
    except (KeyError, TypeError, ValueError):
        raise ConverterError(f"{where}: image entry needs 'file_name', 'height' and 'width'") from None


def _box(ann: Mapping[str, Any], where: str) -> list[float]:
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise ConverterError(f"{where}: field 'bbox' must be COCO [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def convert_rrsisd(
    root: str | os.PathLike,
    split: str | None = "train",
    trust_pickle: bool = False,
    style: Style = "earthgptx",
    dataset: str = "rrsisd",
    split_by: str = "unc",
    image_dir: str | os.PathLike | None = None,
    check_files: bool = True,
) -> list[InstructRecord]:
    """Referring-segmentation records of one RRSIS-D split (one per ref sentence).

    Args:
        root: the refer data root (holds ``<dataset>/`` and ``images/``).
        split: ``train``, ``val``, ``test``, or None for every ref.
        trust_pickle: read ``refs(<split_by>).p`` (a pickle) at all; see the module docstring.
        style: template family (:mod:`rsvlm.data.multitask.templates`).
        dataset: the folder of the annotation files (refer's dataset name).
        split_by: refer's split name in ``refs(<split_by>).p``.
        image_dir: image folder (default ``<root>/images/rrsisd/JPEGImages``, as RMSIN's refer).
        check_files: check that the images exist.

    Raises:
        ConverterError: the pickle is not trusted, or a file or field is missing or malformed.
    """
    check_style(style)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split: must be one of {', '.join(SPLITS)} or None, got {split!r}")
    base = Path(root)
    refs_path = base / dataset / f"refs({split_by}).p"
    instances_path = base / dataset / "instances.json"
    refs = load_refs(refs_path, trust_pickle)
    images, anns, cats = load_instances(instances_path)
    folder = Path(image_dir) if image_dir is not None else base / "images" / "rrsisd" / "JPEGImages"
    records = []
    for n, ref in enumerate(refs):
        where = f"{refs_path}: ref {n}"
        ref_split = _field(ref, "split", where)
        if split is not None and ref_split != split:
            continue
        ref_id, ann_id, image_id = (_field(ref, k, where) for k in ("ref_id", "ann_id", "image_id"))
        if ann_id not in anns or image_id not in images:
            raise ConverterError(f"{where}: ann_id {ann_id!r} or image_id {image_id!r} not in {instances_path}")
        ann = anns[ann_id]
        path, height, width = _image_and_size(images[image_id], folder, f"{instances_path}: image {image_id}")
        at = f"{instances_path}: annotation {ann_id}"
        try:
            rle = coco_segmentation_rle(ann.get("segmentation"), height, width, f"{at}: field 'segmentation'")
        except ValueError as error:
            raise ConverterError(str(error)) from None
        box = _box(ann, at)
        label = cats.get(int(ann.get("category_id", ref.get("category_id", -1))), "")
        for sent_id, text in _sentences(ref, where):
            human, gpt = refseg_turns(style, text)
            record = InstructRecord(
                id=f"{SOURCE}_{ref_id}_{sent_id}",
                images=[str(path)],
                task="referring_segmentation",
                granularity=DEFAULT_GRANULARITY["referring_segmentation"],
                conversations=[Turn("human", human), Turn("gpt", gpt)],
                source=SOURCE,
                split=str(ref_split),
                size=[height, width],
                boxes=[box],
                masks=[{"rle": rle}],
                labels=[label] if label else [],
                coord_convention="center",
                meta={"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "sent_id": sent_id, "expression": text},
            )
            check_record(record, where, check_files)
            records.append(record)
    return records
