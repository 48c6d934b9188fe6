"""Generated scenes: shapes, spectral ordering, determinism, scene folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import SHARED_DATA

from rsvlm.data.bands import BandError, band_spec
from rsvlm.data.generated import GeneratedData
from rsvlm.data.indices import ndbi, ndvi, ndwi
from rsvlm.data.scenes import (
    ABSENT_RATE,
    BAND_CENTRES_NM,
    SIGNATURE_NM,
    SIGNATURES,
    generate_layout,
    generate_scene,
    signature_matrix,
    write_scene_folder,
)
from rsvlm.data.sensor import SensorVariation

SOIL, VEG, WATER, BLDG = 0, 1, 2, 3


@pytest.mark.parametrize("bands", ["demo", "sentinel2", "worldview3", "naip"])
def test_scene_shapes_and_range(bands):
    spec = band_spec(bands)
    image, classes = generate_scene(48, spec, np.random.default_rng(3))
    assert image.shape == (len(spec), 48, 48) and image.dtype == np.float32
    assert classes.shape == (48, 48) and classes.dtype == np.uint8
    assert image.min() >= 0 and image.max() <= 1
    assert set(np.unique(classes)) <= {SOIL, VEG, WATER, BLDG}


def test_non_reflective_band_is_an_error():
    with pytest.raises(BandError, match="thermal"):
        generate_scene(32, "landsat8-thermal", np.random.default_rng(0))
    with pytest.raises(BandError, match="'vv'"):
        generate_scene(32, "sentinel1", np.random.default_rng(0))


def _class_means(index_fn, n: int = 12) -> dict[int, float]:
    sums, counts = np.zeros(4), np.zeros(4)
    for i in range(n):
        image, classes = generate_scene(48, "demo", np.random.default_rng(i))
        idx = index_fn(image, "demo")
        for k in range(4):
            sums[k] += idx[classes == k].sum()
            counts[k] += (classes == k).sum()
    return {k: sums[k] / counts[k] for k in range(4)}


def test_spectral_ordering_follows_signatures():
    v, w, b = _class_means(ndvi), _class_means(ndwi), _class_means(ndbi)
    assert v[VEG] == max(v.values()) and v[VEG] > 0.5
    assert w[WATER] == max(w.values()) and w[WATER] > 0.3
    assert w[WATER] > w[VEG]
    assert b[BLDG] > b[VEG] and b[BLDG] > b[WATER]


def test_rendered_class_means_match_signatures():
    # Texture has mean 1 and noise mean 0, so class means recover the table's values.
    sig = signature_matrix("demo")
    sums, counts = np.zeros((4, 6)), np.zeros(4)
    for i in range(8):
        image, classes = generate_scene(64, "demo", np.random.default_rng(100 + i))
        for k in range(4):
            sums[k] += image[:, classes == k].sum(axis=1)
            counts[k] += (classes == k).sum()
    means = sums / counts[:, None]
    np.testing.assert_allclose(means, sig, rtol=0.08, atol=0.004)


def test_signature_interpolation_between_nodes():
    # rededge (724 nm, WorldView-3) lies between the 705 and 740 nm nodes.
    nm = list(SIGNATURE_NM)
    i0, i1 = nm.index(705), nm.index(740)
    t = (724 - 705) / (740 - 705)
    veg = SIGNATURES["vegetation"]
    expected = (1 - t) * veg[i0] + t * veg[i1]
    got = signature_matrix(["rededge"])[VEG, 0]
    assert got == pytest.approx(expected, rel=1e-6)
    # A band at a node takes the node's value.
    assert signature_matrix(["red"])[WATER, 0] == pytest.approx(SIGNATURES["water"][nm.index(665)])


def test_deterministic_for_a_seed():
    a = generate_scene(40, "demo", np.random.default_rng(7))
    b = generate_scene(40, "demo", np.random.default_rng(7))
    c = generate_scene(40, "demo", np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_absent_category_rate():
    n = 300
    layouts = [generate_layout(24, np.random.default_rng([1, i])) for i in range(n)]
    tol = 3 * np.sqrt(ABSENT_RATE * (1 - ABSENT_RATE) / n)
    for code in (VEG, WATER):
        absent = np.mean([not (cl == code).any() for cl in layouts])
        assert abs(absent - ABSENT_RATE) < tol, (code, absent)
    # Buildings can also be wholly covered by water, so they are absent at least as often.
    assert np.mean([not (cl == BLDG).any() for cl in layouts]) > ABSENT_RATE - tol


def test_write_scene_folder(tmp_path):
    manifest = write_scene_folder(
        tmp_path / "a", n=5, size=24, bands="demo", seed=4, split_fractions={"train": 3, "val": 1, "test": 1}
    )
    m = json.loads(manifest.read_text())
    assert [s["split"] for s in m["scenes"]].count("train") == 3
    assert sorted({s["split"] for s in m["scenes"]}) == ["test", "train", "val"]
    assert m["bands"] == list(band_spec("demo").names)
    for i, s in enumerate(m["scenes"]):
        image, classes = generate_scene(24, "demo", np.random.default_rng([4, i]))
        with rasterio.open(tmp_path / "a" / s["image"]) as src:
            np.testing.assert_array_equal(src.read(), image)
            assert src.crs.to_epsg() == 32632
            assert src.descriptions == band_spec("demo").names
            transform = src.transform
        with rasterio.open(tmp_path / "a" / s["label"]) as src:
            np.testing.assert_array_equal(src.read(1), classes)
            assert src.transform == transform
        present = [n for k, n in ((VEG, "vegetation"), (WATER, "water"), (BLDG, "building")) if (classes == k).any()]
        assert s["present"] == present
    # Same arguments → same files.
    write_scene_folder(
        tmp_path / "b", n=5, size=24, bands="demo", seed=4, split_fractions={"train": 3, "val": 1, "test": 1}
    )
    assert (tmp_path / "b" / "manifest.json").read_text() == manifest.read_text()
    for s in m["scenes"]:
        for key in ("image", "label"):
            with rasterio.open(tmp_path / "a" / s[key]) as x, rasterio.open(tmp_path / "b" / s[key]) as y:
                np.testing.assert_array_equal(x.read(), y.read())


def test_signatures_order_like_real_landsat_pixels():
    """The signatures rank the classes' indices like real labelled Landsat 8 pixels do."""
    folder = SHARED_DATA / "landsat8-labelled-spectra"
    if not (folder / "spectra_features.npy").exists():
        pytest.skip(f"real labelled spectra not found at {folder}")
    x = np.load(folder / "spectra_features.npy")
    y = np.load(folder / "spectra_labels.npy")  # 0 vegetation, 1 urban, 2 water
    # Columns SR_B1..SR_B7: coastal, blue, green, red, nir, swir1, swir2.
    g, r, n, s1 = x[:, 2], x[:, 3], x[:, 4], x[:, 5]

    def real(values):
        return [float(values[y == k].mean()) for k in (0, 1, 2)]

    sig = signature_matrix("landsat8")  # rows: soil, vegetation, water, building
    spec = band_spec("landsat8")

    def ours(a, b):
        va, vb = sig[:, spec[a]], sig[:, spec[b]]
        nd = (va - vb) / (va + vb)
        return [float(nd[VEG]), float(nd[BLDG]), float(nd[WATER])]

    rank = lambda v: list(np.argsort(v))  # noqa: E731
    assert rank(ours("nir", "red")) == rank(real((n - r) / (n + r)))  # NDVI
    assert rank(ours("green", "nir")) == rank(real((g - n) / (g + n)))  # NDWI
    real_ndbi, our_ndbi = real((s1 - n) / (s1 + n)), ours("swir1", "nir")
    assert (our_ndbi[1] > our_ndbi[0]) == (real_ndbi[1] > real_ndbi[0])  # urban vs vegetation


