"""Scene-classification converter on tiny folder-per-class copies (AID's camel case, RESISC-45's
underscores): one record per image, readable labels, both templates, round trip and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsvlm.data.multitask import read_records, write_records
from rsvlm.data.multitask.converters import CONVERTERS, ConverterError, convert_scene_folders

# class folder → image files (written out of order on purpose; a text file and a hidden folder are ignored)
LAYOUT = {
    "DenseResidential": ["denseresidential_2.jpg", "denseresidential_1.jpg"],
    "Airport": ["airport_1.jpg"],
    "baseball_diamond": ["baseball_diamond_001.png"],
}


def write_scenes(root: Path, layout: dict = LAYOUT) -> Path:
    for folder, files in layout.items():
        (root / folder).mkdir(parents=True)
        for k, name in enumerate(files):
            Image.fromarray(np.full((10 + k, 12, 3), 30, dtype=np.uint8)).save(root / folder / name)
    if "Airport" in layout:
        (root / "Airport" / "readme.txt").write_text("not an image")
    (root / ".cache").mkdir()
    return root


@pytest.fixture
def aid(tmp_path: Path) -> Path:
    return write_scenes(tmp_path.resolve() / "AID")


def test_one_record_per_image_with_readable_labels(aid: Path) -> None:
    records = CONVERTERS["aid"](aid)
    got = [(r.id, r.conversations[1].text, r.meta["file"]) for r in records]
    assert got == [
        ("aid_Airport_airport_1", "airport", "airport_1.jpg"),
        ("aid_DenseResidential_denseresidential_1", "dense residential", "denseresidential_1.jpg"),
        ("aid_DenseResidential_denseresidential_2", "dense residential", "denseresidential_2.jpg"),
        ("aid_baseball_diamond_baseball_diamond_001", "baseball diamond", "baseball_diamond_001.png"),
    ]
    first = records[0]
    assert first.conversations[0].text == "<image>\nClassify the scene. Answer with one word or phrase."
    assert (first.task, first.granularity, first.split, first.source) == (
        "scene_classification",
        "image",
        "test",
        "aid",
    )
    assert first.labels == ["airport"] and first.size == [10, 12] and records[1].size == [11, 12]
    assert [r.labels[0] for r in convert_scene_folders(aid, "aid", readable_labels=False)][:2] == [
        "Airport",
        "DenseResidential",
    ]


def test_geomag_template_lists_the_classes(aid: Path) -> None:
    record = convert_scene_folders(aid, "aid", split="val", style="geomag")[0]
    assert record.conversations[0].text == (
        "<image>\nClassify the image within one of the given classes: airport, dense residential, "
        "baseball diamond. Answer with one word or phrase."
    )
    assert record.split == "val"


def test_round_trip_through_json_lines(aid: Path) -> None:
    records = convert_scene_folders(aid, "aid")
    path = write_records(aid.parent / "aid.jsonl", records)
    assert read_records(path) == records


def test_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ConverterError, match=r"nope: scene-classification folder not found"):
        convert_scene_folders(tmp_path / "nope", "aid")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConverterError, match=r"empty: no class folders"):
        convert_scene_folders(tmp_path / "empty", "aid")
    root = write_scenes(tmp_path / "b", {"Beach": []})
    with pytest.raises(ConverterError, match=r"Beach: class folder without images"):
        convert_scene_folders(root, "aid")
    root = write_scenes(tmp_path / "c", {"Beach": ["beach_1.jpg"]})
    (root / "Beach" / "beach_2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConverterError, match=r"beach_2\.jpg: cannot open raster"):
        convert_scene_folders(root, "aid")
