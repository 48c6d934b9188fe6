"""Generated GeoMag demo scenes: records valid, referring expressions unique with masks equal to the drawn
objects (recomputed from the stored geometry and found again by colour in the PNG), presence answers and
ROC boxes against the scene list, balanced scene classes, determinism, the cache, one-line errors and
InstructDataModule batches."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from rsvlm.data.multitask import DEFAULT_GRANULARITY, check_record, decode_mask, generated, read_records
from rsvlm.data.multitask.datamodule import InstructDataModule
from rsvlm.data.multitask.generated import SOURCE, SUPPORTED_TASKS, GeneratedInstructData
from rsvlm.data.multitask.generated_shapes import COLOURS, SCENE_CLASSES
from rsvlm.data.multitask.templates import llava_box

SIZE = 64
COUNTS = {"train": 70, "val": 15, "test": 15}
EIGHT = np.ones((3, 3), bool)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """100 scenes of 64² with all four tasks, the time their generation took, records and scene list."""
    data = GeneratedInstructData(
        root=str(tmp_path_factory.mktemp("generated")),
        **{f"n_{k}": v for k, v in COUNTS.items()},
        size=SIZE,
        progress=False,
    )
    start = time.perf_counter()
    path = data.prepare()
    seconds = time.perf_counter() - start
    scenes = {s["id"]: s for s in json.loads((path.parent / "scenes.json").read_text())}
    return {"data": data, "path": path, "seconds": seconds, "records": read_records(path), "scenes": scenes}


def of_task(built: dict, task: str) -> list:
    return [r for r in built["records"] if r.task == task]


def pixels(image: str) -> np.ndarray:
    return np.asarray(Image.open(image).convert("RGB"))


def shape_pixels(shape: dict, size: int = SIZE) -> np.ndarray:
    """The shape's pixels from its stored numbers, in the shape's own frame (rotation matrix form)."""
    centres = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="xy"), -1)
    t = math.radians(shape["angle"])
    rotation = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    u, v = np.moveaxis((centres - [shape["cx"], shape["cy"]]) @ rotation, -1, 0)
    half_l, half_w = shape["length"] / 2, shape["width"] / 2
    if shape["kind"] in ("ellipse", "disc"):
        return (u / half_l) ** 2 + (v / half_w) ** 2 <= 1
    body = (abs(u) <= half_l) & (abs(v) <= half_w)
    wings = (abs(u) <= half_w) & (abs(v) <= shape["span"] / 2) if shape["kind"] == "cross" else False
    return body | wings


def bbox(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max()) + 1, float(rows.max()) + 1]


def test_generation_is_fast_and_records_validate(built: dict) -> None:
    assert built["seconds"] < 5.0, f"100 scenes took {built['seconds']:.1f} s"
    records = built["records"]
    assert len(records) == sum(COUNTS.values()) * len(SUPPORTED_TASKS)
    assert len({r.id for r in records}) == len(records)
    for r in records:
        check_record(r, "generated")
        assert r.granularity == DEFAULT_GRANULARITY[r.task] and r.source == SOURCE and r.size == [SIZE, SIZE]
        assert Path(r.image).is_file() and r.meta["scene_id"] in built["scenes"]
    assert Counter(r.split for r in records) == {k: v * len(SUPPORTED_TASKS) for k, v in COUNTS.items()}


def test_referring_expressions_are_unique_and_masks_are_the_drawn_objects(built: dict) -> None:
    for r in of_task(built, "referring_segmentation"):
        scene = built["scenes"][r.meta["scene_id"]]
        expression = r.meta["expression"]
        assert [o["expression"] for o in scene["objects"]].count(expression) == 1
        triples = [(o["name"], o["colour"], o["cell"]) for o in scene["objects"]]
        assert len(set(triples)) == len(triples)
        assert r.conversations[0].text == f"<image>\nCan you segment the {expression} in this image?"
        assert r.conversations[1].text == "Sure, [SEG]."
        obj = r.meta["object"]
        assert expression == f"{obj['colour']} {obj['name']} {obj['cell']}" and r.labels == [obj["name"]]
        mask = decode_mask(r.masks[0], r.size)
        assert np.array_equal(mask, shape_pixels(obj["shape"]))
        assert ndimage.label(mask, structure=EIGHT)[1] == 1
        # Found again in the PNG: the pixels of the object's colour touching the mask are exactly the mask.
        image = pixels(r.image)
        coloured = (image == COLOURS[obj["colour"]]).all(-1)
        assert coloured[mask].all()
        parts, _ = ndimage.label(coloured, structure=EIGHT)
        assert np.array_equal(np.isin(parts, np.unique(parts[mask])), mask)
        assert r.boxes == [bbox(mask)]


def test_presence_answers_match_the_objects(built: dict) -> None:
    answers = Counter()
    for r in of_task(built, "vqa"):
        asked = r.meta["asked"]
        present = {o["name"] for o in built["scenes"][r.meta["scene_id"]]["objects"]}
        article = "an" if asked[0] in "aeiou" else "a"
        assert r.conversations[0].text.startswith(f"<image>\nIs there {article} {asked} in the image?")
        assert r.conversations[1].text == ("yes" if asked in present else "no")
        assert r.qtype == "presence"
        answers[r.conversations[1].text] += 1
    assert min(answers["yes"], answers["no"]) > 0.3 * sum(answers.values())


def test_roc_boxes_hold_exactly_the_named_object(built: dict) -> None:
    for r in of_task(built, "referring_classification"):
        scene = built["scenes"][r.meta["scene_id"]]
        index = r.meta["object_index"]
        target = shape_pixels(scene["objects"][index]["shape"])
        others = np.zeros_like(target)
        for k, o in enumerate(scene["objects"]):
            if k != index:
                others |= shape_pixels(o["shape"])
        (box,) = r.boxes
        assert box == bbox(target)
        x0, y0, x1, y1 = map(int, box)
        assert not others[y0:y1, x0:x1].any()
        assert r.conversations[0].text == (
            f"<image>\nWhat is the category of the object at {llava_box(box, (SIZE, SIZE))}? "
            "Answer with one word or phrase."
        )
        assert r.conversations[1].text == scene["objects"][index]["name"] == r.labels[0]


def test_scene_classes_are_balanced_in_every_split(built: dict) -> None:
    for split in COUNTS:
        records = [r for r in of_task(built, "scene_classification") if r.split == split]
        counts = Counter(r.conversations[1].text for r in records)
        assert set(counts) == set(SCENE_CLASSES)
        assert max(counts.values()) - min(counts.values()) <= 1
        for r in records:
            assert ", ".join(SCENE_CLASSES) in r.conversations[0].text and r.labels == [r.meta["scene_class"]]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    def build(root: str, seed: int) -> Path:
        settings = dict(n_train=4, n_val=2, n_test=2, size=SIZE, seed=seed, progress=False)
        return GeneratedInstructData(root=str(tmp_path / root), **settings).prepare().parent

    first, again, other = build("a", 3), build("b", 3), build("c", 4)
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert "records.jsonl" in names and sum(n.endswith(".png") for n in names) == 8
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert (first / "records.jsonl").read_bytes() != (other / "records.jsonl").read_bytes()
    assert (first / "images/train_00000.png").read_bytes() != (other / "images/train_00000.png").read_bytes()


def test_cache_reuses_the_build_and_keys_every_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSVLM_CACHE", str(tmp_path / "cache"))
    data = GeneratedInstructData(n_train=2, n_val=1, n_test=1, size=SIZE, progress=False)
    assert data.folder().parent == tmp_path / "cache" / "generated-geomag" and not data.is_prepared()
    path = data.prepare()
    assert data.is_prepared() and path == data.records_path()
    stamp = path.stat().st_mtime_ns
    assert data.prepare() == path and path.stat().st_mtime_ns == stamp
    folders = {
        GeneratedInstructData(**{"n_train": 2, "n_val": 1, "n_test": 1, "size": SIZE, **change}).folder()
        for change in ({}, {"seed": 1}, {"size": 96}, {"tasks": ["vqa"]}, {"objects_per_scene": (2, 4)})
    }
    assert len(folders) == 5
    assert GeneratedInstructData(progress=False).folder() == GeneratedInstructData(progress=True).folder()


def test_tasks_subset_and_aliases(tmp_path: Path) -> None:
    data = GeneratedInstructData(
        root=str(tmp_path), n_train=3, n_val=0, n_test=0, size=SIZE, tasks=["refseg", "scene"], progress=False
    )
    assert data.tasks == ["scene_classification", "referring_segmentation"]
    records = read_records(data.prepare())
    assert Counter(r.task for r in records) == {"scene_classification": 3, "referring_segmentation": 3}


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"objects_per_scene": (40, 40), "size": 32}, "objects_per_scene"),
        ({"objects_per_scene": (3, 2)}, "objects_per_scene"),
        ({"objects_per_scene": (0, 2)}, "objects_per_scene"),
        ({"size": 16}, "size"),
        ({"tasks": ["captioning"]}, "tasks"),
        ({"tasks": []}, "tasks"),
        ({"n_val": -1}, "n_val"),
        ({"n_train": 0, "n_val": 0, "n_test": 0}, "n_train"),
    ],
)
def test_impossible_settings_raise_one_line_naming_the_field(settings: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^GeneratedInstructData\.{field}: [^\n]*$"):
        GeneratedInstructData(**settings)


def test_datamodule_reads_the_build(built: dict) -> None:
    dm = InstructDataModule(
        sources=[str(built["path"])], image_size=SIZE, batch_size=8, seg_text="[SEG0][SEG1]", check_files=True
    )
    dm.setup("fit")
    assert dm.group_sizes() == {(SOURCE, task): COUNTS["train"] for task in SUPPORTED_TASKS}
    assert {k: len(v) for k, v in dm.datasets.items()} == {k: v * len(SUPPORTED_TASKS) for k, v in COUNTS.items()}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, SIZE, SIZE)
    assert all(g == DEFAULT_GRANULARITY[t] for t, g in zip(batch["task"], batch["granularity"]))
    assert batch["has_mask"].tolist() == [t == "referring_segmentation" for t in batch["task"]]
    # One validation sample of each task: granularities image, region, region, pixel; mask and text as written.
    val = dm.datasets["val"]
    first = {t: next(i for i, item in enumerate(val.items) if item.record.task == t) for t in SUPPORTED_TASKS}
    samples = [val[i] for i in first.values()]
    batch = dm.collate_fn()(samples)
    assert batch["task"] == list(SUPPORTED_TASKS)
    assert batch["granularity"] == ["image", "region", "region", "pixel"]
    record = val.items[first["referring_segmentation"]].record
    assert np.array_equal(batch["masks"][3][0].numpy() > 0.5, decode_mask(record.masks[0], record.size))
    assert batch["response"][3] == "Sure, [SEG0][SEG1]." and batch["response"][0] == record.meta["scene_class"]
    assert [tuple(b.shape) for b in batch["boxes"]] == [(0, 4), (0, 4), (1, 4), (1, 4)]


def test_a_scene_that_cannot_be_placed_raises_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generated, "SHAPE_TRIES", 0)  # every placement fails, as on a scene too full to finish
    data = GeneratedInstructData(root=str(tmp_path), n_train=1, n_val=0, n_test=0, size=SIZE, progress=False)
    with pytest.raises(ValueError, match=r"^GeneratedInstructData\.objects_per_scene: could not place [^\n]*$"):
        data.prepare()
    assert not data.is_prepared()
