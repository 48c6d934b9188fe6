"""RRSIS-D converter on a tiny refer-style copy (``refs(unc).p`` + COCO ``instances.json`` with polygon,
RLE and multi-part masks): the pickle refused unless trusted, masks against skimage-drawn shapes,
boxes, templates, counts per split, round trip and errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import coco_runs
from PIL import Image
from pycocotools import mask as coco_mask
from skimage.draw import polygon as draw_polygon

from rsvlm.data.multitask import decode_mask, read_records, write_records
from rsvlm.data.multitask.converters import ConverterError, convert_rrsisd

H, W = 40, 60
POLYGON = ([5, 30, 40, 10], [4, 6, 30, 25])  # xs, ys


def drawn(xs: list[int], ys: list[int]) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    rr, cc = draw_polygon(np.array(ys), np.array(xs), (H, W))
    mask[rr, cc] = True
    return mask


RECT = drawn([20, 50, 50, 20], [10, 10, 35, 35])
PART_A, PART_B = drawn([2, 20, 20, 2], [2, 2, 12, 12]), drawn([15, 40, 40, 15], [8, 8, 30, 30])


def sentence(sent_id: int, text: str, key: str = "raw") -> dict:
    return {key: text, "sent_id": sent_id, "tokens": text.split()}


REFS = [
    {"ref_id": 0, "ann_id": 10, "image_id": 1, "category_id": 1, "split": "train", "file_name": "00001_0.jpg",
     "sentences": [sentence(100, "the gray vehicle on the left"), sentence(101, "A car.")], "sent_ids": [100, 101]},
    {"ref_id": 1, "ann_id": 11, "image_id": 2, "category_id": 2, "split": "val", "file_name": "00002_1.jpg",
     "sentences": [sentence(102, "the storage tank")], "sent_ids": [102]},
    {"ref_id": 2, "ann_id": 12, "image_id": 2, "category_id": 2, "split": "test", "file_name": "00002_2.jpg",
     "sentences": [sentence(103, "two tanks")], "sent_ids": [103]},
    {"ref_id": 3, "ann_id": 11, "image_id": 2, "category_id": 2, "split": "train", "file_name": "00002_3.jpg",
     "sentences": [sentence(104, "the round tank", key="sent")], "sent_ids": [104]},
]  # fmt: skip


def instances() -> dict:
    rle = coco_mask.encode(np.asfortranarray(RECT.astype(np.uint8)))
    poly = [float(v) for xy in zip(*POLYGON) for v in xy]
    return {
        "images": [{"id": i, "file_name": f"0000{i}.jpg", "height": H, "width": W} for i in (1, 2)],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [poly], "bbox": [5, 4, 35, 26], "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [20, 10, 30, 25], "iscrowd": 0,
             "segmentation": [{"size": [H, W], "counts": rle["counts"].decode()}]},
            {"id": 12, "image_id": 2, "category_id": 2, "bbox": [2, 2, 38, 28], "iscrowd": 0,
             "segmentation": [{"size": [H, W], "counts": coco_runs(PART_A)}, {"size": [H, W], "counts": coco_runs(PART_B)}]},
        ],
        "categories": [{"id": 1, "name": "vehicle"}, {"id": 2, "name": "storage tank"}],
    }  # fmt: skip


def write_dataset(root: Path, refs: object = REFS, inst: dict | None = None) -> Path:
    (root / "rrsisd").mkdir(parents=True)
    (root / "images" / "rrsisd" / "JPEGImages").mkdir(parents=True)
    for i in (1, 2):
        Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(
            root / "images" / "rrsisd" / "JPEGImages" / f"0000{i}.jpg"
        )
    (root / "rrsisd" / "refs(unc).p").write_bytes(pickle.dumps(refs))
    (root / "rrsisd" / "instances.json").write_text(json.dumps(inst or instances()))
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path.resolve() / "data")


class Opener:
    """Unpickling this creates a file: proof that a refused pickle was never loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_the_pickle_is_not_read_unless_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    root = write_dataset(tmp_path / "data", refs=[Opener(marker)])
    with pytest.raises(ConverterError) as info:
        convert_rrsisd(root)
    message = str(info.value)
    assert "\n" not in message and "refs(unc).p" in message
    assert "runs any code" in message and "trust_pickle=True" in message
    assert not marker.exists()


