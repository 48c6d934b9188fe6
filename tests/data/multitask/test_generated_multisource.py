"""Generated optical / SAR / infrared scenes with visual prompts (EarthGPT-X demo data): records validate,
balance of modalities × prompt kinds × tasks, prompts on their objects, grounding text back to the
object's box (also after the datamodule's resize), SAR speckle against the gamma law, infrared in
kelvin, determinism and the cache key, one-line errors, the datamodule's zero-padded mixed batches and
the YAML forms of ``InstructDataModule.generate``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from PIL import Image
from scipy import stats

from rsvlm.data.coords import parse_grounding
from rsvlm.data.modalities import MODALITY_IDS, db_to_intensity
from rsvlm.data.multitask import InstructRecordError, check_record, decode_mask, generated, read_records
from rsvlm.data.multitask.datamodule import InstructDataModule
from rsvlm.data.multitask.generated import GeneratedInstructData
from rsvlm.data.multitask.generated_modalities import FORMATS, IR_KELVIN, SAR_DB
from rsvlm.data.multitask.generated_multisource import (
    MODALITY_PRESETS,
    PROMPTED_TASKS,
    SOURCE,
    SUPPORTED_TASKS,
    GeneratedMultisourceData,
)
from rsvlm.data.multitask.generated_shapes import COLOURS, Shape, rasterise
from rsvlm.data.raster import read_window
from rsvlm.data.visual_prompts import prompts_from_json

SIZE = 64
COUNTS = {"train": 36, "val": 6, "test": 6}  # 36 train: 12 per modality, 4 per prompt kind, 3 per class
REPO = Path(__file__).resolve().parents[3]


def settings(**change) -> dict:
    return {**{f"n_{k}": v for k, v in COUNTS.items()}, "size": SIZE, "progress": False, **change}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = GeneratedMultisourceData(root=str(tmp_path_factory.mktemp("multisource")), **settings())
    path = data.prepare()
    scenes = {s["id"]: s for s in json.loads((path.parent / "scenes.json").read_text())}
    return {"data": data, "path": path, "records": read_records(path), "scenes": scenes}


def mask_of(record) -> np.ndarray:
    return decode_mask(record.meta["mask"], record.size)


def test_records_validate_and_carry_modality_and_prompt_kind(built: dict) -> None:
    records = built["records"]
    assert len(records) == sum(COUNTS.values()) * len(SUPPORTED_TASKS) and len({r.id for r in records}) == len(records)
    for r in records:
        check_record(r, "generated")
        fmt = FORMATS[r.modality]
        assert r.source == SOURCE and r.size == [SIZE, SIZE] and r.coord_convention == "center"
        assert r.bands == list(fmt.bands) and r.value == fmt.value and r.image.endswith(fmt.suffix)
        assert r.meta["modality"] == r.modality and r.labels == [r.meta["object"]["name"]] == [r.meta["target"]]
        assert (r.meta["prompt_kind"] is None) == (r.task == "grounding") == (not r.visual_prompts)
        assert r.boxes == [r.meta["box"]]
        # The reference mask is the object's shape, rasterised from its stored numbers.
        assert np.array_equal(mask_of(r), rasterise(Shape(**r.meta["object"]["shape"]), (SIZE, SIZE)))
    gcg = [r for r in records if r.task == "gcg"]
    assert all(r.masks == [r.meta["mask"]] and r.conversations[1].text == "Sure, [SEG]." for r in gcg)
    assert all(r.granularity == "pixel" for r in gcg)


def test_modalities_prompt_kinds_tasks_and_classes_are_balanced(built: dict) -> None:
    records = built["records"]
    for split, count in COUNTS.items():
        modalities = Counter(r.modality for r in records if r.split == split and r.task == "grounding")
        assert set(modalities) == set(MODALITY_IDS) and max(modalities.values()) - min(modalities.values()) <= 1
        assert sum(modalities.values()) == count
    train = [r for r in records if r.split == "train"]
    for task in PROMPTED_TASKS:
        cells = Counter((r.modality, r.meta["prompt_kind"]) for r in train if r.task == task)
        assert cells == {(m, k): 4 for m in MODALITY_IDS for k in ("point", "box", "scribble")}, task
    for task in SUPPORTED_TASKS:
        classes = Counter((r.modality, r.labels[0]) for r in train if r.task == task)
        assert set(classes.values()) == {3} and len(classes) == 12, task


def test_every_prompt_lies_on_its_object(built: dict) -> None:
    for r in built["records"]:
        if not r.visual_prompts:
            continue
        (prompt,) = prompts_from_json(r.visual_prompts, r.id)
        mask = mask_of(r)
        assert prompt.kind == r.meta["prompt_kind"]
        if prompt.kind == "box":
            rows, cols = np.nonzero(mask)
            assert list(prompt.box) == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1] == r.meta["box"]
        else:
            cells = np.floor(prompt.vertices).astype(int)
            assert mask[cells[:, 1], cells[:, 0]].all(), r.id
            assert len(prompt.vertices) == (1 if prompt.kind == "point" else 16)


def test_grounding_phrase_is_unique_and_the_answer_parses_back_to_the_box(built: dict) -> None:
    for r in (r for r in built["records"] if r.task == "grounding"):
        obj = r.meta["object"]
        scene = built["scenes"][r.meta["scene_id"]]
        assert [o["expression"] for o in scene["objects"]].count(obj["expression"]) == 1
        assert r.conversations[0].text == f"<image>\nWhere is the {obj['expression']}? Answer with its bounding box."
        (found,) = parse_grounding(r.conversations[1].text, (SIZE, SIZE), pad="center")
        assert found.phrase == obj["name"] and [round(v) for v in found.boxes[0]] == r.boxes[0]
        # The box holds no other object's pixel.
        x0, y0, x1, y1 = map(int, r.boxes[0])
        for k, o in enumerate(scene["objects"]):
            if k != r.meta["object_index"]:
                assert not rasterise(Shape(**o["shape"]), (SIZE, SIZE))[y0:y1, x0:x1].any()


def test_grounding_answered_with_a_mask_keeps_the_question_and_targets_the_object(built: dict, tmp_path: Path) -> None:
    """``grounding_answer="mask"``: the same scenes and questions, "<p>class</p> [SEG]" with the object's
    mask as the target; the other tasks' records are unchanged."""
    data = GeneratedMultisourceData(root=str(tmp_path), **settings(n_train=6, n_val=0, n_test=0))
    masked = GeneratedMultisourceData(
        root=str(tmp_path), **settings(n_train=6, n_val=0, n_test=0, grounding_answer="mask")
    )
    plain, records = read_records(data.prepare()), read_records(masked.prepare())
    assert len(records) == len(plain)
    for before, r in zip(plain, records, strict=True):
        check_record(r, "generated")
        assert r.conversations[0].text == before.conversations[0].text and r.meta == before.meta
        if r.task != "grounding":
            assert r.conversations[1].text == before.conversations[1].text and r.masks == before.masks
            continue
        assert r.conversations[1].text == f"<p>{r.meta['object']['name']}</p> [SEG]"
        assert r.masks == [r.meta["mask"]] and r.boxes == before.boxes
        rows, cols = np.nonzero(mask_of(r))
        assert r.boxes[0] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_sar_speckle_follows_the_gamma_law_of_its_looks() -> None:
    """Over flat water (objects excluded), linear intensity is σ⁰·Gamma(L, 1/L): mean σ⁰, variance σ⁰²/L."""
    for looks in (1.0, 4.0):
        data = GeneratedMultisourceData(root="unused", **settings(modalities=["sar"], sar_looks=looks))
        specs = data.scene_specs(0, 8)
        images = [data.scene(0, i, spec) for i, spec in enumerate(specs)]
        for band in range(2):
            sigma0 = 10 ** (SAR_DB["water"][band] / 10)
            values = []
            for image, layout in images:
                flat = layout.water.copy()
                for obj in layout.objects:
                    flat &= ~obj.mask
                values.append(db_to_intensity(image[band])[flat].astype(np.float64))
            x = np.concatenate(values)
            law = stats.gamma(a=looks, scale=sigma0 / looks)
            assert x.size > 5000
            assert abs(x.mean() - law.mean()) < 5 * law.std() / np.sqrt(x.size), (looks, band)
            assert abs(x.var() / law.var() - 1) < 0.15, (looks, band)
            assert stats.kstest(x, law.cdf).pvalue > 1e-3, (looks, band)


