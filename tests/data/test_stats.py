"""Band statistics: streaming mean/std over valid pixels, keyed by band name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from rsvlm.data.bands import BandError
from rsvlm.data.spie.records import SpieRecord
from rsvlm.data.stats import (
    BandAccumulator,
    MissingStatsError,
    StatsError,
    compute_band_stats,
    load_stats,
    mean_std,
    save_stats,
)

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
BANDS = ["blue", "green", "red"]


def _write(path, array, nodata=None):
    profile = dict(
        driver="GTiff", height=array.shape[1], width=array.shape[2], count=array.shape[0], dtype=array.dtype.name
    )
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return str(path)


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths, valid_pixels = [], []
    for i, (h, w) in enumerate([(20, 30), (17, 11), (25, 25)]):
        a = rng.normal(100 + 10 * i, 5 + i, size=(3, h, w)).astype(np.float32)
        valid = np.ones((h, w), bool)
        a[:, :3, :4] = -9999.0  # declared nodata in every band
        valid[:3, :4] = False
        a[1, 5, 5] = np.nan  # NaN in one band invalidates the pixel
        valid[5, 5] = False
        paths.append(_write(tmp_path / f"im{i}.tif", a, nodata=-9999.0))
        valid_pixels.append(a[:, valid].astype(np.float64))
    return paths, np.concatenate(valid_pixels, axis=1)


def test_stats_equal_numpy_over_valid_pixels(images):
    paths, pixels = images
    stats = compute_band_stats(paths, BANDS)
    assert list(stats["bands"]) == BANDS and stats["images"] == 3
    for c, name in enumerate(BANDS):
        s = stats["bands"][name]
        assert s["count"] == pixels.shape[1]
        assert s["mean"] == pytest.approx(np.mean(pixels[c]), rel=1e-12)
        assert s["std"] == pytest.approx(np.std(pixels[c]), rel=1e-10)


def test_records_share_images_counted_once(images):
    paths, pixels = images
    recs = [
        SpieRecord(
            image=p,
            mask="m.tif",
            category=c,
            bands=BANDS,
            spectral_prompt="",
            instruction="",
            response="",
            split="train",
            source="s",
        )
        for p in paths
        for c in ("water", "vegetation")
    ]
    stats = compute_band_stats(recs)  # bands taken from the records
    assert stats["images"] == 3
    assert stats["bands"]["red"]["count"] == pixels.shape[1]
    assert stats["bands"]["red"]["mean"] == pytest.approx(np.mean(pixels[2]), rel=1e-12)


def test_accumulator_is_stable_far_from_zero():
    rng = np.random.default_rng(1)
    chunks = [1e6 + rng.normal(0, 1e-2, size=(2, 50, 40)) for _ in range(5)]
    acc = BandAccumulator(2)
    for c in chunks:
        acc.update(c.astype(np.float64), np.ones((50, 40), bool))
    allv = np.concatenate([c.reshape(2, -1) for c in chunks], axis=1)
    np.testing.assert_allclose(acc.mean, allv.mean(axis=1), rtol=1e-14)
    np.testing.assert_allclose(acc.std, allv.std(axis=1), rtol=1e-6)


def test_band_count_mismatch(images):
    with pytest.raises(BandError, match=r"im0\.tif.*expected 4 bands"):
        compute_band_stats(images[0], ["blue", "green", "red", "nir"])


def test_save_load_round_trip_and_errors(images, tmp_path):
    stats = compute_band_stats(images[0], BANDS)
    path = save_stats(stats, tmp_path / "stats.json")
    assert load_stats(path) == json.loads(json.dumps(stats))
    mean, std = mean_std(load_stats(path), ["red", "blue"], where=str(path))
    assert mean.tolist() == pytest.approx([stats["bands"]["red"]["mean"], stats["bands"]["blue"]["mean"]])
    assert std.dtype == np.float32
    with pytest.raises(StatsError, match=r"stats\.json.*'nir'"):
        mean_std(load_stats(path), ["red", "nir"], where=str(path))
    missing = tmp_path / "nope" / "stats.json"
    with pytest.raises(MissingStatsError, match=r"nope/stats\.json.*rsvlm data stats --records"):
        load_stats(missing, records="spie.jsonl")
    (tmp_path / "bad.json").write_text('{"bands": {"red": {"mean": 1}}}')
    with pytest.raises(StatsError, match=r"bad\.json: bands\.red"):
        load_stats(tmp_path / "bad.json")
