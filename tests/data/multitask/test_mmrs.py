"""MMRS-1M converter on a tiny task file in EarthGPT's form (LLaVA JSON list; boxes normalised after
the README's integer centre padding): text boxes back to exact pixels, phrases, tolerance, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsvlm.data.multitask import read_records, write_records
from rsvlm.data.multitask.converters import ConverterError, convert_mmrs

SIZES = {"optical/a.png": (151, 200), "optical/b.png": (120, 120), "optical/c.png": (200, 151)}  # (W, H)


def readme_box(box: list[int], width: int, height: int) -> str:
    """The EarthGPT README's transformation, written out: xyxy pixels → ``[sx0,sy0,sx1,sy1]``."""
    x0, y0, w, h = box[0], box[1], box[2] - box[0], box[3] - box[1]
    if height > width:
        pad_x0, pad_y0, width = int((height - width) / 2), 0, height
    else:
        pad_x0, pad_y0, height = 0, int((width - height) / 2), width
    x0, y0 = x0 + pad_x0, y0 + pad_y0
    return ",".join(f"{v:.3f}" for v in (x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path.resolve()
    for name, (w, h) in SIZES.items():
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((h, w), dtype=np.uint8)).save(root / name)
    return root


def write_json(path: Path, items: object) -> Path:
    path.write_text(json.dumps(items))
    return path


def grounding_items() -> list[dict]:
    a, c1, c2 = [26, 30, 76, 100], [10, 0, 60, 40], [100, 50, 190, 151]
    return [
        {
            "id": "g0",
            "image": "optical/a.png",
            "conversations": [
                {"from": "human", "value": "Where is the airplane? Answer with its bounding box."},
                {"from": "gpt", "value": f"<p>airplane</p>[{readme_box(a, 151, 200)}]"},
            ],
        },
        {
            "image": "optical/c.png",
            "conversations": [
                {"from": "human", "value": "<image>\nDetect all ships."},
                {
                    "from": "gpt",
                    "value": f"There are <p>2 ships</p>[{readme_box(c1, 200, 151)};{readme_box(c2, 200, 151)}]",
                },
                {"from": "human", "value": "And the pier?"},
                {"from": "gpt", "value": f"<p>pier</p>[{readme_box([0, 30, 200, 60], 200, 151)}]"},
            ],
        },
        {
            "id": "g2",
            "image": "optical/b.png",
            "conversations": [
                {"from": "user", "value": "<image>\nWhere is the tank?"},
                {"from": "assistant", "value": "<p>tank</p>[-0.001,0.000,0.500,0.500]"},
            ],
        },
    ]


def test_text_boxes_come_back_as_exact_pixels(folder: Path) -> None:
    records = convert_mmrs(write_json(folder / "vg.json", grounding_items()), "grounding", modality="sar")
    assert [r.id for r in records] == ["mmrs1m-vg_g0", "mmrs1m-vg_1", "mmrs1m-vg_g2"]
    first, second, third = records
    # |H − W| = 49 is odd: the README's int() offset (24, not 24.5) must be undone exactly.
    assert first.boxes == [[26.0, 30.0, 76.0, 100.0]] and first.labels == ["airplane"]
    assert first.size == [200, 151] and first.images == [str(folder / "optical" / "a.png")]
    assert first.conversations[0].text == "<image>\nWhere is the airplane? Answer with its bounding box."
    assert second.boxes == [[10.0, 0.0, 60.0, 40.0], [100.0, 50.0, 190.0, 151.0], [0.0, 30.0, 200.0, 60.0]]
    assert second.labels == ["2 ships", "2 ships", "pier"]
    assert second.conversations[2].text == "And the pier?"  # later turns keep their text
    assert third.boxes == [[0.0, 0.0, 60.0, 60.0]]  # −0.001 is rounding: clipped to the edge
    assert [t.role for t in third.conversations] == ["human", "gpt"]
    for r in records:
        assert (r.task, r.granularity, r.modality, r.coord_convention) == ("grounding", "region", "sar", "center")
        assert r.source == "mmrs1m-vg" and r.split == "train"


def test_scene_tasks_keep_brackets_as_text(folder: Path) -> None:
    items = [
        {
            "image": "optical/b.png",
            "conversations": [
                {"from": "human", "value": "<image>\nHow many ships? Choose from [1,2,3,4]."},
                {"from": "gpt", "value": "2"},
            ],
        }
    ]
    records = convert_mmrs(write_json(folder / "vqa.json", items), "vqa", source="rsvqa", split="test")
    assert records[0].boxes == [] and records[0].granularity == "region" and records[0].split == "test"
    assert records[0].source == "rsvqa" and records[0].id == "rsvqa_0"


def test_round_trip_through_json_lines(folder: Path) -> None:
    records = convert_mmrs(write_json(folder / "vg.json", grounding_items()), "grounding")
    path = write_records(folder / "vg.jsonl", records)
    assert read_records(path) == records


def test_errors_name_the_file_item_and_field(folder: Path) -> None:
    path = folder / "bad.json"
    with pytest.raises(ConverterError, match=r"bad\.json: expected a JSON list"):
        convert_mmrs(write_json(path, {"image": "x"}), "grounding")
    items = grounding_items()
    items[1]["image"] = ""
    with pytest.raises(ConverterError, match=r"bad\.json: item 1: field 'image' must be a path"):
        convert_mmrs(write_json(path, items), "grounding")
    items[1]["image"] = "optical/none.png"
    with pytest.raises(ConverterError, match=r"item 1: field 'image': image file not found"):
        convert_mmrs(write_json(path, items), "grounding")
    items = grounding_items()
    items[2]["conversations"][1]["value"] = "<p>tank</p>[0.000,0.000,1.200,0.500]"
    with pytest.raises(ConverterError, match=r"item 2: field 'conversations\[1\]': coordinates .* leave the 120×120"):
        convert_mmrs(write_json(path, items), "grounding")
    items = grounding_items()
    items[0]["conversations"] = []
    with pytest.raises(ConverterError, match=r"item 0: field 'conversations' missing or empty"):
        convert_mmrs(write_json(path, items), "grounding")
    with pytest.raises(ValueError, match="task: unknown task 'segment'"):
        convert_mmrs(write_json(path, grounding_items()), "segment")