def test_stored_images_per_modality(built: dict) -> None:
    """Optical: 8-bit RGB with the objects in their colours; SAR: two float dB bands with bright objects
    over darker land and water; infrared: one band of plausible kelvin, objects warmer or cooler by class."""
    first = {}
    for r in (r for r in built["records"] if r.task == "grounding"):
        data, valid, *_ = read_window(r.image)
        scene = built["scenes"][r.meta["scene_id"]]
        assert valid.all() and data.shape == (len(r.bands), SIZE, SIZE)
        masks = [rasterise(Shape(**o["shape"]), (SIZE, SIZE)) for o in scene["objects"]]
        background = ~np.any(masks, axis=0)
        if r.modality == "optical":
            for o, m in zip(scene["objects"], masks):
                assert (data[:, m] == np.array(COLOURS[o["colour"]])[:, None]).all()
            assert data[:, background].min() >= 20 and data[:, background].max() <= 200
        elif r.modality == "sar":
            assert data.dtype == np.float32 and np.isfinite(data).all()
            objects = db_to_intensity(data[0][~background]).mean()
            assert objects > 5 * db_to_intensity(data[0][background]).mean()
        else:
            assert data.min() > 250.0 and data.max() < 330.0
            for o, m in zip(scene["objects"], masks):
                inner = m & ~np.roll(m, 1, 0) & ~np.roll(m, -1, 0) & ~np.roll(m, 1, 1) & ~np.roll(m, -1, 1)
                if inner.sum() >= 4:
                    assert abs(data[0][inner].mean() - IR_KELVIN[o["name"]]) < 2.5, o["name"]
        first.setdefault(r.modality, r.image)
    assert Image.open(first["optical"]).mode == "RGB"


