"""``threshold_jitter``: training samples' coarse masks and margins are cut at a moved Otsu threshold.

The reference is NDWI computed here with numpy from the raw generated tile and scikit-image's Otsu;
the cut a sample was given is read back from its margin channel (index − cut) and must agree with its
coarse-mask channel (index > cut).
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from skimage.filters import threshold_otsu

from rsvlm.data.generated import GeneratedData
from rsvlm.data.spie.datamodule import SpieDataModule
from rsvlm.data.spie.dataset import SpieDataset

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
BANDS = ["blue", "green", "red", "nir"]
CHANNELS = ["ndwi", "ndwi_otsu", "ndwi_margin"]
JITTER = 0.1


@pytest.fixture(scope="module")
def generated():
    return GeneratedData(n_train=4, n_val=2, n_test=2, size=32, seed=3, categories=["water"])


def _datamodule(generated, jitter: float) -> SpieDataModule:
    d = SpieDataModule(
        generate=generated,
        image_size=32,
        bands=BANDS,
        index_channels=CHANNELS,
        normalization="robust_image",
        threshold_jitter=jitter,
    )
    d.prepare_data()
    d.setup("fit")
    return d


def _reference(dataset: SpieDataset, index: int) -> tuple[np.ndarray, np.ndarray, float]:
    """NDWI of record ``index``'s raw tile, its valid pixels and scikit-image's Otsu threshold."""
    record = dataset.records[index]
    with rasterio.open(record.image) as src:
        raw = src.read().astype(np.float64)
    green, nir = (raw[list(record.bands).index(band)] for band in ("green", "nir"))
    ndwi = (green - nir) / (green + nir)
    valid = dataset[index]["valid"][0].numpy()
    return ndwi, valid, float(threshold_otsu(ndwi[valid]))


def _cut(sample: dict, ndwi: np.ndarray, valid: np.ndarray) -> float:
    """The cut the sample's channels were made with: from the margin channel, checked against the mask."""
    image = sample["image"].numpy().astype(np.float64)
    ndwi_channel, mask, margin = image[4], image[5], image[6]
    np.testing.assert_allclose(ndwi_channel[valid], ndwi[valid], atol=1e-5)
    cuts = ndwi[valid] - margin[valid]
    assert np.ptp(cuts) < 1e-5  # one cut per sample and index
    cut = float(cuts.mean())
    clear = valid & (np.abs(ndwi - cut) > 1e-5)  # float32 channels: no verdict on the cut itself
    np.testing.assert_array_equal(mask[clear] == 1, ndwi[clear] > cut)
    return cut


def test_training_cuts_move_within_the_jitter_on_both_sides_and_evaluation_cuts_do_not(generated):
    d = _datamodule(generated, JITTER)
    train = d.datasets["train"]
    # One Otsu bin: the package's histogram and scikit-image's may pick neighbouring bins.
    offsets = []
    for index in range(len(train)):
        ndwi, valid, otsu = _reference(train, index)
        tolerance = np.ptp(ndwi[valid]) / 128
        for seed in range(12):
            cut = _cut(train[(index, seed)], ndwi, valid)
            assert abs(cut - otsu) <= JITTER + tolerance
            offsets.append(cut - otsu)
        # Without a sampler seed (how a sample is read outside training) the cut is Otsu's.
        assert abs(_cut(train[index], ndwi, valid) - otsu) <= tolerance
    offsets = np.array(offsets)
    assert (offsets < -JITTER / 2).any() and (offsets > JITTER / 2).any()
    # A uniform draw on ±j: standard deviation j / √3.
    assert offsets.std() == pytest.approx(JITTER / np.sqrt(3), rel=0.3)
    for split in ("val", "test"):
        dataset = d.datasets[split]
        assert dataset.threshold_jitter == 0.0
        for index in range(len(dataset)):
            ndwi, valid, otsu = _reference(dataset, index)
            assert abs(_cut(dataset[(index, 5)], ndwi, valid) - otsu) <= np.ptp(ndwi[valid]) / 128


def test_the_draw_repeats_for_a_seed_changes_with_it_and_leaves_the_flips_alone(generated):
    still, moved = _datamodule(generated, 0.0), _datamodule(generated, JITTER)
    for d in (still, moved):
        d.datasets["train"].augment = True
    a, b, c = (moved.datasets["train"][(0, s)] for s in (7, 7, 8))
    np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    assert not np.array_equal(a["image"][6].numpy(), c["image"][6].numpy())
    for seed in range(6):
        plain, jittered = still.datasets["train"][(1, seed)], moved.datasets["train"][(1, seed)]
        assert plain["meta"]["augment"] == jittered["meta"]["augment"]
        np.testing.assert_array_equal(plain["mask"].numpy(), jittered["mask"].numpy())
        np.testing.assert_array_equal(plain["image"][:5].numpy(), jittered["image"][:5].numpy())


def test_a_negative_jitter_is_a_one_line_error_naming_the_field(generated):
    with pytest.raises(ValueError, match=r"^SpieDataModule\.threshold_jitter: [^\n]*$"):
        SpieDataModule(generate=generated, threshold_jitter=-0.1)
    with pytest.raises(ValueError, match=r"^SpieDataset\.threshold_jitter: [^\n]*$"):
        SpieDataset([], BANDS, np.zeros(4), np.ones(4), threshold_jitter=float("nan"))
