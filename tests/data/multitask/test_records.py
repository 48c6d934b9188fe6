"""Instruction records: JSON-lines round trip, aliases, mask forms against skimage-drawn masks,
and the one-line errors (file, line, record, field) for each broken rule."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import coco_runs
from PIL import Image
from skimage.draw import polygon as draw_polygon

from rsvlm.data.multitask import InstructRecord, InstructRecordError, Turn, decode_mask, read_records, write_records
from rsvlm.data.multitask.masks import coco_segmentation_rle, rle_of

H, W = 40, 60


def drawn(xs: list[int], ys: list[int]) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    rr, cc = draw_polygon(np.array(ys), np.array(xs), (H, W))
    mask[rr, cc] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path.resolve()
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(root / "img.png")
    (root / "masks").mkdir()
    values = np.zeros((H, W), dtype=np.uint8)
    values[5:10, 5:20] = 200
    values[20:25, 5:20] = 30  # below the threshold of 50: background
    Image.fromarray(values).save(root / "masks" / "m.png")
    return root


def valid(root: Path, record_id: str = "r0") -> dict:
    """A valid record's JSON object with every field set (paths relative to ``root``)."""
    square = drawn([10, 30, 30, 10], [5, 5, 20, 20])
    return {
        "id": record_id,
        "image": "img.png",
        "task": "referring_segmentation",
        "granularity": "pixel",
        "source": "unit",
        "split": "train",
        "modality": "optical",
        "size": [H, W],
        "conversations": [
            {"from": "human", "value": "<image>\nSegment the objects marked by <Region 1> and Region 2."},
            {"from": "gpt", "value": "<p>a</p> [SEG] <p>b</p> [SEG] <p>c</p> [SEG]"},
        ],
        "boxes": [[10.0, 5.0, 30.0, 20.0], [5, 5, 20, 10], [0, 0, 60, 40]],
        "masks": [
            {"rle": rle_of(square)},
            {"path": "masks/m.png", "threshold": 50},
            {"polygons": [[1, 1, 50, 1, 50, 30]]},
        ],
        "labels": ["a", "b", "c"],
        "visual_prompts": [
            {"type": "box", "box": [10.0, 5.0, 30.0, 20.0], "label": 1},
            {"type": "point", "xy": [7.5, 7.5], "label": 1},
        ],
        "references": ["a reference"],
        "qtype": None,
        "bands": ["red", "green", "blue"],
        "value": "dn8",
        "coord_convention": "center",
        "meta": {"ref_id": 3},
    }