def test_counts_per_split(dataset: Path) -> None:
    counts = {s: len(convert_rrsisd(dataset, s, trust_pickle=True)) for s in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 1, "test": 1}
    everything = convert_rrsisd(dataset, None, trust_pickle=True)
    assert [r.id for r in everything] == [
        "rrsisd_0_100",
        "rrsisd_0_101",
        "rrsisd_1_102",
        "rrsisd_2_103",
        "rrsisd_3_104",
    ]
    assert [r.split for r in everything] == ["train", "train", "val", "test", "train"]


def test_masks_decode_to_the_drawn_shapes_and_boxes_are_xyxy(dataset: Path) -> None:
    by_ref = {r.meta["ref_id"]: r for r in convert_rrsisd(dataset, None, trust_pickle=True)}
    poly = decode_mask(by_ref[0].masks[0], by_ref[0].size)
    # COCO and skimage rasterise polygon edges differently: a boundary difference only.
    assert (poly & drawn(*POLYGON)).sum() / (poly | drawn(*POLYGON)).sum() > 0.9
    assert np.array_equal(decode_mask(by_ref[1].masks[0], (H, W)), RECT)
    assert np.array_equal(decode_mask(by_ref[2].masks[0], (H, W)), PART_A | PART_B)
    assert by_ref[0].boxes == [[5.0, 4.0, 40.0, 30.0]] and by_ref[1].boxes == [[20.0, 10.0, 50.0, 35.0]]
    assert by_ref[0].labels == ["vehicle"] and by_ref[2].labels == ["storage tank"]
    assert by_ref[0].images == [str(dataset / "images" / "rrsisd" / "JPEGImages" / "00001.jpg")]
    assert by_ref[0].size == [H, W] and set(by_ref[0].masks[0]) == {"rle"}


def test_templates_of_both_styles(dataset: Path) -> None:
    first, second = convert_rrsisd(dataset, "train", trust_pickle=True)[:2]
    assert [t.text for t in first.conversations] == [
        "<image>\nSegment the gray vehicle on the left.",
        "<p>gray vehicle on the left</p> [SEG]",
    ]
    assert second.conversations[1].text == "<p>car</p> [SEG]"
    geomag = convert_rrsisd(dataset, "train", trust_pickle=True, style="geomag")
    assert [t.text for t in geomag[0].conversations] == [
        "<image>\nCan you segment the gray vehicle on the left in this image?",
        "Sure, [SEG].",
    ]
    assert geomag[2].conversations[0].text == "<image>\nCan you segment the round tank in this image?"
    assert (first.task, first.granularity) == ("referring_segmentation", "pixel")


def test_round_trip_through_json_lines(dataset: Path) -> None:
    records = convert_rrsisd(dataset, None, trust_pickle=True)
    assert read_records(write_records(dataset / "all.jsonl", records)) == records


def test_errors_name_the_file_and_field(tmp_path: Path) -> None:
    refs = [dict(REFS[0], ann_id=99)]
    root = write_dataset(tmp_path / "a", refs=refs)
    with pytest.raises(
        ConverterError, match=r"refs\(unc\)\.p: ref 0: ann_id 99 or image_id 1 not in .*instances\.json"
    ):
        convert_rrsisd(root, trust_pickle=True)
    inst = instances()
    inst["annotations"][0]["segmentation"] = [[1, 2, 3]]
    root = write_dataset(tmp_path / "b", inst=inst)
    with pytest.raises(ConverterError, match=r"instances\.json: annotation 10: field 'segmentation'"):
        convert_rrsisd(root, trust_pickle=True)
    inst = instances()
    inst["annotations"][1]["segmentation"][0]["size"] = [H, W + 1]
    root = write_dataset(tmp_path / "c", inst=inst)
    with pytest.raises(ConverterError, match=r"annotation 11: field 'segmentation': rle size \[40, 61\] differs"):
        convert_rrsisd(root, "val", trust_pickle=True)
    root = write_dataset(tmp_path / "d", refs=[{k: v for k, v in REFS[0].items() if k != "sentences"}])
    with pytest.raises(ConverterError, match=r"ref 0: field 'sentences' missing"):
        convert_rrsisd(root, trust_pickle=True)
    root = write_dataset(tmp_path / "e", refs={"not": "a list"})
    with pytest.raises(ConverterError, match=r"expected a list of refs"):
        convert_rrsisd(root, trust_pickle=True)
