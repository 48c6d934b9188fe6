"""Raster IO: nodata/NaN validity, band-count errors, stacks, labels, atomic mask writing."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from rsvlm.data.bands import BandError, band_spec
from rsvlm.data.raster import Raster, RasterError, read_mask, read_raster, write_mask
from rsvlm.data.stack import read_stack

CRS_UTM = CRS.from_epsg(32631)
TRANSFORM = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5750000.0)


def _write(path, data, nodata=None, crs=CRS_UTM, transform=TRANSFORM):
    profile = dict(
        driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=data.dtype, nodata=nodata
    )
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return str(path)


def test_read_int16_with_declared_nodata(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 5000, size=(4, 8, 9)).astype(np.int16)
    data[2, 3, 4] = 0  # nodata in one band only
    p = _write(tmp_path / "s2.tif", data, nodata=0)
    r = read_raster(p, bands="gaofen2")
    assert r.data.dtype == np.float32 and r.data.shape == (4, 8, 9)
    np.testing.assert_array_equal(r.data, data.astype(np.float32))
    expected_valid = np.all(data != 0, axis=0)
    np.testing.assert_array_equal(r.valid, expected_valid)
    assert not r.valid[3, 4] and r.valid.sum() == 8 * 9 - 1
    assert r.crs == CRS_UTM and r.transform == TRANSFORM and r.nodata == 0.0 and r.path == p
    np.testing.assert_array_equal(r.band("nir"), data[3].astype(np.float32))


def test_nan_pixels_are_invalid_with_or_without_declared_nodata(tmp_path):
    data = np.ones((2, 5, 5), np.float32)
    data[0, 1, 1] = np.nan
    data[1, 2, 2] = np.inf
    for nodata in (None, np.nan):
        r = read_raster(_write(tmp_path / f"f{nodata}.tif", data, nodata=nodata))
        expected = np.isfinite(data).all(axis=0)
        np.testing.assert_array_equal(r.valid, expected)
        assert r.bands is None


def test_complex_input_becomes_amplitude(tmp_path):
    z = (np.arange(12, dtype=np.float32) - 3 + 1j * np.arange(12, dtype=np.float32)).reshape(1, 3, 4)
    r = read_raster(_write(tmp_path / "slc.tif", z.astype(np.complex64)))
    np.testing.assert_allclose(r.data, np.abs(z), rtol=1e-6)
    assert r.data.dtype == np.float32


def test_band_count_mismatch_names_file_spec_and_count(tmp_path):
    p = _write(tmp_path / "three.tif", np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(BandError) as ei:
        read_raster(p, bands="naip")
    msg = str(ei.value)
    assert p in msg and "red, green, blue, nir" in msg and "found 3 bands" in msg


def test_missing_band_error_names_file(tmp_path):
    p = _write(tmp_path / "rgbn.tif", np.zeros((4, 4, 4), np.uint8))
    r = read_raster(p, bands="naip")
    with pytest.raises(BandError, match=f"swir1.*{p}"):
        r.band("swir1")


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_file_is_a_raster_error_naming_the_path(tmp_path, kind):
    good = _write(tmp_path / "good.tif", np.random.default_rng(0).random((3, 64, 64)).astype(np.float32))
    raw = Path(good).read_bytes()
    bad = tmp_path / f"{kind}.tif"
    bad.write_bytes(raw[: len(raw) // 2] if kind == "truncated" else b"not a tiff at all")
    with pytest.raises(RasterError, match=str(bad)):
        read_raster(bad)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_raster(tmp_path / "nope.tif")


def test_read_stack_one_file_per_band(tmp_path):
    rng = np.random.default_rng(2)
    planes = rng.integers(0, 60000, size=(4, 6, 7)).astype(np.uint16)
    paths = [
        _write(tmp_path / f"{n}.tif", planes[i : i + 1], crs=None)
        for i, n in enumerate(["red", "green", "blue", "nir"])
    ]
    r = read_stack(paths, "naip")
    np.testing.assert_array_equal(r.data, planes.astype(np.float32))
    assert r.crs is None and r.transform is None and r.sources == tuple(paths)
    with pytest.raises(BandError, match="3 files"):
        read_stack(paths[:3], "naip")
    other = _write(tmp_path / "small.tif", planes[:1, :5], crs=None)
    with pytest.raises(RasterError, match="small.tif.*red.tif"):
        read_stack(paths[:3] + [other], "naip")


def test_read_mask_validity_and_size_check(tmp_path):
    lab = np.array([[-1, 0, 1], [1, 0, -1]], np.int16)[None]
    img = read_raster(_write(tmp_path / "img.tif", np.ones((2, 2, 3), np.float32)))
    values, valid = read_mask(_write(tmp_path / "lab.tif", lab), like=img)
    np.testing.assert_array_equal(valid, lab[0] >= 0)
    np.testing.assert_array_equal(values, np.where(lab[0] >= 0, lab[0], 0).astype(np.uint8))
    assert values.dtype == np.uint8
    _, valid0 = read_mask(tmp_path / "lab.tif", invalid_values=(0,))
    np.testing.assert_array_equal(valid0, lab[0] > 0)
    wrong = _write(tmp_path / "wrong.tif", np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(RasterError, match="wrong.tif.*img.tif"):
        read_mask(wrong, like=img)


def test_write_mask_round_trip_keeps_georeferencing(tmp_path):
    src = read_raster(_write(tmp_path / "src.tif", np.ones((3, 10, 12), np.float32)))
    mask = np.random.default_rng(3).random((10, 12)) > 0.5
    out = write_mask(tmp_path / "out" / "mask.tif", mask, like=src)
    with rasterio.open(out) as ds:
        assert ds.crs == CRS_UTM and ds.transform == TRANSFORM
        assert ds.dtypes[0] == "uint8" and ds.count == 1
        assert ds.compression.value.lower() == "deflate"
        np.testing.assert_array_equal(ds.read(1), mask.astype(np.uint8))
    back, _ = read_mask(out, like=src)
    np.testing.assert_array_equal(back, mask)
    # No temp files are left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mask.tif"]


def test_write_mask_refuses_source_and_existing_output(tmp_path):
    p = _write(tmp_path / "src.tif", np.ones((1, 4, 4), np.float32))
    src = read_raster(p)
    mask = np.ones((4, 4), bool)
    with pytest.raises(RasterError, match="source"):
        write_mask(p, mask, like=src, overwrite=True)
    out = write_mask(tmp_path / "m.tif", mask, like=src)
    with pytest.raises(RasterError, match="exists"):
        write_mask(out, mask, like=src)
    write_mask(out, ~mask, like=src, overwrite=True)
    assert read_mask(out)[0].sum() == 0
    with pytest.raises(RasterError, match="4, 4"):
        write_mask(tmp_path / "bad.tif", np.ones((3, 4), bool), like=src)


def test_write_mask_without_georeferencing(tmp_path):
    src = Raster(data=np.zeros((1, 3, 3), np.float32), valid=np.ones((3, 3), bool))
    out = write_mask(tmp_path / "plain.tif", np.eye(3, dtype=bool), like=src)
    r = read_raster(out)
    assert r.crs is None and r.transform is None
    np.testing.assert_array_equal(r.data[0], np.eye(3))


def test_raster_checks_shapes():
    with pytest.raises(RasterError, match="H×W"):
        Raster(data=np.zeros((2, 3, 3), np.float32), valid=np.ones((3, 4), bool))
    with pytest.raises(BandError):
        Raster(data=np.zeros((2, 3, 3), np.float32), valid=np.ones((3, 3), bool), bands=band_spec("rgb"))