def test_same_seed_same_bytes_and_every_setting_keys_the_cache(tmp_path: Path) -> None:
    def build(root: str, seed: int) -> Path:
        return GeneratedMultisourceData(root=str(tmp_path / root), **settings(n_train=6, n_val=0, n_test=3, seed=seed))

    first, again, other = (build(*a).prepare().parent for a in (("a", 3), ("b", 3), ("c", 4)))
    names = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert {n.rsplit(".", 1)[1] for n in names if n.startswith("images/")} == {"png", "tif"}
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert (first / "records.jsonl").read_bytes() != (other / "records.jsonl").read_bytes()
    stamp = (first / "records.jsonl").stat().st_mtime_ns
    assert build("a", 3).prepare() == first / "records.jsonl" and (first / "records.jsonl").stat().st_mtime_ns == stamp
    changes = (
        {},
        {"seed": 1},
        {"size": 96},
        {"n_test": 5},
        {"modalities": ["sar"]},
        {"prompt_kinds": ["point"]},
        {"tasks": ["roc"]},
        {"objects_per_scene": (2, 4)},
        {"sar_looks": 1},
        {"box_decimals": 2},
        {"grounding_answer": "mask"},
    )
    assert len({GeneratedMultisourceData(**settings(**c)).folder() for c in changes}) == len(changes)
    assert (
        GeneratedMultisourceData(**settings(progress=True)).folder() == GeneratedMultisourceData(**settings()).folder()
    )


