"""SpieDataModule: batch contract, determinism, subsets, generated data, errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
from conftest import quiet_trainer

from rsvlm.data.bands import BandError
from rsvlm.data.generated import GeneratedData
from rsvlm.data.spie.datamodule import SpieDataModule
from rsvlm.data.spie.dataset import SampleError
from rsvlm.data.spie.records import append_records, read_records
from rsvlm.data.stats import MissingStatsError, StatsError, load_stats

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
CONTRACT = {"image", "mask", "valid", "category", "instruction", "response", "meta"}


class LengthFormatter:
    """Stand-in for the chat formatter: picklable, returns tensors keyed like it."""

    def __call__(self, instructions, responses):
        return {
            "input_ids": torch.tensor([[len(i), len(r)] for i, r in zip(instructions, responses)]),
            "attention_mask": torch.ones(len(instructions), 2, dtype=torch.long),
        }


# ------------------------------------------------------------------ datamodule


@pytest.fixture(scope="module")
def generated():
    # Default root: RSVLM_CACHE (set by conftest) keeps the build inside the test session.
    return GeneratedData(n_train=6, n_val=2, n_test=2, size=32, seed=0)


@pytest.fixture(scope="module")
def dm(generated):
    d = SpieDataModule(generate=generated, image_size=40, batch_size=3, seed=1)
    d.prepare_data()
    d.setup("fit")
    d.set_text_formatter(LengthFormatter())
    return d


def _first(loader):
    return next(iter(loader))


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_contract(dm, workers):
    dm.num_workers = workers
    try:
        batch = _first(dm.train_dataloader())
    finally:
        dm.num_workers = 0
    assert set(batch) == CONTRACT | {"input_ids", "attention_mask"}
    assert batch["image"].shape == (3, 6, 40, 40) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 1, 40, 40) and batch["mask"].dtype == torch.float32
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["valid"].shape == (3, 1, 40, 40) and batch["valid"].dtype == torch.bool
    assert torch.isfinite(batch["image"]).all()
    for key in ("category", "instruction", "response", "meta"):
        assert isinstance(batch[key], list) and len(batch[key]) == 3
    meta = batch["meta"][0]
    assert {"image", "mask", "index", "crs", "transform", "original_size", "pad"} <= set(meta)
    assert meta["original_size"] == [32, 32] and meta["crs"] == "EPSG:32632"
    assert batch["input_ids"][0].tolist() == [len(batch["instruction"][0]), len(batch["response"][0])]
    assert dm.num_bands == 6 and dm.band_names == ["blue", "green", "red", "nir", "swir1", "swir2"]


def test_same_batches_with_and_without_workers(dm):
    dm.num_workers = 0
    a = _first(dm.train_dataloader())
    dm.num_workers = 2
    try:
        b = _first(dm.train_dataloader())
    finally:
        dm.num_workers = 0
    torch.testing.assert_close(a["image"], b["image"])
    assert a["meta"] == b["meta"]


def test_generated_empty_rate_controls_empty_target_records():
    from rsvlm.data.raster import read_mask
    from rsvlm.data.spie.records import read_records

    def build(rate):
        d = SpieDataModule(
            generate=GeneratedData(n_train=6, n_val=2, n_test=2, size=32, seed=4, empty_rate=rate), image_size=32
        )
        d.prepare_data()
        records = read_records(d.generated_dir() / "spie" / "spie.jsonl")
        return d.generated_dir(), {(Path(r.image).name, r.category): bool(read_mask(r.mask)[0].any()) for r in records}

    none_dir, none = build(0.0)
    all_dir, every = build(1.0)
    assert none_dir != all_dir  # the rate is part of the cache key
    assert none and all(none.values())  # only categories present in a scene
    absent = {k for k, present in every.items() if not present}
    assert absent and {k for k in every if k not in absent} == set(none)
    assert len(every) == 3 * 10  # every scene × category


def test_validation_samples_are_normalised_records(generated):
    d = SpieDataModule(generate=generated, image_size=32, batch_size=2, augment=True)
    d.setup("fit")
    batch = _first(d.val_dataloader())
    stats = load_stats(Path(d.generated_dir()) / "spie" / "stats.json")
    mean = np.array([stats["bands"][b]["mean"] for b in d.band_names])
    std = np.array([stats["bands"][b]["std"] for b in d.band_names])
    for i, meta in enumerate(batch["meta"]):
        assert meta["augment"] is None  # no augmentation outside training
        with rasterio.open(meta["image"]) as src:
            raw = src.read()
        with rasterio.open(meta["mask"]) as src:
            mask = src.read(1)
        expected = (raw - mean[:, None, None]) / std[:, None, None]
        np.testing.assert_allclose(batch["image"][i].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(batch["mask"][i, 0].numpy(), mask)
    # Normalised training pixels are centred with unit spread.
    train = torch.cat([b["image"] for b in d.train_dataloader()])
    assert train.mean(dim=(0, 2, 3)).abs().max() < 0.15
    assert (train.std(dim=(0, 2, 3)) - 1).abs().max() < 0.15


def test_prepare_is_idempotent(dm):
    marker = Path(dm.generated_dir()) / "complete.json"
    records = Path(dm.generated_dir()) / "spie" / "spie.jsonl"
    before = (marker.stat().st_mtime_ns, records.read_bytes())
    dm.prepare_data()
    assert (marker.stat().st_mtime_ns, records.read_bytes()) == before


def test_category_subset_and_plain_template(generated):
    d = SpieDataModule(generate=generated, image_size=32, categories=["water"], template="plain")
    d.setup("fit")
    cats = {r.category for ds in d.datasets.values() for r in ds.records}
    assert cats == {"water"}
    sample = d.datasets["train"][0]
    assert sample["instruction"] == (  # the paper's Sec. IV-C1, verbatim
        "You are an expert specializing in remote sensing. Based on the provided image and the "
        "water regions, please provide a detailed description of them."
    )


def test_predict_batches(dm):
    paths = sorted({r.image for r in dm.datasets["test"].records})
    # Prediction needs only the statistics and the images.
    d = SpieDataModule(
        stats=str(Path(dm.generated_dir()) / "spie" / "stats.json"),
        image_size=48,
        predict_paths=paths,
        categories=["water"],
        batch_size=8,
    )
    d.set_text_formatter(LengthFormatter())
    d.setup("predict")
    batch = _first(d.predict_dataloader())
    assert batch["image"].shape == (len(paths), 6, 48, 48)
    assert "mask" not in batch
    # Scenes smaller than a tile are one tile each; the padding around them is invalid.
    for valid, meta in zip(batch["valid"], batch["meta"]):
        height, width = meta["scene_size"]
        assert valid[0, :height, :width].all() and not valid[0, height:, :].any() and not valid[0, :, width:].any()
    assert [m["image"] for m in batch["meta"]] == paths
    assert all(
        i.startswith("Based on the provided image and the attributes of the water") for i in batch["instruction"]
    )
    assert "input_ids" in batch


def test_fit_with_lightning_calls_formatter(generated):
    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def setup(self, stage):
            self.trainer.datamodule.set_text_formatter(LengthFormatter())

        def training_step(self, batch, batch_idx):
            self.seen.append(set(batch))
            return (self.w * batch["image"].mean()).sum() + self.w**2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Model()
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(model, datamodule=SpieDataModule(generate=generated, image_size=32, batch_size=2))
    assert len(model.seen) == 2 and all("input_ids" in s for s in model.seen)


# ------------------------------------------------------------------ errors


@pytest.fixture()
def copy(dm, tmp_path):
    """A private copy of the generated build (records + stats + tiles)."""
    src = Path(dm.generated_dir()) / "spie"
    shutil.copytree(src, tmp_path / "spie")
    return tmp_path / "spie"


def _rewrite(folder: Path, change) -> list:
    recs = read_records(folder / "spie.jsonl")
    recs = [change(r) if i == 0 else r for i, r in enumerate(recs)]
    (folder / "spie.jsonl").unlink()
    append_records(folder / "spie.jsonl", recs)
    return recs


def _first_train_sample(folder: Path, **kw):
    d = SpieDataModule(records=str(folder / "spie.jsonl"), image_size=32, augment=False, **kw)
    d.setup("fit")
    ds = d.datasets[read_records(folder / "spie.jsonl")[0].split]
    return ds[0]


def test_missing_stats_names_file_and_command(copy):
    (copy / "stats.json").unlink()
    with pytest.raises(MissingStatsError, match=r"spie/stats\.json.*rsvlm data stats --records"):
        SpieDataModule(records=str(copy / "spie.jsonl")).setup("fit")


def test_band_mismatch_errors(copy):
    with pytest.raises(StatsError, match="'thermal'"):
        SpieDataModule(records=str(copy / "spie.jsonl"), bands=["red", "nir", "thermal"]).setup("fit")
    stats = json.loads((copy / "stats.json").read_text())
    stats["bands"]["thermal"] = {"mean": 300.0, "std": 5.0}
    (copy / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(BandError, match=r"\['thermal'\].*field 'bands'"):
        _first_train_sample(copy, bands=["red", "nir", "thermal"])
    _rewrite(copy, lambda r: replace(r, bands=r.bands[:5]))
    with pytest.raises(SampleError, match=r"has 6 bands but field 'bands'.*lists 5"):
        _first_train_sample(copy, bands=["red", "nir"])


def test_mask_errors(copy, tmp_path):
    recs = read_records(copy / "spie.jsonl")
    with rasterio.open(recs[0].mask) as src:
        profile, mask = src.profile, src.read()
    small = tmp_path / "small.tif"
    with rasterio.open(small, "w", **{**profile, "height": 16, "width": 16}) as dst:
        dst.write(mask[:, :16, :16])
    _rewrite(copy, lambda r: replace(r, mask=str(small)))
    with pytest.raises(SampleError, match=r"field 'mask'.*small\.tif is 16×16"):
        _first_train_sample(copy)
    three = tmp_path / "three.tif"
    with rasterio.open(three, "w", **profile) as dst:
        dst.write(np.full_like(mask, 2))
    _rewrite(copy, lambda r: replace(r, mask=str(three)))
    with pytest.raises(SampleError, match=r"three\.tif.*binary 0/1 mask, found values \[2\]"):
        _first_train_sample(copy)


def test_all_invalid_tile(copy, tmp_path):
    recs = read_records(copy / "spie.jsonl")
    with rasterio.open(recs[0].image) as src:
        profile, data = src.profile, src.read()
    nan = tmp_path / "nan.tif"
    with rasterio.open(nan, "w", **profile) as dst:
        dst.write(np.full_like(data, np.nan))
    _rewrite(copy, lambda r: replace(r, image=str(nan)))
    with pytest.raises(SampleError, match=r"nan\.tif: every pixel is invalid"):
        _first_train_sample(copy)


def test_needs_records_or_generate():
    with pytest.raises(ValueError, match="records=.*generate="):
        SpieDataModule()


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_per_image_normalisation_reaches_every_split(generated, split):
    """``normalization="image"``: every split's image has per-band mean 0 and std 1 over its
    valid pixels (numpy on the raw tile as the reference)."""
    import rasterio

    d = SpieDataModule(generate=generated, image_size=32, normalization="image")
    d.prepare_data()
    d.setup("fit" if split != "test" else "test")
    dataset = d.datasets[split]
    sample = dataset[0]
    with rasterio.open(dataset.records[0].image) as src:
        raw = src.read().astype(np.float64)
    valid = sample["valid"][0].numpy()
    image = sample["image"].numpy()
    assert image.shape[-2:] == raw.shape[-2:]  # no resize: pixels compare one to one
    expected = (raw - raw[:, valid].mean(axis=1)[:, None, None]) / raw[:, valid].std(axis=1)[:, None, None]
    np.testing.assert_allclose(image[:, valid], expected[:, valid], atol=1e-4)


def test_a_record_memory_gives_the_same_samples_reading_each_file_once(generated, monkeypatch):
    """``cache_images``: every sample equals the one read from disk, each record's files are read once
    while remembered (least recently used forgotten first), and a caller's edit stays its own."""
    from rsvlm.data.spie import dataset as dataset_module

    plain = SpieDataModule(generate=generated, image_size=32, batch_size=2)
    cached = SpieDataModule(generate=generated, image_size=32, batch_size=2, cache_images=100)
    for d in (plain, cached):
        d.prepare_data()
        d.setup("fit")
    reads: list[str] = []
    real = dataset_module.read_raster
    monkeypatch.setattr(dataset_module, "read_raster", lambda path: reads.append(path) or real(path))
    train, remembered = plain.datasets["train"], cached.datasets["train"]
    for _ in range(2):
        for i in range(len(train)):
            a, b = train[i], remembered[i]
            for key in ("image", "mask", "valid"):
                assert torch.equal(a[key], b[key]), key
            assert a["instruction"] == b["instruction"] and a["meta"] == b["meta"]
    assert len(reads) == 3 * len(train)  # plain: twice per record; cached: once

    small = SpieDataModule(generate=generated, image_size=32, batch_size=2, cache_images=2)
    small.setup("fit")
    data = small.datasets["train"]
    reads.clear()
    image, *_ = data.load(0)
    image[:] = -1  # the caller's copy
    assert (data.load(0)[0] != -1).any()
    data.load(1), data.load(0), data.load(2)  # record 1 is now the least recently used: forgotten
    data.load(0), data.load(1)
    paths = [data.records[i].image for i in (0, 1, 2, 1)]
    assert reads == paths
    with pytest.raises(ValueError, match=r"^SpieDataModule\.cache_images: [^\n]*$"):
        SpieDataModule(generate=generated, cache_images=-1)
