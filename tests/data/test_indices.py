"""Spectral indices against their formulas, zero denominators, Otsu against scikit-image."""

import warnings

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from rsvlm.data.bands import BandError, band_spec
from rsvlm.data.indices import INDEX_FOR_CATEGORY, category_index, coarse_mask, ndbi, ndvi, ndwi, otsu_threshold

DEMO = band_spec("demo")  # blue, green, red, nir, swir1, swir2


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 1.0, size=(6, 16, 20)).astype(np.float32)


def _nd(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a - b) / (a + b)


def test_indices_equal_their_formulas(image):
    g, r, n, s1 = image[1], image[2], image[3], image[4]
    for got, want in [(ndvi(image, DEMO), _nd(n, r)), (ndwi(image, DEMO), _nd(g, n)), (ndbi(image, DEMO), _nd(s1, n))]:
        assert got.dtype == np.float32 and got.shape == (16, 20)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_indices_zero_where_denominator_zero_without_warnings(image):
    image[2, 0, 0] = image[3, 0, 0] = 0.0  # red + nir == 0
    image[1, 1, 1], image[3, 1, 1] = 0.5, -0.5  # green + nir == 0
    image[3, 2, 2] = np.nan  # non-finite input
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v, w = ndvi(image, DEMO), ndwi(image, DEMO)
    assert v[0, 0] == 0.0 and w[1, 1] == 0.0 and v[2, 2] == 0.0
    assert np.isfinite(v).all() and np.isfinite(w).all()


def test_category_index_and_aliases(image):
    assert INDEX_FOR_CATEGORY == {"vegetation": "ndvi", "water": "ndwi", "building": "ndbi"}
    np.testing.assert_array_equal(category_index(image, "Buildings", DEMO), ndbi(image, DEMO))
    np.testing.assert_array_equal(category_index(image, "water", "demo"), ndwi(image, DEMO))
    with pytest.raises(ValueError, match="unknown land-cover category 'roads'"):
        category_index(image, "roads", DEMO)


def test_ndbi_without_swir_names_the_band():
    img = np.ones((4, 3, 3), np.float32)
    with pytest.raises(BandError, match="swir1"):
        ndbi(img, "naip")
    with pytest.raises(BandError, match="swir1"):
        coarse_mask(img, "building", "naip")


def test_otsu_equals_skimage_over_valid_pixels():
    rng = np.random.default_rng(1)
    vals = np.concatenate([rng.normal(-0.5, 0.1, 300), rng.normal(0.4, 0.2, 500)]).reshape(40, 20)
    valid = rng.random((40, 20)) > 0.3
    vals_nan = vals.copy()
    vals_nan[0, :5] = np.nan  # non-finite values are ignored, not propagated
    valid_nan = valid.copy()
    valid_nan[0, :5] = True
    assert otsu_threshold(vals, valid) == threshold_otsu(vals[valid])
    expected = threshold_otsu(vals_nan[valid_nan & np.isfinite(vals_nan)])
    assert otsu_threshold(vals_nan, valid_nan) == expected
    assert otsu_threshold(vals) == threshold_otsu(vals)


def test_otsu_no_valid_pixels_is_an_error():
    with pytest.raises(ValueError, match="no valid pixels"):
        otsu_threshold(np.ones((4, 4)), np.zeros((4, 4), bool))


def test_coarse_mask_is_index_above_otsu_and_respects_validity(image):
    valid = np.ones((16, 20), bool)
    valid[:4] = False
    m = coarse_mask(image, "vegetation", DEMO, valid)
    idx = ndvi(image, DEMO)
    t = threshold_otsu(idx[valid])
    np.testing.assert_array_equal(m, (idx > t) & valid)
    assert not m[:4].any()
    # NaN in an index band makes that pixel invalid instead of entering the threshold.
    image[3, 10, 10] = np.nan
    m2 = coarse_mask(image, "vegetation", DEMO)
    assert not m2[10, 10]
    assert not coarse_mask(image, "water", DEMO, np.zeros((16, 20), bool)).any()
