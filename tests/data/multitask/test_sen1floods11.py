"""Sen1Floods11 S1 chip → point-prompted water / land referring classification: tiles keep the chip's
georeferencing, prompts sit on valid pixels of their answer's class, the left half trains and the right
half tests, answers balance per split; on a tiny synthetic chip written here and on the shipped chip in
../shared/data (skipped when absent). Also: determinism, the overwrite rules, the cached preparer and its
one-line errors, and the smoke recipe's data section."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from conftest import SHARED_DATA
from jsonargparse import ArgumentParser
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rsvlm.data.multitask import InstructRecord, read_records
from rsvlm.data.multitask.converters import CONVERTERS, ConverterError
from rsvlm.data.multitask.converters.sen1floods11 import ANSWERS, MARKER, convert_sen1floods11, plan_tiles
from rsvlm.data.multitask.converters.sen1floods11_data import Sen1Floods11Data
from rsvlm.data.multitask.datamodule import InstructDataModule
from rsvlm.data.visual_prompts import prompts_from_json

REPO = Path(__file__).resolve().parents[3]
S1F = SHARED_DATA / "sen1floods11-spain"
CHIP = "Spain_7370579"
SYN_CHIP = "Synthetic_0001"
SYN_H, SYN_W, SYN_TILE = 48, 64, 16  # halves of 2 × 3 tiles: 4 train, 2 val, 6 test


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48 × 64 chip pair on a lat/lon grid: water in a diagonal band, a block of no data, one NaN."""
    root = tmp_path_factory.mktemp("s1f-synthetic")
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:SYN_H, :SYN_W]
    label = ((rows + cols) % 20 < 7).astype(np.int16)
    label[5:12, 20:40] = -1  # crosses the chip's middle
    s1 = np.stack([np.where(label == 1, -18.0, -8.0), np.where(label == 1, -26.0, -15.0)]).astype(np.float32)
    s1 += rng.normal(0, 1, s1.shape).astype(np.float32)
    s1[:, 30, 50] = np.nan  # a valid label under a missing backscatter value
    transform = from_origin(-0.78, 38.13, 9e-5, 9e-5)
    common = dict(driver="GTiff", height=SYN_H, width=SYN_W, crs="EPSG:4326", transform=transform)
    with rasterio.open(root / f"{SYN_CHIP}_S1Hand.tif", "w", count=2, dtype="float32", nodata=np.nan, **common) as dst:
        dst.write(s1)
    with rasterio.open(root / f"{SYN_CHIP}_LabelHand.tif", "w", count=1, dtype="int16", **common) as dst:
        dst.write(label[None])
    return root


