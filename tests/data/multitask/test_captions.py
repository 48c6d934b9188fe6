"""UCM / Sydney caption converter on a tiny Karpathy-style ``dataset.json`` with an ``imgs/`` folder:
one record per image of the split, first sentence as the answer, every sentence as a reference,
round trip and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsvlm.data.multitask import read_records, write_records
from rsvlm.data.multitask.converters import CONVERTERS, ConverterError, convert_captions

# (filename, imgid, split, (W, H), sentences as released: raw text, or None for a tokens-only sentence)
IMAGES = [
    ("1.tif", 0, "train", (20, 16), ["There is a piece of farmland .", "  Many  green crops are in the field ."]),
    ("2.tif", 1, "val", (16, 16), ["A road goes through the forest ."]),
    ("3.tif", 2, "train", (12, 18), [None, "The runway is long ."]),
]
TOKENS = ["an", "airplane", "is", "parked"]


def write_captions(root: Path, images: list = IMAGES, image_dir: str = "imgs") -> Path:
    (root / image_dir).mkdir(parents=True)
    items = []
    for filename, imgid, split, (w, h), raws in images:
        Image.fromarray(np.full((h, w, 3), 100, dtype=np.uint8)).save(root / image_dir / filename)
        sentences = [
            {"tokens": TOKENS, "imgid": imgid, "sentid": 5 * imgid + k}
            if raw is None
            else {"tokens": raw.split(), "raw": raw, "imgid": imgid, "sentid": 5 * imgid + k}
            for k, raw in enumerate(raws)
        ]
        items.append({"filename": filename, "imgid": imgid, "split": split, "sentences": sentences})
    (root / "dataset.json").write_text(json.dumps({"images": items, "dataset": "ucm"}))
    return root


@pytest.fixture
def ucm(tmp_path: Path) -> Path:
    return write_captions(tmp_path.resolve() / "UCM_captions")


def test_one_record_per_image_with_every_sentence_as_reference(ucm: Path) -> None:
    records = convert_captions(ucm, "train")
    assert [r.id for r in records] == ["ucm_captions_0", "ucm_captions_2"]
    first, second = records
    assert first.references == ["There is a piece of farmland .", "Many green crops are in the field ."]
    assert [t.text for t in first.conversations] == [
        "<image>\nDescribe this image briefly.",
        "There is a piece of farmland .",
    ]
    assert second.references == ["an airplane is parked", "The runway is long ."]
    assert second.conversations[1].text == "an airplane is parked"  # the first sentence, even tokens-only
    assert first.images == [str(ucm / "imgs" / "1.tif")] and first.size == [16, 20] and second.size == [18, 12]
    assert (first.task, first.granularity, first.split) == ("captioning", "image", "train")
    assert [r.id for r in convert_captions(ucm, "val")] == ["ucm_captions_1"]
    assert len(convert_captions(ucm, None)) == 3


def test_sydney_name_and_round_trip(tmp_path: Path) -> None:
    root = write_captions(tmp_path / "Sydney_captions")
    records = CONVERTERS["sydney_captions"](root, split="val")
    assert records[0].source == "sydney_captions" and records[0].id == "sydney_captions_1"
    path = write_records(root / "val.jsonl", records)
    assert read_records(path) == records


def test_errors_name_the_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(ConverterError, match=r"dataset\.json: caption file not found"):
        convert_captions(tmp_path)
    root = write_captions(tmp_path / "a", [*IMAGES, ("4.tif", 3, "train", (8, 8), [])])
    with pytest.raises(ConverterError, match=r"dataset\.json: images\[3\]: field 'sentences' must be a non-empty"):
        convert_captions(root)
    root = write_captions(tmp_path / "b", [*IMAGES, ("4.tif", 0, "train", (8, 8), ["x"])])
    with pytest.raises(ConverterError, match=r"images\[3\]: field 'imgid': 0 repeated"):
        convert_captions(root)
    root = write_captions(tmp_path / "c")
    (root / "imgs" / "3.tif").unlink()
    with pytest.raises(ConverterError, match=r"images\[2\]: field 'filename': image file not found: .*3\.tif"):
        convert_captions(root)
    data = json.loads((root / "dataset.json").read_text())
    data["images"][0]["sentences"][0] = {"raw": "  ", "sentid": 0}
    (root / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ConverterError, match=r"images\[0\]: field 'sentences\[0\]': needs a non-empty 'raw'"):
        convert_captions(root)