def write_lines(path: Path, objects: list[dict]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")
    return path


def test_round_trip_keeps_every_field_and_stores_relative_paths(folder: Path) -> None:
    path = write_lines(folder / "in.jsonl", [valid(folder, "r0"), valid(folder, "r1")])
    records = read_records(path)
    assert [r.id for r in records] == ["r0", "r1"]
    first = records[0]
    assert first.images == [str(folder / "img.png")]
    assert first.masks[1]["path"] == str(folder / "masks" / "m.png")
    assert first.conversations[1] == Turn("gpt", "<p>a</p> [SEG] <p>b</p> [SEG] <p>c</p> [SEG]")
    out = write_records(folder / "out.jsonl", records)
    line = json.loads(out.read_text().splitlines()[0])
    assert line["image"] == "img.png" and line["masks"][1]["path"] == "masks/m.png"
    assert line["conversations"][0]["from"] == "human"  # LLaVA's keys
    assert read_records(out) == records
    assert line == valid(folder, "r0")


def test_images_outside_the_folder_stay_absolute_and_several_images_are_a_list(folder: Path, tmp_path: Path) -> None:
    record = InstructRecord.from_dict({**valid(folder), "image": [str(folder / "img.png"), str(folder / "img.png")]})
    record.conversations[0].text = "<image><image>\n" + record.conversations[0].text.removeprefix("<image>\n")
    record.masks = [m if "path" not in m else {**m, "path": str(folder / m["path"])} for m in record.masks]
    sub = folder / "sub"
    out = write_records(sub / "r.jsonl", [record])
    line = json.loads(out.read_text())
    assert line["image"] == [str(folder / "img.png")] * 2
    assert read_records(out)[0].images == [str(folder / "img.png")] * 2


def test_spec_aliases_read_as_canonical_names(folder: Path) -> None:
    d = {**valid(folder), "task": "roc", "granularity": "point", "coord_convention": "mmrs_center_pad_norm"}
    d["conversations"] = [
        {"from": "user", "value": "<image>\nWhat is <Region 1>?"},
        {"from": "assistant", "value": "ship"},
    ]
    d["masks"], d["boxes"], d["labels"] = [], [], []
    record = InstructRecord.from_dict(d)
    assert (record.task, record.granularity, record.coord_convention) == (
        "referring_classification",
        "region",
        "center",
    )
    assert [t.role for t in record.conversations] == ["human", "gpt"]


def test_mask_forms_decode_to_the_drawn_masks(folder: Path) -> None:
    square = drawn([10, 30, 30, 10], [5, 5, 20, 20])
    assert np.array_equal(decode_mask({"rle": rle_of(square)}, (H, W)), square)
    assert np.array_equal(decode_mask({"rle": {"size": [H, W], "counts": coco_runs(square)}}, (H, W)), square)
    threshold = np.zeros((H, W), dtype=bool)
    threshold[5:10, 5:20] = True
    assert np.array_equal(decode_mask({"path": str(folder / "masks" / "m.png"), "threshold": 50}, (H, W)), threshold)
    assert decode_mask({"path": str(folder / "masks" / "m.png")}, (H, W)).sum() == 2 * 5 * 15
    xs, ys = [5, 30, 40, 10], [4, 6, 30, 25]
    poly = [float(v) for xy in zip(xs, ys) for v in xy]
    # COCO and skimage rasterise polygon edges differently: a boundary difference only.
    assert iou(decode_mask({"polygons": [poly]}, (H, W)), drawn(xs, ys)) > 0.9


def test_coco_segmentation_parts_are_united(folder: Path) -> None:
    a, b = drawn([2, 20, 20, 2], [2, 2, 10, 10]), drawn([15, 40, 40, 15], [8, 8, 30, 30])
    rle = coco_segmentation_rle([{"size": [H, W], "counts": coco_runs(a)}, rle_of(b)], H, W, "seg")
    assert np.array_equal(decode_mask({"rle": rle}, (H, W)), a | b)


BROKEN = {
    "unknown task": (lambda d: d.update(task="segmentation"), "field 'task': unknown task 'segmentation'"),
    "region without slot": (
        lambda d: d.update(visual_prompts=d["visual_prompts"][:1]),
        "'Region 2' has no visual prompt slot 2 (1 visual_prompts)",
    ),
    "missing mask file": (
        lambda d: d["masks"][1].update(path="masks/none.png"),
        "field 'masks[1]': mask file not found",
    ),
    "box outside": (
        lambda d: d["boxes"].__setitem__(0, [10, 5, 61, 20]),
        "field 'boxes[0]': [10, 5, 61, 20] lies outside",
    ),
    "prompt outside": (
        lambda d: d["visual_prompts"][1].update(xy=[7.5, 41.0]),
        "field 'visual_prompts[1]': [7.5, 41.0, 7.5, 41.0] lies outside",
    ),
    "empty conversation": (lambda d: d.update(conversations=[]), "field 'conversations': is empty"),
    "empty turn": (
        lambda d: d["conversations"][1].update(value="  "),
        "field 'conversations[1].value': empty gpt turn",
    ),
    "rle size": (
        lambda d: d["masks"][0].update(rle=rle_of(np.ones((H, W + 1), bool))),
        "field 'masks[0]': rle size [40, 61] differs from the image size [40, 60]",
    ),
    "seg count": (
        lambda d: d.update(masks=d["masks"][:2], boxes=[], labels=[]),
        "field 'masks': 2 mask(s) for 3 [SEG]",
    ),
    "image token": (
        lambda d: d["conversations"][0].update(value="Segment <Region 1>, Region 2."),
        "0 <image> placeholder(s) for 1 image(s)",
    ),
    "target counts": (lambda d: d.update(labels=["a"]), "field 'boxes/masks/labels': one entry per target"),
    "band count": (lambda d: d.update(bands=["red"]), "field 'bands': 1 band names for 3 band(s)"),
    "size mismatch": (
        lambda d: (d.update(size=[40, 61], boxes=[], masks=[], labels=[]), d["conversations"][1].update(value="no")),
        "field 'size': [40, 61] but",
    ),
    "unknown field": (lambda d: d.update(granulairty="pixel"), "unknown field(s) 'granulairty'"),
    "bad modality": (lambda d: d.update(modality="lidar"), "field 'modality': unknown modality 'lidar'"),
    "gpt first": (
        lambda d: d.update(conversations=d["conversations"][::-1]),
        "field 'conversations[0].from': expected 'human'",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_broken_rule_is_one_line_naming_file_line_record_and_field(folder: Path, case: str) -> None:
    change, expected = BROKEN[case]
    broken = copy.deepcopy(valid(folder, "bad"))
    change(broken)
    path = write_lines(folder / "r.jsonl", [valid(folder, "good"), broken])
    with pytest.raises(InstructRecordError) as info:
        read_records(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:2: record 'bad'"), message
    assert expected in message, message


def test_invalid_json_and_repeated_ids_name_the_line(folder: Path) -> None:
    path = folder / "r.jsonl"
    path.write_text(json.dumps(valid(folder)) + "\n{not json\n")
    with pytest.raises(InstructRecordError, match=rf"^{path}:2: not valid JSON"):
        read_records(path)
    write_lines(path, [valid(folder, "same"), valid(folder, "same")])
    with pytest.raises(InstructRecordError, match=r":2: record 'same': field 'id': repeated \(first on line 1\)"):
        read_records(path)


def test_without_file_checks_missing_files_pass_but_geometry_is_still_checked(folder: Path) -> None:
    d = valid(folder)
    d["image"], d["masks"][1]["path"] = "absent.png", "masks/absent.png"
    path = write_lines(folder / "r.jsonl", [d])
    assert read_records(path, check_files=False)[0].images == [str(folder / "absent.png")]
    with pytest.raises(InstructRecordError, match="field 'image': image file not found"):
        read_records(path)
    d["boxes"][0] = [0, 0, 70, 10]
    write_lines(path, [d])
    with pytest.raises(InstructRecordError, match=r"field 'boxes\[0\]'"):
        read_records(path, check_files=False)


def test_write_refuses_repeated_ids(folder: Path) -> None:
    record = InstructRecord.from_dict(valid(folder))
    with pytest.raises(InstructRecordError, match="field 'id': repeated"):
        write_records(folder / "w.jsonl", [record, record])
