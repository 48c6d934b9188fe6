"""DIOR-RSVG converter on a tiny copy of the official layout (VOC XML with descriptions, split files of
object indices): splits, pixel boxes ↔ text, both template styles, round trip and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsvlm.data.multitask import InstructRecordError, read_records, write_records
from rsvlm.data.multitask.converters import ConverterError, convert_dior_rsvg

# (xml stem, (W, H) of the image, write <size>?, [(name, (xmin, ymin, xmax, ymax), description)])
ANNOTATIONS = [
    (
        "00001",
        (80, 60),
        True,
        [
            ("storagetank", (10, 6, 30, 26), "The storage tank on the upper left."),
            ("vehicle", (20, 14, 60, 38), "a vehicle in the middle"),
        ],
    ),
    ("00002", (80, 60), True, [("Expressway-Service-area", (0, 0, 80, 60), "the whole service area")]),
    ("00010", (50, 70), False, [("ship", (5, 5, 45, 65), "the ship")]),
]


def object_xml(name: str, box: tuple[int, ...], description: str) -> str:
    xmin, ymin, xmax, ymax = box
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox><description>{description}</description></object>"
    )


def write_dataset(root: Path, splits: dict[str, str] | None = None) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for stem, (w, h), with_size, objects in reversed(ANNOTATIONS):  # written out of order on purpose
        Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if with_size else ""
        body = "".join(object_xml(*o) for o in objects)
        xml = f"<annotation><filename>{stem}.jpg</filename><source><database>DIOR</database></source>{size}{body}</annotation>"
        (root / "Annotations" / f"{stem}.xml").write_text(xml)
    # Object indices over the sorted files: 00001 → 0, 1; 00002 → 2; 00010 → 3.
    for split, text in (splits or {"train": "0\n3\n", "val": "2\n\n", "test": "1\n"}).items():
        (root / f"{split}.txt").write_text(text)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path.resolve() / "DIOR_RSVG")


def test_split_files_select_objects_by_global_index(dataset: Path) -> None:
    counts = {s: len(convert_dior_rsvg(dataset, s, tasks=["grounding"])) for s in ("train", "val", "test")}
    assert counts == {"train": 2, "val": 1, "test": 1}
    train = convert_dior_rsvg(dataset, "train", tasks=["grounding", "referring_classification", "region_captioning"])
    assert len(train) == 6
    assert [r.meta["object_index"] for r in train] == [0, 0, 0, 3, 3, 3]
    assert {r.split for r in train} == {"train"}
    assert convert_dior_rsvg(dataset, "test", tasks=["grounding"])[0].labels == ["vehicle"]


def test_grounding_text_is_the_box_normalised_on_the_centre_padded_square(dataset: Path) -> None:
    record = convert_dior_rsvg(dataset, "train", tasks=["grounding"])[0]
    assert record.images == [str(dataset / "JPEGImages" / "00001.jpg")]
    assert record.size == [60, 80] and record.boxes == [[10.0, 6.0, 30.0, 26.0]]
    # 80×60 pads 10 rows above: (10, 6+10, 30, 26+10) / 80.
    assert record.conversations[0].text == (
        "<image>\nWhere is the storage tank on the upper left? Answer with its bounding box."
    )
    assert record.conversations[1].text == "<p>storage tank</p>[0.125,0.200,0.375,0.450]"
    assert (record.task, record.granularity, record.coord_convention) == ("grounding", "region", "center")


def test_roc_styles(dataset: Path) -> None:
    earth = convert_dior_rsvg(dataset, "test", tasks=["referring_classification"])[0]
    assert earth.conversations[0].text == "<image>\nWhat is the category of <Region 1>? Answer with one word or phrase."
    assert earth.conversations[1].text == "vehicle"
    assert earth.visual_prompts == [{"type": "box", "box": [20.0, 14.0, 60.0, 38.0], "label": 1}]
    geomag = convert_dior_rsvg(dataset, "test", tasks=["referring_classification"], style="geomag")[0]
    # (20, 14+10, 60, 38+10) / 80, LLaVA-1.5's two decimals.
    assert geomag.conversations[0].text == (
        "<image>\nWhat is the category of the object at [0.25, 0.30, 0.75, 0.60]? Answer with one word or phrase."
    )
    assert geomag.visual_prompts == [] and geomag.boxes == [[20.0, 14.0, 60.0, 38.0]]


def test_size_from_the_image_when_the_xml_has_none_and_labels_made_readable(dataset: Path) -> None:
    record = convert_dior_rsvg(dataset, "train", tasks=["region_captioning"])[1]
    assert record.size == [70, 50]
    assert record.conversations[1].text == "the ship"
    assert record.conversations[0].text == "<image>\nPlease give a brief description of <Region 1>."
    val = convert_dior_rsvg(dataset, "val", tasks=["grounding"])
    assert val[0].labels == ["expressway service area"]
    raw = convert_dior_rsvg(dataset, "val", tasks=["grounding"], readable_labels=False)
    assert raw[0].labels == ["Expressway-Service-area"]


def test_records_round_trip_through_json_lines(dataset: Path, tmp_path: Path) -> None:
    records = convert_dior_rsvg(dataset, "train", tasks=["grounding", "referring_classification"])
    path = write_records(dataset / "roc_train.jsonl", records)
    assert read_records(path) == records
    assert '"image": "JPEGImages/00001.jpg"' in path.read_text()


def test_errors_name_the_file_and_field(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "a", {"train": "0\n9\n"})
    with pytest.raises(ConverterError, match=r"train\.txt: object index 9 past the last of the 4"):
        convert_dior_rsvg(root, "train")
    root = write_dataset(tmp_path / "b", {"train": "0\nx\n"})
    with pytest.raises(ConverterError, match=r"train\.txt:2: expected an object index"):
        convert_dior_rsvg(root, "train")
    root = write_dataset(tmp_path / "c")
    xml = root / "Annotations" / "00002.xml"
    xml.write_text(xml.read_text().replace("<xmin>0</xmin>", "<xmin>zero</xmin>"))
    with pytest.raises(ConverterError, match=r"00002\.xml: object 2: bndbox: field 'xmin': expected a number"):
        convert_dior_rsvg(root, "val")
    xml.write_text(
        xml.read_text().replace("<xmin>zero</xmin>", "<xmin>0</xmin>").replace("<xmax>80</xmax>", "<xmax>81</xmax>")
    )
    with pytest.raises(InstructRecordError, match=r"00002\.xml: object 2: record .*field 'boxes\[0\]'.*outside"):
        convert_dior_rsvg(root, "val")
    xml.write_text(xml.read_text().replace("<description>the whole service area</description>", ""))
    with pytest.raises(ConverterError, match=r"00002\.xml: object 2: field 'description' missing"):
        convert_dior_rsvg(root, "val")
    with pytest.raises(ConverterError, match=r"nope\.txt: DIOR-RSVG split file not found"):
        convert_dior_rsvg(root, "nope")
