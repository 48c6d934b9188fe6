"""RSVQA converter on tiny copies of the official LR and HR layouts (``<prefix>_split_<split>_{images,
questions,answers}.json`` cross-referenced by ids, ``active`` flags, ``<id>.tif`` images): traversal order,
skipped entries, type names, both templates, round trip and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsvlm.data.multitask import read_records, write_records
from rsvlm.data.multitask.converters import CONVERTERS, ConverterError, convert_rsvqa

# image id → (active, question ids in the image's order); image 1 is switched off and holds only id/active.
IMAGES = {0: (True, [0, 1, 2]), 1: (False, [5]), 2: (True, [4, 3])}
# question id → (type as released, question, answer, question active)
QUESTIONS = {
    0: ("presence", "Is there a road?", "yes", True),
    1: ("comp", "Are there more buildings than water areas?", "no", True),
    2: ("count", "How many buildings are there?", "3", False),
    3: ("rural_urban", "Is it a rural or an urban area", "rural", True),
    4: ("count", "How many  water areas are there in the image?", "17", True),
    5: ("presence", "Is there a farmland?", "no", True),
}
# What the converter must give, written out: (question id, image id, qtype, question text, answer).
EXPECTED = [
    (0, 0, "presence", "Is there a road?", "yes"),
    (1, 0, "comparison", "Are there more buildings than water areas?", "no"),
    (4, 2, "count", "How many water areas are there in the image?", "17"),
    (3, 2, "rural_urban", "Is it a rural or an urban area", "rural"),
]
SIDE = {"lr": 24, "hr": 32}


def write_rsvqa(
    root: Path,
    variant: str = "lr",
    split: str = "train",
    images: dict = IMAGES,
    questions: dict = QUESTIONS,
    image_dir: str | None = None,
) -> Path:
    """The official files of one split (ids = list positions, as released) and the active images."""
    prefix = {"lr": "LR", "hr": "USGS"}[variant]
    folder = root / (image_dir or {"lr": "Images_LR", "hr": "Data"}[variant])
    folder.mkdir(parents=True, exist_ok=True)
    image_list, question_list, answer_list = [], [], []
    for image_id, (active, qids) in images.items():
        if not active:
            image_list.append({"id": image_id, "active": False})
            continue
        image_list.append({"id": image_id, "date_added": 0, "people_id": 1, "questions_ids": qids, "active": True})
        pixels = np.full((SIDE[variant], SIDE[variant], 3), 40 * image_id, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{image_id}.tif")
    owner = {q: i for i, (_, qids) in images.items() for q in qids}
    for qid, (qtype, text, answer, active) in questions.items():
        question_list.append(
            {
                "id": qid,
                "img_id": owner.get(qid, 0),
                "type": qtype,
                "question": text,
                "answers_ids": [qid],
                "active": active,
            }
        )
        answer_list.append({"id": qid, "question_id": qid, "answer": answer, "active": True})
    for key, items in (("images", image_list), ("questions", question_list), ("answers", answer_list)):
        (root / f"{prefix}_split_{split}_{key}.json").write_text(json.dumps({key: items}))
    return root


@pytest.fixture
def lr(tmp_path: Path) -> Path:
    return write_rsvqa(tmp_path.resolve() / "RSVQA_LR")


def test_records_follow_the_official_traversal(lr: Path) -> None:
    records = convert_rsvqa(lr, "lr", "train")
    got = [
        (r.meta["question_id"], r.meta["image_id"], r.qtype, r.conversations[0].text, r.conversations[1].text)
        for r in records
    ]
    assert got == [(q, i, t, f"<image>\n{text}", a) for q, i, t, text, a in EXPECTED]
    assert [r.id for r in records] == ["rsvqa_lr_train_0", "rsvqa_lr_train_1", "rsvqa_lr_train_4", "rsvqa_lr_train_3"]
    first = records[0]
    assert first.images == [str(lr / "Images_LR" / "0.tif")] and first.size == [24, 24]
    assert (first.task, first.granularity, first.source, first.split) == ("vqa", "region", "rsvqa_lr", "train")
    assert records[1].meta["type"] == "comp"  # the released name stays in meta


def test_hr_layout_and_test_phili_split(tmp_path: Path) -> None:
    root = write_rsvqa(tmp_path / "RSVQA_HR", "hr", "test_phili")
    records = CONVERTERS["rsvqa_hr"](root, split="test_phili")
    assert [r.id for r in records] == [f"rsvqa_hr_test_phili_{q}" for q, *_ in EXPECTED]
    assert records[0].images == [str(root / "Data" / "0.tif")] and records[0].size == [32, 32]
    assert {r.source for r in records} == {"rsvqa_hr"}
    with pytest.raises(ValueError, match="split: RSVQA-LR has train, val, test, got 'test_phili'"):
        convert_rsvqa(root, "lr", "test_phili")


def test_question_type_filter_and_geomag_template(lr: Path) -> None:
    records = convert_rsvqa(lr, "lr", "train", style="geomag", qtypes=["presence", "comparison"])
    assert [r.meta["question_id"] for r in records] == [0, 1]
    assert records[0].conversations[0].text == (
        "<image>\nIs there a road?\nAnswer the question using a single word or phrase."
    )
    with pytest.raises(ValueError, match=r"qtypes: \['comp'\] not among"):
        convert_rsvqa(lr, "lr", "train", qtypes=["comp"])


def test_round_trip_through_json_lines(lr: Path) -> None:
    records = convert_rsvqa(lr, "lr", "train")
    path = write_records(lr / "train.jsonl", records)
    assert read_records(path) == records
    assert '"image": "Images_LR/0.tif"' in path.read_text()


def test_errors_name_the_file_and_field(tmp_path: Path) -> None:
    root = write_rsvqa(tmp_path / "a")
    (root / "LR_split_train_answers.json").unlink()
    with pytest.raises(ConverterError, match=r"LR_split_train_answers\.json: RSVQA answers file not found"):
        convert_rsvqa(root, "lr", "train")
    root = write_rsvqa(tmp_path / "b", questions={**QUESTIONS, 0: ("colour", "Which colour?", "red", True)})
    with pytest.raises(
        ConverterError, match=r"LR_split_train_questions\.json: question 0: field 'type': unknown type 'colour'"
    ):
        convert_rsvqa(root, "lr", "train")
    root = write_rsvqa(tmp_path / "c", images={**IMAGES, 0: (True, [0, 9])})
    with pytest.raises(ConverterError, match=r"question 9: not found \(listed by image 0"):
        convert_rsvqa(root, "lr", "train")
    root = write_rsvqa(tmp_path / "d")
    (root / "Images_LR" / "2.tif").unlink()
    with pytest.raises(ConverterError, match=r"LR_split_train_images\.json: image 2: image file not found: .*2\.tif"):
        convert_rsvqa(root, "lr", "train")
    (root / "LR_split_train_images.json").write_text(json.dumps({"pictures": []}))
    with pytest.raises(ConverterError, match=r"LR_split_train_images\.json: field 'images' missing"):
        convert_rsvqa(root, "lr", "train")