def check_output(records: list[InstructRecord], root: Path, out: Path, chip: str, tile: int) -> None:
    """Every property the converter promises, checked against the chip itself."""
    with rasterio.open(root / f"{chip}_S1Hand.tif") as src:
        s1, crs, transform, width = src.read(), src.crs, src.transform, src.width
    with rasterio.open(root / f"{chip}_LabelHand.tif") as src:
        label, label_transform = src.read(1), src.transform
    middle_x = transform.c + transform.a * (width // 2)  # the x of the chip's middle column edge
    assert read_records(out / "records.jsonl") == records
    tiles: dict[str, tuple[str, tuple[int, int]]] = {}
    for record in records:
        assert (record.task, record.modality, record.bands, record.value) == (
            "referring_classification",
            "sar",
            ["vv", "vh"],
            "db",
        )
        assert record.conversations[0].text.endswith(
            "What is the category of <Region 1>? Answer with one word or phrase."
        )
        answer = record.conversations[1].text
        assert record.labels == [answer] and answer in ANSWERS.values()
        row_off, col_off, h, w = record.meta["window"]
        assert (h, w) == (tile, tile) and record.size == [tile, tile]
        tiles.setdefault(record.image, (record.split, (row_off, col_off)))
        assert tiles[record.image] == (record.split, (row_off, col_off))  # one split and window per tile
        [prompt] = prompts_from_json(record.visual_prompts, record.id)
        x, y = prompt.vertices[0]
        col, row = int(np.floor(x)), int(np.floor(y))
        assert (x, y) == (col + 0.5, row + 0.5) and 0 <= col < tile and 0 <= row < tile
        chip_row, chip_col = row_off + row, col_off + col
        assert record.meta["pixel"] == [chip_row, chip_col]
        value = int(label[chip_row, chip_col])
        assert value >= 0 and np.isfinite(s1[:, chip_row, chip_col]).all()  # never on no data
        assert ANSWERS[value] == answer == ANSWERS[record.meta["label"]]
        with rasterio.open(out / "labels" / Path(record.image).name) as src:
            assert int(src.read(1)[row, col]) == value
            assert src.transform.almost_equals(window_transform(Window(col_off, row_off, tile, tile), label_transform))
    for image, (split, (row_off, col_off)) in tiles.items():
        with rasterio.open(image) as src:
            expected = window_transform(Window(col_off, row_off, tile, tile), transform)
            assert src.crs == crs and src.transform.almost_equals(expected)
            assert src.descriptions == ("VV", "VH")
            np.testing.assert_array_equal(src.read(), s1[:, row_off : row_off + tile, col_off : col_off + tile])
            left, right = src.bounds.left, src.bounds.right
        if split == "test":
            assert left >= middle_x - 1e-9
        else:
            assert right <= middle_x + 1e-9
    val_rows = {w[0] for s, w in tiles.values() if s == "val"}
    train_rows = {w[0] for s, w in tiles.values() if s == "train"}
    assert not val_rows or min(val_rows) > max(train_rows)  # val: the bottom rows of the left half
    counts = Counter((r.split, r.conversations[1].text) for r in records)
    for split in ("train", "val", "test"):
        assert abs(counts[split, "water"] - counts[split, "land"]) <= 1, counts
        assert counts[split, "water"] > 0


def test_synthetic_chip_tiles_prompts_splits_and_balance(synthetic: Path, tmp_path: Path) -> None:
    records = CONVERTERS["sen1floods11"](
        synthetic, tmp_path / "out", tile=SYN_TILE, prompts_per_tile=5, chip=SYN_CHIP, seed=3
    )
    check_output(records, synthetic, tmp_path / "out", SYN_CHIP, SYN_TILE)
    splits = Counter(r.split for r in records)
    assert splits == {"train": 4 * 5, "val": 2 * 5, "test": 6 * 5}
    summary = json.loads((tmp_path / "out" / MARKER).read_text())
    assert summary["records"]["test"] == {"water": 15, "land": 15}
    assert len(json.loads((tmp_path / "out" / "tiles.json").read_text())) == 12
    again = convert_sen1floods11(
        synthetic, tmp_path / "again", tile=SYN_TILE, prompts_per_tile=5, chip=SYN_CHIP, seed=3
    )
    prompts = [r.visual_prompts for r in records]
    assert [r.visual_prompts for r in again] == prompts  # seeded
    other = convert_sen1floods11(synthetic, tmp_path / "other", tile=SYN_TILE, prompts_per_tile=5, chip=SYN_CHIP)
    assert [r.visual_prompts for r in other] != prompts


def test_plan_tiles_halves_and_errors() -> None:
    tiles = plan_tiles(512, 512, 64, 1)
    assert Counter(t.split for t in tiles) == {"train": 28, "val": 4, "test": 32}
    assert all(t.col + t.size <= 256 for t in tiles if t.split != "test")
    assert all(t.col >= 256 for t in tiles if t.split == "test")
    assert {t.row for t in tiles if t.split == "val"} == {448}
    with pytest.raises(ConverterError, match="tile: 300 px does not fit"):
        plan_tiles(512, 512, 300, 1)
    with pytest.raises(ConverterError, match="val_rows: 8 of 8 tile rows leaves no train tiles"):
        plan_tiles(512, 512, 64, 8)


def test_overwrite_rules_and_missing_input(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_sen1floods11(synthetic, out, tile=SYN_TILE, prompts_per_tile=2, chip=SYN_CHIP)
    with pytest.raises(ConverterError, match="output folder exists; pass overwrite=True"):
        convert_sen1floods11(synthetic, out, tile=SYN_TILE, prompts_per_tile=2, chip=SYN_CHIP)
    records = convert_sen1floods11(synthetic, out, tile=SYN_TILE, prompts_per_tile=4, chip=SYN_CHIP, overwrite=True)
    assert len(read_records(out / "records.jsonl")) == len(records) == 12 * 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    with pytest.raises(ConverterError, match="not a Sen1Floods11 converter output"):
        convert_sen1floods11(synthetic, foreign, tile=SYN_TILE, chip=SYN_CHIP, overwrite=True)
    assert (foreign / "keep.txt").exists()
    with pytest.raises(ConverterError, match="Other_0002_S1Hand.tif: Sen1Floods11 S1Hand image not found"):
        convert_sen1floods11(synthetic, tmp_path / "x", chip="Other_0002")
    with pytest.raises(ConverterError, match="convert_sen1floods11.prompts_per_tile: must be an integer >= 1"):
        convert_sen1floods11(synthetic, tmp_path / "x", prompts_per_tile=0, chip=SYN_CHIP)


def test_preparer_caches_and_feeds_the_datamodule(synthetic: Path, tmp_path: Path) -> None:
    data = Sen1Floods11Data(source=str(synthetic), root=str(tmp_path / "cache"), tile=SYN_TILE, chip=SYN_CHIP)
    path = data.records_path()
    assert not data.is_prepared() and data.prepare() == path and data.is_prepared()
    stamp = path.stat().st_mtime_ns
    same = Sen1Floods11Data(source=str(synthetic), root=str(tmp_path / "cache"), tile=SYN_TILE, chip=SYN_CHIP)
    assert same.prepare() == path and path.stat().st_mtime_ns == stamp  # cached: not rebuilt
    assert (
        Sen1Floods11Data(
            source=str(synthetic), root=str(tmp_path / "cache"), tile=SYN_TILE, seed=1, chip=SYN_CHIP
        ).folder()
        != data.folder()
    )
    dm = InstructDataModule(generate=data, modality_presets={"sar": "sentinel1_db"}, image_size=SYN_TILE, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert {split: len(dm.datasets[split]) for split in ("train", "val", "test")} == {
        "train": 32,
        "val": 16,
        "test": 48,
    }
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape) == (4, 3, SYN_TILE, SYN_TILE)
    assert batch["band_valid"][:, :2].all() and not batch["band_valid"][:, 2].any()


def test_preparer_errors_name_the_field(tmp_path: Path) -> None:
    missing = Sen1Floods11Data(source=str(tmp_path / "absent"), root=str(tmp_path / "cache"))
    missing.records_path()  # known without the chip (the datamodule asks while a recipe is parsed)
    with pytest.raises(ConverterError, match=r"^Sen1Floods11Data.source: Sen1Floods11 folder not found: .*absent"):
        missing.prepare()
    with pytest.raises(ConverterError, match=r"^Sen1Floods11Data.tile: must be an integer >= 1, got 0"):
        Sen1Floods11Data(source=str(tmp_path), tile=0).prepare()


def test_smoke_recipe_reads_the_preparer(synthetic: Path, tmp_path: Path) -> None:
    data = yaml.safe_load((REPO / "recipes" / "earthgptx-sen1floods11-smoke.yaml").read_text())["data"]
    assert data["init_args"]["generate"]["init_args"]["source"] == "../shared/data/sen1floods11-spain"
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": data}))
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action="config")
    parser.add_subclass_arguments(InstructDataModule, "data")
    overrides = [f"--data.init_args.generate.init_args.{k}={v}" for k, v in (("source", synthetic), ("chip", SYN_CHIP))]
    dm = parser.instantiate_classes(parser.parse_args([f"--config={config}", *overrides])).data
    assert type(dm.generate) is Sen1Floods11Data and dm.generate.prompts_per_tile == 16
    assert dm.sources == [str(dm.generate.records_path())] and set(dm.modality_presets) == {"sar"}


@pytest.mark.skipif(not S1F.is_dir(), reason=f"Sen1Floods11 chip not found at {S1F} (../shared/data)")
def test_real_chip(tmp_path: Path) -> None:
    records = convert_sen1floods11(S1F, tmp_path / "out", tile=64, prompts_per_tile=4)
    check_output(records, S1F, tmp_path / "out", CHIP, 64)
    assert Counter(r.split for r in records) == {"train": 28 * 4, "val": 4 * 4, "test": 32 * 4}
