"""GeoPixelD converter on a tiny copy of the official layout (``<split>/<patch>.{json,png}`` with
``gcg_description`` and per-[SEG] ``polygons`` of [x, y] points, or per-[SEG] COCO RLE ``segmentation``;
an optional ``GeoPixelD.json`` conversation list): masks in [SEG] order against shapes drawn with numpy
slicing, phrases, count checks, round trip and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import coco_runs
from PIL import Image

from rsvlm.data.multitask import decode_mask, read_records, write_records
from rsvlm.data.multitask.converters import ConverterError, convert_geopixeld
from rsvlm.data.multitask.converters.geopixeld import GCG_QUESTION

H, W = 40, 48
DESCRIPTION = (
    "The image shows a small harbour. The <p> ship-1 </p> [SEG] is moored near the <p> harbor </p> [SEG] , "
    "and the <p>  ship-2 </p> [SEG] sails away."
)
# One entry per [SEG]: polygons of [x, y] points (rectilinear, so GeoPixel's cv2 fill is known exactly).
POLYGONS = [
    [[[3, 4], [12, 4], [12, 9], [3, 9]]],
    [[[20, 2], [30, 2], [30, 6], [20, 6]], [[25.7, 20.2], [33.9, 20.2], [33.9, 28.8], [25.7, 28.8]]],
    [[[2, 20], [10, 20], [10, 23], [5, 23], [5, 35], [2, 35]]],
]


def expected_masks() -> list[np.ndarray]:
    """The fills above drawn by numpy slicing: boundary pixels included, float points truncated."""
    masks = [np.zeros((H, W), dtype=bool) for _ in range(3)]
    masks[0][4:10, 3:13] = True
    masks[1][2:7, 20:31] = True
    masks[1][20:29, 25:34] = True
    masks[2][20:24, 2:11] = True
    masks[2][20:36, 2:6] = True
    return masks


def write_geopixeld(root: Path, patches: dict | None = None) -> Path:
    """``{split: {patch: annotation}}`` written as ``<split>/<patch>.json`` beside an 8-bit ``<patch>.png``."""
    if patches is None:
        rle = [{"size": [H, W], "counts": coco_runs(m)} for m in expected_masks()[:2]]
        patches = {
            "train": {
                "P0001_0_800_0_800": {"polygons": POLYGONS, "gcg_description": DESCRIPTION},
                "P0002_0_800_0_800": {
                    "segmentation": rle,
                    "gcg_description": "A <p> ship </p> [SEG] near a <p>pier</p> [SEG].",
                },
            },
            "test": {"P0003_0_800_0_800": {"polygons": POLYGONS[:1], "gcg_description": "One <p> ship </p> [SEG]."}},
        }
    for split, items in patches.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for n, (patch, annotation) in enumerate(items.items()):
            Image.fromarray(np.full((H, W, 3), 70, dtype=np.uint8)).save(root / split / f"{patch}.png")
            body = {"id": n, "img": f"data/GeoPixelD/{split}/{patch}.png", **annotation}
            (root / split / f"{patch}.json").write_text(json.dumps(body))
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_geopixeld(tmp_path.resolve() / "GeoPixelD")


def test_masks_follow_the_seg_order_and_match_the_drawn_shapes(dataset: Path) -> None:
    records = convert_geopixeld(dataset, "train")
    assert [r.id for r in records] == ["geopixeld_train_P0001_0_800_0_800", "geopixeld_train_P0002_0_800_0_800"]
    first, second = records
    assert first.labels == ["ship-1", "harbor", "ship-2"]
    for got, want in zip(first.masks, expected_masks()):
        assert np.array_equal(decode_mask(got, first.size), want)
    for got, want in zip(second.masks, expected_masks()[:2]):  # COCO RLE given: decoded unchanged
        assert np.array_equal(decode_mask(got, second.size), want)
    assert second.labels == ["ship", "pier"]
    assert [t.text for t in first.conversations] == [f"<image>\n{GCG_QUESTION}", DESCRIPTION]
    assert (first.task, first.granularity, first.size, first.split) == ("gcg", "pixel", [H, W], "train")
    assert first.images == [str(dataset / "train" / "P0001_0_800_0_800.png")]
    assert [r.id for r in convert_geopixeld(dataset, "test")] == ["geopixeld_test_P0003_0_800_0_800"]


def test_conversation_list_mode(dataset: Path) -> None:
    items = [
        {
            "id": 7,
            "conversations": [
                {"from": "human", "value": "Describe with masks."},
                {"from": "bot", "value": DESCRIPTION},
            ],
            "image": "data/GeoPixelD/train/P0001_0_800_0_800.png",
            "polygons": "data/GeoPixelD/train/P0001_0_800_0_800.json",
        },
        {"id": 8, "conversations": [], "image": "data/GeoPixelD/test/P0003_0_800_0_800.png", "polygons": "x.json"},
    ]
    (dataset / "GeoPixelD.json").write_text(json.dumps(items))
    (record,) = convert_geopixeld(dataset, "train", conversations="GeoPixelD.json")
    assert record.id == "geopixeld_train_7"
    assert [(t.role, t.text) for t in record.conversations] == [
        ("human", "<image>\nDescribe with masks."),
        ("gpt", DESCRIPTION),
    ]
    assert np.array_equal(decode_mask(record.masks[2], record.size), expected_masks()[2])
    with pytest.raises(ConverterError, match=r"GeoPixelD\.json: item 1: field 'conversations' missing or empty"):
        convert_geopixeld(dataset, "test", conversations="GeoPixelD.json")


def test_round_trip_through_json_lines(dataset: Path) -> None:
    records = convert_geopixeld(dataset, "train")
    path = write_records(dataset / "train.jsonl", records)
    assert read_records(path) == records


def test_seg_counts_must_match_phrases_and_masks(tmp_path: Path) -> None:
    three = {"polygons": POLYGONS, "gcg_description": DESCRIPTION}
    root = write_geopixeld(tmp_path / "a", {"train": {"p": {**three, "polygons": POLYGONS[:2]}}})
    with pytest.raises(ConverterError, match=r"p\.json: field 'gcg_description': 2 mask\(s\) for 3 \[SEG\] token"):
        convert_geopixeld(root, "train")
    root = write_geopixeld(tmp_path / "b", {"train": {"p": {**three, "gcg_description": DESCRIPTION + " [SEG]"}}})
    with pytest.raises(ConverterError, match=r"4 \[SEG\] token\(s\) but 3 '<p> phrase </p> \[SEG\]' group"):
        convert_geopixeld(root, "train")
    root = write_geopixeld(tmp_path / "c", {"train": {"p": {**three, "polygons": [[[[1, 2, 3]]], [], []]}}})
    with pytest.raises(ConverterError, match=r"p\.json: field 'polygons\[0\]'\[0\]: a polygon is a list of \[x, y\]"):
        convert_geopixeld(root, "train")
    root = write_geopixeld(tmp_path / "d", {"train": {"p": {"gcg_description": "no masks"}}})
    with pytest.raises(ConverterError, match=r"p\.json: field 'polygons' \(or 'segmentation'\) missing"):
        convert_geopixeld(root, "train")
    with pytest.raises(ConverterError, match=r"val: GeoPixelD split folder not found"):
        convert_geopixeld(root, "val")
