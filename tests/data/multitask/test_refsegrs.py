"""RefSegRS converter on a tiny copy of the official layout (``images/<id>.tif``, ``masks/<id>.tif``,
``output_phrase_<split>.txt``): counts per split, masks against skimage-drawn shapes with the LGCE
threshold, templates, round trip and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.draw import polygon as draw_polygon

from rsvlm.data.multitask import InstructRecordError, decode_mask, read_records, write_records
from rsvlm.data.multitask.converters import ConverterError, convert_refsegrs

H, W = 32, 48
SHAPES = {
    "0": ([2, 40, 40, 2], [3, 3, 12, 12]),
    "1": ([5, 30, 20], [5, 8, 28]),
    "2": ([30, 46, 46, 30], [20, 20, 31, 31]),
}
PHRASES = {
    "train": "0 road along the lake\n1 the buildings\n\n0 The lake.\n",
    "val": "2 vehicle\n",
    "test": "1 trees near the road\n",
}


def drawn(xs: list[int], ys: list[int]) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    rr, cc = draw_polygon(np.array(ys), np.array(xs), (H, W))
    mask[rr, cc] = True
    return mask


def write_dataset(root: Path, phrases: dict[str, str] = PHRASES) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for image_id, shape in SHAPES.items():
        Image.fromarray(np.full((H, W, 3), 120, dtype=np.uint8)).save(root / "images" / f"{image_id}.tif")
        values = np.where(drawn(*shape), 255, 0).astype(np.uint8)
        values[0, :] = np.where(values[0, :] == 0, 40, values[0, :])  # faint noise at or below 50: background
        Image.fromarray(values).save(root / "masks" / f"{image_id}.tif")
    for split, text in phrases.items():
        (root / f"output_phrase_{split}.txt").write_text(text)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path.resolve() / "RefSegRS")


def test_one_record_per_line_and_counts_per_split(dataset: Path) -> None:
    counts = {s: len(convert_refsegrs(dataset, s)) for s in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 1, "test": 1}
    train = convert_refsegrs(dataset, "train")
    assert [r.id for r in train] == ["refsegrs_train_00001", "refsegrs_train_00002", "refsegrs_train_00004"]
    assert [r.meta["image_id"] for r in train] == ["0", "1", "0"]
    assert train[0].images == [str(dataset / "images" / "0.tif")] and train[0].size == [H, W]
    assert train[0].masks == [{"path": str(dataset / "masks" / "0.tif"), "threshold": 50}]


def test_masks_decode_to_the_drawn_shapes(dataset: Path) -> None:
    for record in convert_refsegrs(dataset, "train") + convert_refsegrs(dataset, "val"):
        expected = drawn(*SHAPES[record.meta["image_id"]])
        assert np.array_equal(decode_mask(record.masks[0], record.size), expected)


def test_templates_of_both_styles(dataset: Path) -> None:
    earth = convert_refsegrs(dataset, "train")
    assert [t.text for t in earth[2].conversations] == ["<image>\nSegment the lake.", "<p>lake</p> [SEG]"]
    geomag = convert_refsegrs(dataset, "train", style="geomag")
    assert [t.text for t in geomag[0].conversations] == [
        "<image>\nCan you segment the road along the lake in this image?",
        "Sure, [SEG].",
    ]
    assert (earth[0].task, earth[0].granularity, earth[0].source) == ("referring_segmentation", "pixel", "refsegrs")


def test_round_trip_through_json_lines(dataset: Path) -> None:
    records = convert_refsegrs(dataset, "train")
    path = write_records(dataset / "train.jsonl", records)
    assert read_records(path) == records
    assert '"path": "masks/0.tif"' in path.read_text()


def test_errors_name_the_file_and_line(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "a", {"train": "0 the lake\n1\n"})
    with pytest.raises(
        ConverterError, match=r"output_phrase_train\.txt:2: expected '<image id> <expression>', got '1'"
    ):
        convert_refsegrs(root, "train")
    root = write_dataset(tmp_path / "b", {"train": "7 the lake\n"})
    with pytest.raises(ConverterError, match=r"output_phrase_train\.txt:1: image file not found: .*7\.tif"):
        convert_refsegrs(root, "train")
    root = write_dataset(tmp_path / "c")
    (root / "masks" / "2.tif").unlink()
    with pytest.raises(
        InstructRecordError, match=r"output_phrase_val\.txt:1: record .*field 'masks\[0\]': mask file not found"
    ):
        convert_refsegrs(root, "val")
    assert len(convert_refsegrs(root, "val", check_files=False)) == 1
    with pytest.raises(ConverterError, match=r"output_phrase_nope\.txt: RefSegRS phrase file not found"):
        convert_refsegrs(root, "nope")
