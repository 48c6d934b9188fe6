"""Band specs: presets, lookups by name and the errors that name band, spec and file."""

import numpy as np
import pytest

from rsvlm.data.bands import PRESETS, BandError, BandSpec, band_spec


def test_sentinel2_preset_matches_sen1floods11_order():
    # Sen1Floods11 S2Hand: B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9, B10, B11, B12.
    s2 = band_spec("sentinel2")
    assert len(s2) == 13
    assert [s2[n] for n in ("blue", "green", "red", "nir", "swir1", "swir2")] == [1, 2, 3, 7, 11, 12]
    assert s2["nir08"] == 8 and s2["cirrus"] == 10 and s2["coastal"] == 0


@pytest.mark.parametrize(
    "name,expected",
    [
        (
            "sentinel2-10band",
            ("blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir1", "swir2"),
        ),
        ("landsat8", ("coastal", "blue", "green", "red", "nir", "swir1", "swir2")),
        ("landsat9", ("coastal", "blue", "green", "red", "nir", "swir1", "swir2")),
        ("landsat8-thermal", ("coastal", "blue", "green", "red", "nir", "swir1", "swir2", "thermal")),
        ("gaofen2", ("blue", "green", "red", "nir")),
        ("naip", ("red", "green", "blue", "nir")),
        ("chesapeake", ("red", "green", "blue", "nir")),
        ("worldview3", ("coastal", "blue", "green", "yellow", "red", "rededge", "nir", "nir2")),
        ("rgb", ("red", "green", "blue")),
        ("demo", ("blue", "green", "red", "nir", "swir1", "swir2")),
    ],
)
def test_presets(name, expected):
    assert band_spec(name).names == expected
    assert band_spec(name.upper()) == PRESETS[name]


def test_band_spec_from_list_string_and_spec():
    spec = band_spec(["red", "nir"])
    assert spec == BandSpec(("red", "nir"))
    assert band_spec("red, nir") == spec
    assert band_spec("NIR") == BandSpec(("nir",))  # one band name (a SAR file, one file of a stack)
    assert band_spec(spec) is spec
    assert spec.has("nir") and not spec.has("swir1") and "red" in spec
    assert list(spec) == ["red", "nir"]


def test_take_by_name_numpy_and_batched():
    spec = band_spec("naip")
    img = np.arange(4 * 2 * 3).reshape(4, 2, 3)
    np.testing.assert_array_equal(spec.take(img, "nir"), img[3])
    batch = np.stack([img, img + 100])
    np.testing.assert_array_equal(spec.take(batch, "green"), batch[:, 1])


def test_missing_band_error_names_band_spec_and_file():
    spec = band_spec("naip").with_source("/data/tile.tif")
    with pytest.raises(BandError) as ei:
        spec["swir1"]
    msg = str(ei.value)
    assert "swir1" in msg and "red, green, blue, nir" in msg and "/data/tile.tif" in msg
    assert isinstance(ei.value, KeyError) and ei.value.band == "swir1"
    # Equality ignores the source file.
    assert spec == band_spec("naip")


def test_take_rejects_wrong_band_count():
    with pytest.raises(BandError, match="expected 4 bands.*found 3 bands"):
        band_spec("naip").take(np.zeros((3, 2, 2)), "red")


def test_invalid_specs():
    with pytest.raises(ValueError, match="duplicate"):
        BandSpec(("red", "red"))
    with pytest.raises(ValueError, match="non-empty"):
        BandSpec(("red", ""))
    with pytest.raises(TypeError):
        BandSpec("red")
    with pytest.raises(BandError, match="unknown band preset 'sentinel3'.*sentinel2"):
        band_spec("sentinel3")
