"""UCM-Captions and Sydney-Captions (Qu et al., CITS 2016) → image-captioning instruction records.

Official layout (the authors' release, as its loaders read it): one Karpathy-style caption file and
an image folder::

    UCM_captions/                    Sydney_captions/
    ├── dataset.json                 ├── dataset.json
    └── imgs/<filename>  (1.tif …)   └── imgs/<filename>

``dataset.json`` is ``{"images": [{"filename", "imgid", "split", "sentences": [{"raw", "tokens",
...}, ...], ...}, ...]}`` with ``split`` ``train``, ``val`` or ``test`` (5 sentences per image).

One record per image of the split, in file order: the question is "Describe this image briefly."
(EarthGPT-X §4.1; both systems); **the answer is the first sentence** (training needs one target;
which one is a choice, the file order the simplest) and ``references`` holds every sentence, for
BLEU / METEOR / ROUGE-L / CIDEr against all of them. A sentence is its ``raw`` text, trimmed and with
runs of white space made one (the released text keeps the tokenised spacing, e.g. "farmland ."); the
``tokens`` joined by spaces when ``raw`` is absent. The image size is read from the image header.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rsvlm.data.multitask.converters.common import ConverterError, image_size, require_file
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, InstructRecord, Turn
from rsvlm.data.multitask.templates import IMAGE_PREFIX
from rsvlm.data.multitask.validate import check_record

CAPTION_QUESTION = "Describe this image briefly."


def read_caption_file(path: Path) -> list[Mapping[str, Any]]:
    """The ``images`` list of a Karpathy-style caption file.

    Raises:
        ConverterError: the file is missing, not JSON, or has no ``images`` list of objects.
    """
    require_file(path, "caption file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConverterError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    images = data.get("images") if isinstance(data, Mapping) else None
    if not isinstance(images, list) or not all(isinstance(i, Mapping) for i in images):
        raise ConverterError(f"{path}: field 'images' missing or not a list of objects")
    return images


def sentence_text(sentence: Any, where: str) -> str:
    """One sentence's text: ``raw`` (white space made single), else its ``tokens`` joined."""
    if isinstance(sentence, Mapping):
        raw = sentence.get("raw")
        if isinstance(raw, str) and raw.strip():
            return " ".join(raw.split())
        tokens = sentence.get("tokens")
        if isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens):
            return " ".join(" ".join(tokens).split())
    raise ConverterError(f"{where}: needs a non-empty 'raw' text or 'tokens' list, got {sentence!r}")


def convert_captions(
    root: str | os.PathLike,
    split: str | None = "train",
    source: str = "ucm_captions",
    annotations: str = "dataset.json",
    image_dir: str = "imgs",
    question: str = CAPTION_QUESTION,
    check_files: bool = True,
) -> list[InstructRecord]:
    """Captioning records of one split of a Karpathy-style caption dataset (one per image).

    Args:
        root: the dataset folder.
        split: ``train``, ``val``, ``test``, or None for every image.
        source: the records' source name (``ucm_captions``, ``sydney_captions``).
        annotations: the caption file under ``root``.
        image_dir: the image folder under ``root``.
        question: the instruction (after ``<image>\\n``).
        check_files: check the records (images present) before returning them.

    Raises:
        ConverterError: a missing file or field, an image without sentences, or a repeated ``imgid``.
    """
    base = Path(root)
    path = base / annotations
    records, seen = [], set()
    for n, item in enumerate(read_caption_file(path)):
        where = f"{path}: images[{n}]"
        for name in ("filename", "split", "sentences"):
            if name not in item:
                raise ConverterError(f"{where}: field {name!r} missing")
        if split is not None and item["split"] != split:
            continue
        sentences = item["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise ConverterError(f"{where}: field 'sentences' must be a non-empty list")
        references = [sentence_text(s, f"{where}: field 'sentences[{i}]'") for i, s in enumerate(sentences)]
        image_id = item.get("imgid", n)
        if image_id in seen:
            raise ConverterError(f"{where}: field 'imgid': {image_id!r} repeated")
        seen.add(image_id)
        image = base / image_dir / str(item["filename"])
        record = InstructRecord(
            id=f"{source}_{image_id}",
            images=[str(image)],
            task="captioning",
            granularity=DEFAULT_GRANULARITY["captioning"],
            conversations=[Turn("human", IMAGE_PREFIX + question), Turn("gpt", references[0])],
            source=source,
            split=str(item["split"]),
            size=list(image_size(image, f"{where}: field 'filename'")),
            references=references,
            coord_convention="center",
            meta={"imgid": image_id, "filename": str(item["filename"])},
        )
        check_record(record, where, check_files)
        records.append(record)
    return records