@pytest.mark.parametrize(
    "change, field",
    [
        ({"modalities": ["rgb"]}, "modalities"),
        ({"prompt_kinds": ["mask"]}, "prompt_kinds"),
        ({"tasks": ["vqa"]}, "tasks"),
        ({"sar_looks": 0.5}, "sar_looks"),
        ({"box_decimals": 0}, "box_decimals"),
        ({"grounding_answer": "polygon"}, "grounding_answer"),
        ({"size": 16}, "size"),
        ({"objects_per_scene": (3, 40)}, "objects_per_scene"),
        ({"n_train": 0, "n_val": 0, "n_test": 0}, "n_train"),
    ],
)
def test_impossible_settings_raise_one_line_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^GeneratedMultisourceData\.{field}: [^\n]*$"):
        GeneratedMultisourceData(**settings(**change))


def test_a_scene_that_cannot_be_placed_raises_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generated, "SHAPE_TRIES", 0)  # GeoMag's placement, shared: every try fails
    data = GeneratedMultisourceData(root=str(tmp_path), **settings(n_train=1, n_val=0, n_test=0))
    with pytest.raises(ValueError, match=r"^GeneratedMultisourceData\.objects_per_scene: could not place [^\n]*$"):
        data.prepare()
    assert not data.is_prepared()


def test_datamodule_batches_mix_modalities_zero_padded(built: dict) -> None:
    data = built["data"]
    dm = InstructDataModule(generate=data, modality_presets=MODALITY_PRESETS, image_size=96, batch_size=6)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.group_sizes() == {(SOURCE, t): COUNTS["train"] for t in SUPPORTED_TASKS}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (6, 3, 96, 96) and batch["band_valid"].shape == (6, 3)
    assert batch["visual_prompts"].kind.shape[0] == 6 and batch["modality"].dtype == torch.long
    # One validation record of each modality and task: bands first, zeros after; boxes from the text.
    val = dm.datasets["val"]
    picked = {}
    for i, item in enumerate(val.items):
        picked.setdefault((item.record.modality, item.record.task), i)
    batch = dm.collate_fn()([val[i] for i in picked.values()])
    for b, (modality, task) in enumerate(picked):
        bands = len(FORMATS[modality].bands)
        assert batch["modality"][b] == MODALITY_IDS[modality]
        assert batch["band_valid"][b].tolist() == [c < bands for c in range(3)]
        assert (batch["image"][b, bands:] == 0).all() and batch["image"][b, :bands].abs().max() < 10
        assert batch["image"][b, :bands].std() > 0.02
        record = val.items[list(picked.values())[b]].record
        if task == "grounding":
            (found,) = parse_grounding(batch["response"][b], (96, 96), pad="center")
            assert np.allclose(found.boxes[0], batch["boxes"][b][0].tolist(), atol=96 / 2000)
            assert torch.equal(batch["boxes"][b][0], torch.tensor(record.boxes[0]) * 1.5)
        else:
            assert batch["visual_prompts"].kind[b, 0] > 0 and batch["visual_prompts"].npoints.shape[0] == len(picked)
        if task == "gcg":
            assert batch["has_mask"][b] and batch["masks"][b].shape == (1, 96, 96)


def test_datamodule_refuses_what_it_cannot_normalise(built: dict, tmp_path: Path) -> None:
    source = [str(built["path"])]
    with pytest.raises(ValueError, match=r"modality_presets\['sar'\]: preset 'optical_dn8' is for 'optical'"):
        InstructDataModule(source, modality_presets={"sar": "optical_dn8"})
    with pytest.raises(ValueError, match=r"modality_presets: each preset normalises its modality; drop mean"):
        InstructDataModule(source, modality_presets=MODALITY_PRESETS, mean=[0, 0, 0])
    dm = InstructDataModule(source, modality_presets={"optical": "optical_dn8"}, image_size=SIZE)
    dm.setup("fit")
    train = dm.datasets["train"]
    sar = next(i for i, item in enumerate(train.items) if item.record.modality == "sar")
    with pytest.raises(InstructRecordError, match=r"field 'modality': 'sar' has no entry in modality_presets"):
        train[sar]
    one_band = InstructDataModule(source, modality_presets={"sar": "sentinel1_db"}, bands=["vv"], image_size=SIZE)
    one_band.setup("fit")
    with pytest.raises(InstructRecordError, match=r"field 'image': 2 band\(s\) in .*, more than the 1"):
        one_band.datasets["train"][sar]


