"""Material variability of generated scenes (rsvlm.data.materials) against the formulas of its
docstring, computed here from the signature table by np.interp and brute-force convolution."""

from __future__ import annotations

import numpy as np
import pytest

from rsvlm.data.generated import GeneratedData
from rsvlm.data.materials import MaterialVariation, sediment_signature, sediment_transmission
from rsvlm.data.scenes import SIGNATURE_NM, SIGNATURES, band_centres, generate_scene, render, signature_matrix

BANDS = ["blue", "green", "red", "nir", "swir1", "swir2"]
SOIL, VEG, WATER, BLDG = 0, 1, 2, 3


def _table(name: str) -> np.ndarray:
    return np.interp(band_centres(BANDS), SIGNATURE_NM, SIGNATURES[name])


def _two_regions_each() -> np.ndarray:
    """A 16×16 class map with two separate regions of vegetation, water and building."""
    classes = np.zeros((16, 16), np.uint8)
    classes[1:4, 1:4] = VEG
    classes[1:4, 10:14] = VEG
    classes[6:9, 1:5] = WATER
    classes[6:9, 10:15] = WATER
    classes[12:15, 1:4] = BLDG
    classes[12:15, 10:13] = BLDG
    return classes


def test_default_changes_nothing() -> None:
    classes = _two_regions_each()
    assert not MaterialVariation().active
    a = render(classes, BANDS, np.random.default_rng(3))
    b = render(classes, BANDS, np.random.default_rng(3), MaterialVariation())
    np.testing.assert_array_equal(a, b)


def test_sediment_spectrum_follows_the_transmission_formula() -> None:
    nm = np.array([490.0, 700.0, 842.0, 1610.0])
    expected = np.array([1.0, 1.0, np.exp(-142 / 250), np.exp(-910 / 250)])
    np.testing.assert_allclose(sediment_transmission(nm), expected)
    soil, water = _table("bare soil"), _table("water")
    sed = sediment_signature(soil, water, band_centres(BANDS))
    # Visible bands: the soil's reflectance; SWIR1 (1610 nm): water's plus 2.6 % of the difference.
    np.testing.assert_allclose(sed[:3], soil[:3])
    np.testing.assert_allclose(sed[4], water[4] + np.exp(-910 / 250) * (soil[4] - water[4]))
    assert sed[4] - water[4] < 0.03 * (soil[4] - water[4])


def test_each_region_is_the_linear_mixture_of_its_drawn_fractions() -> None:
    classes = _two_regions_each()
    mv = MaterialVariation(
        vegetation_cover=(0.3, 0.9),
        vegetation_brightness=(0.6, 1.1),
        turbidity=(0.1, 0.6),
        brightness=(0.6, 1.4),
        soil_vegetation=(0.05, 0.3),
    )
    image = mv.reflectance(classes, signature_matrix(BANDS), band_centres(BANDS), np.random.default_rng(0))
    soil, veg, water, concrete = (_table(n) for n in ("bare soil", "vegetation", "water", "building"))
    sed = sediment_signature(soil, water, band_centres(BANDS))
    fits = []
    for code in (VEG, WATER, BLDG, SOIL):
        pixels = image[:, classes == code].T  # n×C
        # Without noise a region is one spectrum: at most one distinct row per region.
        assert len(np.unique(pixels.round(9), axis=0)) <= (1 if code == SOIL else 2)
        for spectrum in np.unique(pixels.round(9), axis=0):
            if code == VEG:  # b·(f·veg + (1−f)·soil) = x·veg + y·soil, f = x/(x+y), b = x+y
                (x, y), *_ = np.linalg.lstsq(np.stack([veg, soil], 1), spectrum, rcond=None)
                fits.append(("cover", x / (x + y), mv.vegetation_cover))
                fits.append(("shade", x + y, mv.vegetation_brightness))
                np.testing.assert_allclose(x * veg + y * soil, spectrum, atol=1e-6)
            elif code == WATER:  # (1−t)·water + t·sed
                t = float(np.dot(spectrum - water, sed - water) / np.dot(sed - water, sed - water))
                fits.append(("turbidity", t, mv.turbidity))
                np.testing.assert_allclose((1 - t) * water + t * sed, spectrum, atol=1e-6)
            elif code == BLDG:
                b = float(np.dot(spectrum, concrete) / np.dot(concrete, concrete))
                fits.append(("roof", b, mv.brightness))
                np.testing.assert_allclose(b * concrete, spectrum, atol=1e-6)
            else:  # b·((1−g)·soil + g·veg)
                (x, y), *_ = np.linalg.lstsq(np.stack([soil, veg], 1), spectrum, rcond=None)
                fits.append(("soil plants", y / (x + y), mv.soil_vegetation))
                np.testing.assert_allclose(x * soil + y * veg, spectrum, atol=1e-6)
    for name, value, (lo, hi) in fits:
        assert lo - 1e-6 <= value <= hi + 1e-6, (name, value, (lo, hi))
    # Two regions of a class draw their own fractions.
    assert len(np.unique(image[:, classes == VEG].T.round(9), axis=0)) == 2


