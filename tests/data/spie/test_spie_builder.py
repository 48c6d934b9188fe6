"""SPIE builder: class merging, tiling, resume, workers, LLaVA export of the built records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import SHARED_DATA
from rasterio.crs import CRS

from rsvlm.data.bands import BandError, band_spec
from rsvlm.data.raster import RasterError
from rsvlm.data.scenes import write_scene_folder
from rsvlm.data.spie.apg import instruction, spectral_prompt
from rsvlm.data.spie.builder import build_spie
from rsvlm.data.spie.describe import AttributeDescriber
from rsvlm.data.spie.records import export_llava, read_records
from rsvlm.data.spie.sources import SourceSpec

CODES = {"vegetation": 1, "water": 2, "building": 3}
# Test rasters without georeferencing are deliberate.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _write(path: Path, array: np.ndarray, transform=None, crs=None, nodata=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0], dtype=array.dtype.name
    )
    if transform is not None:
        profile.update(transform=transform, crs=crs)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def _read(path) -> tuple[np.ndarray, rasterio.Affine, object]:
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    write_scene_folder(root, n=6, size=32, bands="demo", seed=1, split_fractions={"train": 4, "val": 1, "test": 1})
    return root


@pytest.fixture(scope="module")
def built(scenes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("spie")
    build_spie([SourceSpec("generated", str(scenes))], out, progress=False)
    return out


# ------------------------------------------------------------------ builder


def test_build_round_trip(scenes, built):
    recs = read_records(built / "spie.jsonl")
    manifest = json.loads((scenes / "manifest.json").read_text())
    by_scene = {s["id"]: s for s in manifest["scenes"]}
    spec = band_spec("demo")
    describer = AttributeDescriber()
    seen: dict[str, set[str]] = {}
    for r in recs:
        stem = Path(r.image).stem
        scene = by_scene[stem]
        seen.setdefault(stem, set()).add(r.category)
        assert r.split == scene["split"] and r.source == "generated-" + scenes.name
        assert r.bands == list(spec.names) and r.tile is None
        src_image, src_transform, src_crs = _read(scenes / scene["image"])
        classes = _read(scenes / scene["label"])[0][0]
        tile_image, tile_transform, tile_crs = _read(r.image)
        np.testing.assert_array_equal(tile_image, src_image)
        assert tile_transform == src_transform and tile_crs == src_crs
        mask, mask_transform, _ = _read(r.mask)
        np.testing.assert_array_equal(mask[0], (classes == CODES[r.category]).astype(np.uint8))
        assert mask_transform == src_transform
        prompt = spectral_prompt(src_image, r.category, spec, style="paper")
        assert r.spectral_prompt == prompt
        assert r.instruction == instruction(r.category, prompt, template="spectral")
        assert r.response == describer(src_image, mask[0].astype(bool), r.category, spec)
    # Every category present in a scene has its record; others are empty-target records.
    for stem, cats in seen.items():
        assert set(by_scene[stem]["present"]) <= cats
    empties = [r for r in recs if r.category not in by_scene[Path(r.image).stem]["present"]]
    for r in empties:
        assert _read(r.mask)[0].max() == 0


def test_resume_writes_nothing_new(scenes, built, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    before = (out / "spie.jsonl").read_bytes()
    summary = build_spie([SourceSpec("generated", str(scenes))], out, progress=False)
    assert summary.records_written == 0 and summary.tiles_built == 0
    assert summary.tiles_skipped == summary.tiles_total == 6
    assert (out / "spie.jsonl").read_bytes() == before
    with pytest.raises(ValueError, match="other settings"):
        build_spie([SourceSpec("generated", str(scenes))], out, style="released", progress=False)


def test_resume_after_crash_recovers_exactly(scenes, built, tmp_path):
    out = tmp_path / "crashed"
    shutil.copytree(built, out)
    full = (built / "spie.jsonl").read_bytes()
    lines = full.splitlines(keepends=True)
    done = (out / "spie.jsonl.done").read_text().splitlines(keepends=True)
    # Crash: the last tile's records are partly written (one half line) and it is not in
    # the ledger; the tile before it lost its ledger line only.
    last_tile = json.loads(lines[-1])["image"]
    n_last = sum(json.loads(x)["image"] == last_tile for x in lines)
    kept = b"".join(lines[: len(lines) - n_last]) + lines[-n_last][:30]
    (out / "spie.jsonl").write_bytes(kept)
    (out / "spie.jsonl.done").write_text("".join(done[:-2]) + done[-2][:5])
    with pytest.warns(UserWarning, match="half-written last line"):
        summary = build_spie([SourceSpec("generated", str(scenes))], out, progress=False)
    assert summary.tiles_built == 2
    assert (out / "spie.jsonl").read_bytes() == full


def test_parallel_workers_give_the_same_file(scenes, built, tmp_path):
    summary = build_spie([SourceSpec("generated", str(scenes))], tmp_path / "par", workers=2, progress=False)
    assert summary.records_total == len(read_records(built / "spie.jsonl"))
    assert (tmp_path / "par" / "spie.jsonl").read_bytes() == (built / "spie.jsonl").read_bytes()


def test_export_llava(built, tmp_path):
    recs = read_records(built / "spie.jsonl")
    path = export_llava(built / "spie.jsonl", built / "llava.json")
    items = json.loads(path.read_text())
    assert len(items) == len(recs)
    assert not list(built.glob(".llava.json.*"))  # atomic write left no temporary file
    for item, r in zip(items, recs):
        assert set(item) == {"id", "image", "gt_image", "conversations"}
        assert (built / item["image"]).resolve() == Path(r.image)
        assert (built / item["gt_image"]).resolve() == Path(r.mask)
        assert item["conversations"] == [
            {"from": "human", "value": "<image>\n" + r.instruction},
            {"from": "gpt", "value": r.response},
        ]
    assert len({i["id"] for i in items}) == len(items)


# ------------------------------------------------------------------ tiling and merging


def test_tiling_700x500_keeps_georeferencing_and_pads(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 700, 500
    image = rng.uniform(0.01, 0.5, size=(4, h, w)).astype(np.float32)
    image[:, 10:20, 30:40] = -1.0  # declared nodata
    label = np.zeros((1, h, w), np.uint8)
    label[0, 100:300, 50:200] = 1
    label[0, 600:680, 400:490] = 1
    transform = Affine(0.5, 0, 300_000.0, 0, -0.5, 4_000_000.0)
    crs = CRS.from_epsg(32618)
    _write(tmp_path / "src/images/big.tif", image, transform, crs, nodata=-1.0)
    _write(tmp_path / "src/labels/big.tif", label, transform, crs)
    build_spie(
        [
            SourceSpec(
                "binary", str(tmp_path / "src"), split="test", bands="gaofen2", category="water", dataset="my-floods"
            )
        ],
        tmp_path / "out",
        tile=512,
        progress=False,
    )
    recs = read_records(tmp_path / "out/spie.jsonl")
    assert [r.tile for r in recs] == [[0, 0, 512, 500], [512, 0, 188, 500]]
    assert {r.dataset for r in recs} == {"my-floods"}  # SourceSpec.dataset names it
    for r in recs:
        row, col, th, tw = r.tile
        data, t, c = _read(r.image)
        mask, mt, mc = _read(r.mask)
        assert data.shape == (4, 512, 512) and mask.shape == (1, 512, 512)
        assert c == crs and mc == crs and mt == t
        # The tile's origin is the window's top-left corner in the scene's CRS.
        assert (t.c, t.f) == pytest.approx((300_000.0 + 0.5 * col, 4_000_000.0 - 0.5 * row))
        assert (t.a, t.e) == (0.5, -0.5)
        src = image[:, row : row + th, col : col + tw]
        inside = data[:, :th, :tw]
        nodata = src == -1.0
        np.testing.assert_array_equal(inside[~nodata], src[~nodata])
        assert np.isnan(inside[nodata]).all()
        # Padding: NaN in the image, 0 in the mask.
        assert np.isnan(data[:, th:, :]).all() and np.isnan(data[:, :, tw:]).all()
        assert mask[0, th:, :].sum() == 0 and mask[0, :, tw:].sum() == 0
        expected = label[0, row : row + th, col : col + tw] & ~nodata[0]
        np.testing.assert_array_equal(mask[0, :th, :tw], expected)


@pytest.mark.parametrize(
    "kind,codes,ignore",
    [
        ("gid15", {"water": [13, 14, 15]}, [0]),
        ("globe230k", {"vegetation": [2, 3, 4]}, []),
        ("chesapeake", {"vegetation": [2, 3]}, [0]),
        ("segmunich", {"vegetation": [1, 2, 3, 4, 6, 10]}, []),
    ],
)
def test_class_merging(tmp_path, kind, codes, ignore):
    top = {"gid15": 15, "globe230k": 10, "chesapeake": 6, "segmunich": 12}[kind]
    label = (np.arange(40 * 40).reshape(1, 40, 40) % (top + 1)).astype(np.uint8)
    image = np.random.default_rng(0).uniform(0.05, 0.4, (4, 40, 40)).astype(np.float32)
    _write(tmp_path / "src/images/a.tif", image)
    _write(tmp_path / "src/labels/a.tif", label)
    build_spie(
        [SourceSpec(kind, str(tmp_path / "src"), split="train", bands="gaofen2")],
        tmp_path / "out",
        progress=False,
        empty_rate=0.0,
    )
    recs = read_records(tmp_path / "out/spie.jsonl")
    assert [r.category for r in recs] == list(codes)
    assert {r.dataset for r in recs} == {kind}  # what SpieDataModule(datasets=...) filters on
    ((category, members),) = codes.items()
    mask = _read(recs[0].mask)[0][0]
    np.testing.assert_array_equal(mask, np.isin(label[0], members).astype(np.uint8))
    tile = _read(recs[0].image)[0]
    ignored = np.isin(label[0], ignore)
    assert np.isnan(tile[:, ignored]).all() and not np.isnan(tile[:, ~ignored]).any()


def test_labels_that_do_not_fit_the_kind_are_errors(tmp_path):
    image = np.ones((4, 16, 16), np.float32)
    bad = np.zeros((1, 16, 16), np.uint8)
    bad[0, 0, 0] = 2
    _write(tmp_path / "bin/images/a.tif", image)
    _write(tmp_path / "bin/labels/a.tif", bad)
    with pytest.raises(RasterError, match=r"labels/a\.tif.*value 2"):
        build_spie(
            [SourceSpec("binary", str(tmp_path / "bin"), split="train", bands="gaofen2", category="water")],
            tmp_path / "o1",
            progress=False,
        )
    bad[0, 0, 0] = 20
    _write(tmp_path / "gid/images/a.tif", image)
    _write(tmp_path / "gid/labels/a.tif", bad)
    with pytest.raises(RasterError, match=r"value 20.*gid15"):
        build_spie(
            [SourceSpec("gid15", str(tmp_path / "gid"), split="train", bands="gaofen2")],
            tmp_path / "o2",
            progress=False,
        )
    with pytest.raises(BandError, match=r"images/a\.tif.*expected 6 bands"):
        build_spie(
            [SourceSpec("gid15", str(tmp_path / "gid"), split="train", bands="demo")], tmp_path / "o3", progress=False
        )
    _write(tmp_path / "gid/labels/a.tif", bad[:, :8])
    with pytest.raises(RasterError, match=r"label .*a\.tif is 8×16 but image"):
        build_spie(
            [SourceSpec("gid15", str(tmp_path / "gid"), split="train", bands="gaofen2")],
            tmp_path / "o4",
            progress=False,
        )
    (tmp_path / "gid/images/b.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="without a label"):
        build_spie(
            [SourceSpec("gid15", str(tmp_path / "gid"), split="train", bands="gaofen2")],
            tmp_path / "o5",
            progress=False,
        )


def test_real_chesapeake_patches(tmp_path):
    """Real NAIP + Chesapeake labels: vegetation masks are exactly tree canopy ∪ low vegetation."""
    folder = SHARED_DATA / "chesapeake-naip-geobench"
    stems = sorted(p.name[: -len("_image.npy")] for p in folder.glob("*_image.npy"))
    if not stems:
        pytest.skip(f"real Chesapeake patches not found at {folder}")
    for s in stems[:3]:
        _write(tmp_path / f"src/images/{s}.tif", np.load(folder / f"{s}_image.npy"))
        _write(tmp_path / f"src/labels/{s}.tif", np.load(folder / f"{s}_label.npy")[None])
    summary = build_spie(
        [SourceSpec("chesapeake", str(tmp_path / "src"), split="train", bands="chesapeake")],
        tmp_path / "out",
        progress=False,
    )
    recs = read_records(summary.records_path)
    assert {Path(r.image).stem for r in recs} <= set(stems[:3])
    for r in recs:
        label = np.load(folder / f"{Path(r.image).stem}_label.npy")
        mask = _read(r.mask)[0][0]
        np.testing.assert_array_equal(mask, np.isin(label, [2, 3]).astype(np.uint8))
        assert "vegetation" in r.instruction and r.spectral_prompt


def test_responses_from_the_dataset_take_precedence(tmp_path):
    """A tile's response comes from the source's responses file when it gives one; the
    describer fills in the rest."""
    rng = np.random.default_rng(3)
    h, w = 700, 500
    image = rng.uniform(0.01, 0.5, size=(4, h, w)).astype(np.float32)
    label = np.zeros((1, h, w), np.uint8)
    label[0, 100:300, 50:200] = 1
    label[0, 600:680, 400:490] = 1
    transform = Affine(0.5, 0, 300_000.0, 0, -0.5, 4_000_000.0)
    _write(tmp_path / "src/images/big.tif", image, transform, CRS.from_epsg(32618))
    _write(tmp_path / "src/labels/big.tif", label, transform, CRS.from_epsg(32618))
    given = {"big_r0_c0": {"water": "A reservoir fills the upper left of the tile."}}
    (tmp_path / "responses.json").write_text(json.dumps(given))
    build_spie(
        [
            SourceSpec(
                "binary",
                str(tmp_path / "src"),
                split="test",
                bands="gaofen2",
                category="water",
                responses=str(tmp_path / "responses.json"),
            )
        ],
        tmp_path / "out",
        tile=512,
        progress=False,
    )
    by_tile = {tuple(r.tile): r.response for r in read_records(tmp_path / "out/spie.jsonl")}
    assert by_tile[(0, 0, 512, 500)] == "A reservoir fills the upper left of the tile."
    second = by_tile[(512, 0, 188, 500)]
    assert second and second != "A reservoir fills the upper left of the tile."

    (tmp_path / "bad.json").write_text(json.dumps({"big_r0_c0": "not a mapping"}))
    with pytest.raises(ValueError, match=r"bad\.json.*big_r0_c0"):
        build_spie(
            [
                SourceSpec(
                    "binary",
                    str(tmp_path / "src"),
                    split="test",
                    bands="gaofen2",
                    category="water",
                    responses=str(tmp_path / "bad.json"),
                )
            ],
            tmp_path / "out2",
            tile=512,
            progress=False,
        )