def parse_data(tmp_path: Path, data: dict, *args: str):
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": data}))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_subclass_arguments(InstructDataModule, "data")
    return parser.instantiate_classes(parser.parse_args([f"--config={config}", *args])).data


def test_recipes_give_either_generator_and_keep_it_through_overrides(tmp_path: Path) -> None:
    geomag = yaml.safe_load((REPO / "recipes" / "geomag-demo.yaml").read_text())["data"]
    dm = parse_data(tmp_path, geomag, "--data.init_args.generate.n_train=16")
    assert type(dm.generate) is GeneratedInstructData and (dm.generate.n_train, dm.generate.size) == (16, 64)
    multisource = {
        "class_path": "rsvlm.data.multitask.datamodule.InstructDataModule",
        "init_args": {
            "generate": {
                "class_path": "rsvlm.data.multitask.generated_multisource.GeneratedMultisourceData",
                "init_args": {"n_train": 90, "modalities": ["sar", "infrared"], "sar_looks": 2},
            },
            "modality_presets": MODALITY_PRESETS,
            "image_size": 64,
        },
    }
    dm = parse_data(tmp_path, multisource, "--data.init_args.generate.n_train=16")
    assert type(dm.generate) is GeneratedMultisourceData
    assert (dm.generate.n_train, dm.generate.modalities, dm.generate.sar_looks) == (16, ["sar", "infrared"], 2)
    assert dm.sources == [str(dm.generate.records_path())] and set(dm.modality_presets) == set(MODALITY_IDS)


def test_an_image_memory_gives_the_same_samples_reading_each_file_once(
    built: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cache_images``: every sample equals the one read from disk; each file is decoded once while it
    is remembered; the least recently used file is forgotten first; a caller's edit stays its own."""
    from rsvlm.data.multitask import dataset as dataset_module
    from rsvlm.data.multitask.dataset import PixelCache

    plain = InstructDataModule(generate=built["data"], modality_presets=MODALITY_PRESETS, image_size=SIZE)
    cached = InstructDataModule(
        generate=built["data"], modality_presets=MODALITY_PRESETS, image_size=SIZE, cache_images=100
    )
    for dm in (plain, cached):
        dm.prepare_data()
        dm.setup("fit")
    reads: list[str] = []
    real = dataset_module.read_window
    monkeypatch.setattr(dataset_module, "read_window", lambda path: reads.append(path) or real(path))
    val, remembered = plain.datasets["val"], cached.datasets["val"]
    for _ in range(2):
        for i in range(len(val)):
            a, b = val[i], remembered[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["valid"], b["valid"])
            assert torch.equal(a["masks"], b["masks"])
    images = [item.record.image for item in val.items]
    assert len(reads) == 2 * len(images) + len(set(images))  # plain: every time; cached: once per file

    reads.clear()
    memory = PixelCache(2)
    first, second, third = sorted(set(images))[:3]
    data, _ = memory(first)
    data[:] = -1  # the caller's copy
    assert (memory(first)[0] != -1).any()
    memory(second), memory(first), memory(third)  # second is now the least recently used: forgotten
    memory(first), memory(second)
    assert reads == [first, second, third, second]
    with pytest.raises(ValueError, match=r"^InstructDataModule\.cache_images: [^\n]*$"):
        InstructDataModule(generate=built["data"], cache_images=-1)