# ---------------------------------------------------------------- sensor variation
DEMO_NM = np.array([BAND_CENTRES_NM[b] for b in band_spec("demo").names])


def _scene(seed: int = 7, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    return generate_scene(size, "demo", np.random.default_rng(seed))


def test_sensor_gain_and_offset_are_linear_per_band():
    x, _ = _scene()
    out, drawn = SensorVariation(gain=(0.5, 1.5), offset=(0.0, 0.05)).apply(x, DEMO_NM, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == x.shape
    g, o = np.array(drawn["gain"]), np.array(drawn["offset"])
    assert ((g >= 0.5) & (g <= 1.5)).all() and ((o >= 0) & (o <= 0.05)).all() and len(set(g.tolist())) == 6
    np.testing.assert_allclose(out, g[:, None, None] * x.astype(np.float64) + o[:, None, None], rtol=1e-6, atol=1e-7)
    # Independently of the returned parameters: a least-squares line per band recovers them.
    for b in range(6):
        slope, intercept = np.polyfit(x[b].ravel().astype(np.float64), out[b].ravel().astype(np.float64), 1)
        assert abs(slope - g[b]) < 1e-4 and abs(intercept - o[b]) < 1e-5


@pytest.mark.parametrize(("dn", "scale", "top"), [("uint16", 10000, 65535), ("uint8", 400, 255)])
def test_sensor_integer_dns(dn, scale, top):
    x, _ = _scene()
    out, _ = SensorVariation(dn=dn).apply(x, DEMO_NM, np.random.default_rng(0))
    assert out.dtype == np.dtype(dn)
    np.testing.assert_array_equal(out, np.clip(np.rint(x.astype(np.float64) * scale), 0, top))


def test_sensor_haze_is_additive_and_strongest_in_blue():
    x, _ = _scene()
    out, drawn = SensorVariation(haze=0.08).apply(x, DEMO_NM, np.random.default_rng(2))
    a = drawn["haze"]
    assert 0 < a <= 0.08
    added = (out.astype(np.float64) - x).reshape(6, -1)
    np.testing.assert_allclose(added, np.broadcast_to((a * (490.0 / DEMO_NM) ** 4)[:, None], added.shape), atol=1e-6)
    per_band = added.mean(axis=1)  # demo bands: blue, green, red, nir, swir1, swir2
    assert abs(per_band[0] - a) < 1e-6 and (np.diff(per_band) < 0).all()


def test_sensor_noise_has_the_given_sigma():
    x, _ = _scene(size=96)
    out, _ = SensorVariation(noise=0.01).apply(x, DEMO_NM, np.random.default_rng(3))
    residual = (out.astype(np.float64) - x)[x > 0.05]  # away from the clip at 0
    assert abs(residual.std() - 0.01) < 0.0005 and abs(residual.mean()) < 0.0005


def test_sensor_effects_keep_indices_in_range_and_water_wettest():
    x, classes = _scene(seed=11, size=64)
    sensor = SensorVariation(gain=(0.7, 1.3), offset=(0.0, 0.03), haze=0.05, noise=0.005, dn="uint16")
    out, _ = sensor.apply(x, DEMO_NM, np.random.default_rng(4))
    assert out.min() >= 0
    for index in (ndvi, ndwi, ndbi):
        values = index(out, "demo")
        assert np.isfinite(values).all() and values.min() >= -1 and values.max() <= 1
    if (classes == WATER).any() and (classes == VEG).any():
        w = ndwi(out, "demo")
        assert w[classes == WATER].mean() > w[classes == VEG].mean()


def test_sensor_rejects_bad_settings():
    for bad in (
        dict(gain=(0.0, 1.0)),
        dict(gain=(1.2, 1.0)),
        dict(offset=(0.1, 0.0)),
        dict(noise=-1.0),
        dict(dn="int8"),
    ):
        with pytest.raises(ValueError, match="SensorVariation"):
            SensorVariation(**bad)


def test_scene_folder_with_sensor_keeps_layouts_and_records_parameters(tmp_path):
    sensor = SensorVariation(gain=(0.8, 1.2), haze=0.02, dn="uint16")
    m = json.loads(write_scene_folder(tmp_path, n=3, size=24, bands="demo", seed=5, sensor=sensor).read_text())
    assert m["sensor"]["dn"] == "uint16" and list(m["sensor"]["gain"]) == [0.8, 1.2]
    for i, s in enumerate(m["scenes"]):
        x, classes = generate_scene(24, "demo", np.random.default_rng([5, i]))
        g, a = np.array(s["sensor"]["gain"]), s["sensor"]["haze"]
        with rasterio.open(tmp_path / s["image"]) as src:
            image = src.read()
        assert image.dtype == np.uint16
        expected = np.rint(
            (g[:, None, None] * (x.astype(np.float64) + a * (490.0 / DEMO_NM)[:, None, None] ** 4)) * 1e4
        )
        np.testing.assert_array_equal(image, expected)
        with rasterio.open(tmp_path / s["label"]) as src:
            np.testing.assert_array_equal(src.read(1), classes)


def test_generated_cache_key_includes_active_sensor_only(tmp_path):
    spec = band_spec("demo")
    plain = GeneratedData(root=str(tmp_path)).folder(spec, "paper")
    assert GeneratedData(root=str(tmp_path), sensor=SensorVariation()).folder(spec, "paper") == plain
    hazy = GeneratedData(root=str(tmp_path), sensor=SensorVariation(haze=0.05)).folder(spec, "paper")
    dn = GeneratedData(root=str(tmp_path), sensor=SensorVariation(dn="uint8")).folder(spec, "paper")
    assert len({plain, hazy, dn}) == 3


def test_uniform_scenes_are_one_class_each_equally_likely_and_off_by_default(tmp_path):
    """``uniform``: that share of scenes is one class throughout, the four classes equally likely
    (binomial bounds over 400 draws); 0 draws nothing, so every layout stays as it was."""
    from scipy.stats import binom

    from rsvlm.data.scenes import CLASS_NAMES, generate_layout

    for layout in ("blobs", "parcels", "mixed"):
        for i in range(5):
            before = generate_layout(32, np.random.default_rng([3, i]), layout)
            assert np.array_equal(generate_layout(32, np.random.default_rng([3, i]), layout, uniform=0.0), before)
    codes = [generate_layout(16, np.random.default_rng([4, i]), "mixed", uniform=1.0) for i in range(400)]
    assert all(len(np.unique(c)) == 1 for c in codes)
    counts = np.bincount([int(c[0, 0]) for c in codes], minlength=len(CLASS_NAMES))
    low, high = binom.interval(0.999, 400, 1 / len(CLASS_NAMES))
    assert ((counts >= low) & (counts <= high)).all(), counts
    share = np.mean(
        [len(np.unique(generate_layout(16, np.random.default_rng([5, i]), "mixed", 0.25))) == 1 for i in range(400)]
    )
    assert binom.interval(0.999, 400, 0.25)[0] / 400 <= share  # mixed layouts are never one class by themselves
    with pytest.raises(ValueError, match="uniform must be in"):
        generate_layout(16, np.random.default_rng(0), "blobs", uniform=1.5)
    spec = band_spec("demo")
    plain = GeneratedData(root=str(tmp_path)).folder(spec, "paper")
    assert GeneratedData(root=str(tmp_path), uniform=0.0).folder(spec, "paper") == plain
    assert GeneratedData(root=str(tmp_path), uniform=0.2).folder(spec, "paper") != plain