def test_point_spread_is_a_gaussian_blur_of_the_pure_image() -> None:
    classes = _two_regions_each()
    sig = signature_matrix(BANDS)
    sigma = 0.8
    blurred = MaterialVariation(point_spread=sigma).reflectance(
        classes, sig, band_centres(BANDS), np.random.default_rng(0)
    )
    pure = np.moveaxis(sig[classes], -1, 0).astype(np.float64)
    # Brute force: a truncated (4σ) normalised Gaussian kernel, edges replicated ("nearest").
    radius = int(4 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(pure, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    expected = np.zeros_like(pure)
    for dy, wy in enumerate(taps):
        for dx, wx in enumerate(taps):
            expected += wy * wx * padded[:, dy : dy + 16, dx : dx + 16]
    np.testing.assert_allclose(blurred, expected, atol=1e-9)


def test_shallow_water_shows_the_soil_by_its_distance_to_the_shore() -> None:
    classes = _two_regions_each()
    mv = MaterialVariation(shallow=(0.5, 0.5), shallow_width=1.5)
    image = mv.reflectance(classes, signature_matrix(BANDS), band_centres(BANDS), np.random.default_rng(0))
    soil, water = _table("bare soil"), _table("water")
    land = np.argwhere(classes != WATER)
    for y, x in np.argwhere(classes == WATER):  # brute force: the nearest land pixel
        d = np.sqrt(((land - (y, x)) ** 2).sum(1)).min()
        a = 0.5 * np.exp(-(d - 1.0) / 1.5)
        np.testing.assert_allclose(image[:, y, x], (1 - a) * water + a * soil, atol=1e-9)
    # The shore's NDWI falls below the body's centre (green 1, NIR 3).
    ndwi = (image[1] - image[3]) / (image[1] + image[3])
    assert ndwi[6, 2] < ndwi[7, 2]
    # Off (width 0): no draws, so the other settings keep their scenes.
    a = MaterialVariation(turbidity=(0.1, 0.5)).reflectance(
        classes, signature_matrix(BANDS), band_centres(BANDS), np.random.default_rng(4)
    )
    b = MaterialVariation(turbidity=(0.1, 0.5), shallow=(0.2, 0.4)).reflectance(
        classes, signature_matrix(BANDS), band_centres(BANDS), np.random.default_rng(4)
    )
    np.testing.assert_array_equal(a, b)


def test_scenes_with_materials_are_seeded_and_within_reflectance() -> None:
    mv = MaterialVariation(vegetation_cover=(0.5, 1.0), turbidity=(0.0, 0.5), cover_noise=0.1, point_spread=0.7)
    a, ca = generate_scene(32, BANDS, np.random.default_rng(7), mv)
    b, cb = generate_scene(32, BANDS, np.random.default_rng(7), mv)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ca, cb)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize(
    "bad",
    [{"vegetation_cover": (0.9, 0.5)}, {"turbidity": (0.0, 1.5)}, {"brightness": (0.0, 1.0)}, {"cover_noise": -1}]
    + [{"shallow": (0.0, 1.5)}, {"shallow_width": -1.0}],
)
def test_bad_settings_name_the_field(bad: dict) -> None:
    with pytest.raises(ValueError, match="MaterialVariation"):
        MaterialVariation(**bad)


def test_generated_data_keys_its_cache_on_materials_and_categories(tmp_path) -> None:
    from rsvlm.data.bands import band_spec

    spec = band_spec(["blue", "green", "red", "nir"])
    plain = GeneratedData(root=str(tmp_path)).folder(spec, "paper")
    assert GeneratedData(root=str(tmp_path), materials=MaterialVariation()).folder(spec, "paper") == plain
    mixed = GeneratedData(root=str(tmp_path), materials=MaterialVariation(turbidity=(0.0, 0.3))).folder(spec, "paper")
    two = GeneratedData(root=str(tmp_path), categories=["water", "vegetation"]).folder(spec, "paper")
    assert len({plain, mixed, two}) == 3


def test_four_band_build_without_building_records(tmp_path) -> None:
    from rsvlm.data.bands import band_spec
    from rsvlm.data.spie.records import read_records

    data = GeneratedData(
        root=str(tmp_path),
        n_train=3,
        n_val=1,
        n_test=1,
        size=32,
        categories=["vegetation", "water"],
        materials=MaterialVariation(turbidity=(0.0, 0.3), point_spread=0.5),
    )
    spec = band_spec(["blue", "green", "red", "nir"])
    records = read_records(data.prepare(spec, "paper") / "spie" / "spie.jsonl")
    assert records and {r.category for r in records} <= {"vegetation", "water"}


def test_training_samples_carry_index_channels_of_the_raw_bands(tmp_path) -> None:
    """The datamodule's training path: robust per-band normalisation plus NDVI / NDWI of the
    raw record raster (read here with rasterio) as two more channels."""
    import rasterio

    from rsvlm.data.spie.datamodule import SpieDataModule

    data = GeneratedData(root=str(tmp_path), n_train=2, n_val=1, n_test=1, size=32, categories=["water"])
    dm = SpieDataModule(
        generate=data,
        bands=["blue", "green", "red", "nir"],
        image_size=32,
        normalization="robust_image",
        index_channels=["ndvi", "ndwi"],
    )
    dm.prepare_data()
    dm.setup("fit")
    sample = dm.datasets["train"][0]
    with rasterio.open(dm.datasets["train"].records[0].image) as src:
        raw = src.read().astype(np.float64)  # blue, green, red, nir
    assert sample["image"].shape == (6, 32, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (raw[3] - raw[2]) / (raw[3] + raw[2])
        ndwi = (raw[1] - raw[3]) / (raw[1] + raw[3])
    np.testing.assert_allclose(sample["image"][4].numpy(), ndvi, atol=1e-5)
    np.testing.assert_allclose(sample["image"][5].numpy(), ndwi, atol=1e-5)
