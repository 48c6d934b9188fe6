"""``rsvlm data stack`` / :func:`rsvlm.data.stack.write_stack`: one-file-per-band rasters as one
GeoTIFF of named bands. Checked against the inputs read with rasterio, numpy's Kronecker
upsampling for a band on a coarser grid, :func:`read_stack` on the shipped 38-Cloud files, and
the band-name reading that predict uses."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import SHARED_DATA
from rasterio.crs import CRS

from rsvlm.cli.main import main
from rsvlm.data.bands import BandError, described_bands
from rsvlm.data.raster import RasterError, read_header, read_window
from rsvlm.data.stack import read_stack, write_stack

UTM = CRS.from_epsg(32630)
TEN_METRES = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4200000.0)


def _band(path, data: np.ndarray, transform=TEN_METRES, crs=UTM, nodata=None):
    with rasterio.open(
        path, "w", driver="GTiff", height=data.shape[0], width=data.shape[1], count=1, dtype=data.dtype,
        crs=crs, transform=transform, nodata=nodata,
    ) as dst:  # fmt: skip
        dst.write(data[None])
    return path


@pytest.fixture
def landsat_like(tmp_path):
    """Four uint16 20×24 bands on one grid, nodata 0, with a few nodata pixels in the third."""
    rng = np.random.default_rng(0)
    planes = rng.integers(100, 30000, size=(4, 20, 24), dtype=np.uint16)
    planes[2, 3:5, 7:9] = 0
    paths = [_band(tmp_path / f"B{i + 2}.TIF", planes[i], nodata=0) for i in range(4)]
    return paths, planes


def test_a_stack_holds_each_file_as_a_named_band_and_masks_what_any_band_lacks(landsat_like, tmp_path):
    paths, planes = landsat_like
    out = tmp_path / "scene.tif"
    summary = write_stack(paths, ["blue", "green", "red", "nir"], out, block=8)  # 3×3 windows, ragged edges
    assert summary.bands == ("blue", "green", "red", "nir") and summary.resampled == ()
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), planes)
        assert src.dtypes[0] == "uint16" and src.nodata == 0 and src.crs == UTM and src.transform == TEN_METRES
        assert [src.tags(i)["source"] for i in (1, 2, 3, 4)] == ["B2.TIF", "B3.TIF", "B4.TIF", "B5.TIF"]
    expected_valid = np.all(planes != 0, axis=0)
    assert not expected_valid.all()
    _, valid, _, _, _ = read_window(out)
    np.testing.assert_array_equal(valid, expected_valid)
    # predict reads the bands of a file whose descriptions name them, in any order the model wants.
    assert described_bands(read_header(out).descriptions).names == ("blue", "green", "red", "nir")


def test_scale_and_offset_give_float_reflectance_with_nan_where_a_band_has_no_data(landsat_like, tmp_path, capsys):
    paths, planes = landsat_like
    out = tmp_path / "reflectance.tif"
    args = ["data", "stack", *map(str, paths), "--bands", "blue,green,red,nir", "--out", str(out), "--no-progress"]
    assert main([*args, "--scale", "2.75e-5", "--offset", "-0.2"]) == 0  # Landsat Collection-2 Level-2
    assert "float32" in capsys.readouterr().out
    expected = (planes.astype(np.float64) * 2.75e-5 - 0.2).astype(np.float32)
    expected[planes == 0] = np.nan  # each band's own nodata
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        np.testing.assert_array_equal(src.read(), expected)
    _, valid, _, _, _ = read_window(out)
    np.testing.assert_array_equal(valid, np.all(planes != 0, axis=0))


def test_a_band_on_a_coarser_grid_is_resampled_onto_the_first(landsat_like, tmp_path):
    paths, planes = landsat_like
    rng = np.random.default_rng(1)
    swir = rng.uniform(0.0, 0.5, size=(10, 12)).astype(np.float32)  # 20 m, same footprint
    coarse = _band(tmp_path / "B11.tif", swir, transform=TEN_METRES @ Affine.scale(2))
    left = _band(tmp_path / "B12.tif", swir[:, :6].copy(), transform=TEN_METRES @ Affine.scale(2))  # half
    out = tmp_path / "scene.tif"
    summary = write_stack([paths[2], coarse, left], ["red", "swir1", "swir2"], out, resampling="nearest")
    assert summary.resampled == (str(coarse), str(left)) and summary.dtype == "float32"  # holds uint16 too
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(2), np.kron(swir, np.ones((2, 2), np.float32)))
        np.testing.assert_array_equal(src.read(1), planes[2].astype(np.float32))
        assert src.nodata is None  # the inputs do not share one: the mask alone says what is valid
    _, valid, _, _, _ = read_window(out)
    expected = planes[2] != 0  # red's nodata, which the float output cannot declare
    expected[:, 12:] = False  # outside the half-width band's footprint
    np.testing.assert_array_equal(valid, expected)


def test_bad_inputs_are_named_and_nothing_written_is_lost(landsat_like, tmp_path):
    paths, _ = landsat_like
    out = tmp_path / "scene.tif"
    with pytest.raises(BandError, match="3 files given for the 4 bands"):
        write_stack(paths[:3], ["blue", "green", "red", "nir"], out)
    with rasterio.open(
        tmp_path / "two.tif", "w", driver="GTiff", height=4, width=4, count=2, dtype="uint8"
    ) as dst:  # fmt: skip
        dst.write(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(BandError, match=r"two\.tif: expected a single-band file for band 'green'"):
        write_stack([paths[0], tmp_path / "two.tif"], ["blue", "green"], out)
    with pytest.raises(RasterError, match="the output is one of the input files"):
        write_stack(paths, ["blue", "green", "red", "nir"], paths[0])
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(RasterError, match=r"broken\.tif"):
        write_stack([paths[0], tmp_path / "broken.tif"], ["blue", "green"], out)
    ungeoreferenced = _band(tmp_path / "plain.tif", np.ones((5, 5), np.uint16), transform=Affine.identity(), crs=None)
    with pytest.raises(RasterError, match=r"plain\.tif is not on the grid of .*no CRS"):
        write_stack([paths[0], ungeoreferenced], ["blue", "green"], out)
    assert not out.exists() and not list(tmp_path.glob(".scene.tif.*"))  # no partial file left

    write_stack(paths, ["blue", "green", "red", "nir"], out)
    before = out.read_bytes()
    with pytest.raises(RasterError, match="exists; pass overwrite=True"):
        write_stack(paths[::-1], ["nir", "red", "green", "blue"], out)
    assert out.read_bytes() == before
    write_stack(paths[::-1], ["nir", "red", "green", "blue"], out, overwrite=True)
    assert read_header(out).descriptions == ("nir", "red", "green", "blue")


def test_cli_stack_prints_what_it_wrote_and_errors_in_one_line(landsat_like, tmp_path, capsys):
    paths, planes = landsat_like
    out = tmp_path / "cli.tif"
    args = ["data", "stack", *map(str, paths), "--bands", "blue,green,red,nir", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "cli.tif: 4 bands (blue, green, red, nir), 20×24, uint16" in capsys.readouterr().out
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cli.tif exists" in err


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real sample data not found at {SHARED_DATA} (../shared/data)")
def test_the_shipped_38cloud_bands_stack_as_read_stack_reads_them(tmp_path):
    folder = SHARED_DATA / "38cloud-landsat8"
    suffix = "patch_192_10_by_12_LC08_L1TP_002053_20160520_20170324_01_T1.TIF"
    order = ["red", "green", "blue", "nir"]
    paths = [folder / f"{band}_{suffix}" for band in order]
    write_stack(paths, order, tmp_path / "cloud.tif", block=100)
    reference = read_stack(paths, order)
    data, valid, _, _, _ = read_window(tmp_path / "cloud.tif")
    np.testing.assert_array_equal(data, reference.data)
    np.testing.assert_array_equal(valid, reference.valid)
