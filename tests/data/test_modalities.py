"""Multisource conversions (``rsvlm.data.modalities``) against formulas written out here, and the
shipped SAR / thermal samples read with the right dtype, shape and physically plausible values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import SHARED_DATA
from rasterio.crs import CRS

from rsvlm.data.modalities import (
    LANDSAT8_B10_AL,
    LANDSAT8_B10_K1,
    LANDSAT8_B10_K2,
    LANDSAT8_B10_ML,
    MODALITIES,
    Modality,
    ModalityError,
    amplitude_to_intensity,
    brightness_temperature,
    capella_scale_factor,
    complex_to_intensity,
    db_to_intensity,
    dn_to_radiance,
    intensity_to_db,
    landsat_st_to_kelvin,
    multilook,
    read_s1_db,
    read_slc,
    read_spacenet6_slc,
    to_model_input,
)
from rsvlm.data.raster import read_mask, read_raster

SPACENET = SHARED_DATA / "spacenet6-sar-solaris"
SEN1FLOODS = SHARED_DATA / "sen1floods11-spain"
LANDSAT = SHARED_DATA / "landsat8-labelled-spectra"


def needs(folder: Path):
    return pytest.mark.skipif(not folder.is_dir(), reason=f"shared real data not present: {folder}")


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def write_tif(path: Path, data: np.ndarray, description: str | None = None, origin: float = 500000.0) -> Path:
    profile = dict(
        driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=data.dtype.name
    )
    with rasterio.open(
        path, "w", **profile, crs=CRS.from_epsg(32631), transform=Affine(2.5, 0.0, origin, 0.0, -2.5, 5.7e6)
    ) as dst:
        dst.write(data)
        if description is not None:
            dst.update_tags(TIFFTAG_IMAGEDESCRIPTION=description)
    return path


# ----------------------------------------------------------------------------- SAR conversions
def test_complex_and_amplitude_to_intensity_match_the_power_formula() -> None:
    rng = np.random.default_rng(0)
    z = (rng.integers(-32767, 32767, (2, 5, 6)) + 1j * rng.integers(-32767, 32767, (2, 5, 6))).astype(np.complex64)
    k = 2.78e-4
    reference = np.abs(z.astype(np.complex128) * k) ** 2  # |z·k|², computed through the modulus
    np.testing.assert_allclose(complex_to_intensity(z, k), reference, rtol=1e-6)
    np.testing.assert_allclose(amplitude_to_intensity(np.abs(z), k), reference, rtol=1e-5)
    assert complex_to_intensity(z, k).dtype == np.float32
    with pytest.raises(ModalityError, match="complex"):
        complex_to_intensity(np.abs(z))


def test_intensity_to_db_floor_clip_and_inverse() -> None:
    x = np.array([1.0, 0.1, 1e-3, 0.0, -1.0, np.nan, 50.0])
    db = intensity_to_db(x)
    expected = [0.0, -10.0, -30.0, -100.0, -100.0]  # 10·log10 by hand; 0 and <0 hit the 1e-10 floor
    np.testing.assert_allclose(db[:5], expected, atol=1e-5)
    assert np.isnan(db[5])
    assert db[6] == pytest.approx(10 * math.log10(50.0), abs=1e-5)
    clipped = intensity_to_db(x, clip=(-25.0, 0.0))
    np.testing.assert_allclose(clipped[[0, 1, 2, 3, 6]], [0.0, -10.0, -25.0, -25.0, 0.0], atol=1e-5)
    assert intensity_to_db(np.array([0.0]), floor=1e-3)[0] == pytest.approx(-30.0)
    back = db_to_intensity(np.array([-20.0, 3.0]))
    np.testing.assert_allclose(back, [0.01, 10**0.3], rtol=1e-6)


def brute_force_multilook(x: np.ndarray, ly: int, lx: int) -> np.ndarray:
    h, w = x.shape[-2] // ly, x.shape[-1] // lx
    out = np.zeros((*x.shape[:-2], h, w))
    for i in range(h):
        for j in range(w):
            block = x[..., i * ly : (i + 1) * ly, j * lx : (j + 1) * lx]
            out[..., i, j] = block.sum(axis=(-2, -1)) / (ly * lx)
    return out


@pytest.mark.parametrize("shape, looks", [((7, 10), (2, 3)), ((3, 8, 8), (4, 1)), ((2, 9, 5), (3, 5))])
def test_multilook_matches_a_brute_force_loop(shape: tuple[int, ...], looks: tuple[int, int]) -> None:
    x = np.random.default_rng(1).exponential(1.0, shape)
    out = multilook(x, *looks)
    np.testing.assert_allclose(out, brute_force_multilook(x, *looks), rtol=1e-6)
    assert out.shape == (*shape[:-2], shape[-2] // looks[0], shape[-1] // looks[1])


def test_multilook_averages_power_not_decibels() -> None:
    intensity = np.array([[1.0, 100.0]])
    # mean power 50.5 is 17.03 dB; the mean of the dB values (0, 20) would be 10 dB
    assert intensity_to_db(multilook(intensity, 1, 2))[0, 0] == pytest.approx(10 * math.log10(50.5), abs=1e-4)
    with pytest.raises(ModalityError, match="complex_to_intensity"):
        multilook(np.ones((4, 4), np.complex64), 2, 2)
    with pytest.raises(ModalityError, match="do not fit"):
        multilook(np.ones((2, 2)), 3, 1)


# ------------------------------------------------------------------------- thermal conversions
def test_landsat_st_dn_to_kelvin_and_fill() -> None:
    dn = np.array([0, 1, 40000, 65535], dtype=np.uint16)
    kelvin = landsat_st_to_kelvin(dn)
    assert np.isnan(kelvin[0])  # Collection-2 fill value
    np.testing.assert_allclose(kelvin[1:], [149.0 + 0.00341802, 149.0 + 136.7208, 149.0 + 224.00093], atol=1e-3)
    assert landsat_st_to_kelvin(dn, fill=None)[0] == pytest.approx(149.0)


def test_brightness_temperature_against_a_hand_computed_value() -> None:
    # L = 10: K1/L + 1 = 78.48853, ln = 4.362950, T = 1321.0789 / 4.362950 = 302.7947 K
    assert brightness_temperature(np.array([10.0]))[0] == pytest.approx(302.7947, abs=1e-3)
    assert (LANDSAT8_B10_K1, LANDSAT8_B10_K2) == (774.8853, 1321.0789)
    # DN 30000 → L = 3.342e-4·30000 + 0.1 = 10.126
    assert dn_to_radiance(np.array([30000]), LANDSAT8_B10_ML, LANDSAT8_B10_AL)[0] == pytest.approx(10.126, abs=1e-5)
    assert np.isnan(brightness_temperature(np.array([0.0, -1.0]))).all()


def test_brightness_temperature_inverts_planck() -> None:
    kelvin = np.linspace(250.0, 330.0, 9)
    radiance = LANDSAT8_B10_K1 / (np.exp(LANDSAT8_B10_K2 / kelvin) - 1.0)  # the band's Planck form
    np.testing.assert_allclose(brightness_temperature(radiance), kelvin, atol=1e-3)


# ----------------------------------------------------------------------------- to_model_input
def test_sentinel1_preset_clips_then_z_scores() -> None:
    db = np.stack([np.full((2, 3), -10.0), np.full((2, 3), -40.0)]).astype(np.float32)
    db[0, 0, 0] = 12.0  # a corner reflector above the VV clip
    db[1, 1, 2] = np.nan
    x, valid = to_model_input(db, "sentinel1_db")
    assert x.dtype == np.float32 and x.shape == (2, 2, 3) and valid.shape == (2, 3)
    assert valid.sum() == 5 and not valid[1, 2]
    assert x[0, 0, 1] == pytest.approx((-10.0 + 20.26) / 5.91, abs=1e-6)
    assert x[0, 0, 0] == pytest.approx((0.0 + 20.26) / 5.91, abs=1e-6)  # VV clipped at 0 dB
    assert x[1, 0, 0] == pytest.approx((-32.0 + 20.26) / 5.91, abs=1e-6)  # VH clipped at −32 dB
    assert (x[:, 1, 2] == 0).all()  # invalid pixels are 0 after normalisation


def test_minmax_and_scale_presets() -> None:
    kelvin = np.array([[[240.0, 290.0, 330.0, -9999.0]]])
    x, valid = to_model_input(kelvin, "infrared_kelvin", nodata=-9999.0)
    np.testing.assert_allclose(x[0, 0, :3], [0.0, 0.5, 1.0], atol=1e-6)
    assert valid.tolist() == [[True, True, True, False]] and x[0, 0, 3] == 0
    rgb = np.full((3, 2, 2), 51, np.uint8)
    x, valid = to_model_input(rgb, "optical_dn8", valid=np.array([[True, False], [True, True]]))
    assert x[0, 0, 0] == pytest.approx(0.2) and x[0, 0, 1] == 0 and valid.sum() == 3
    s1 = np.stack([np.full((1, 1), -12.5), np.full((1, 1), -18.5)])
    x, _ = to_model_input(s1, "sentinel1_db_minmax")
    np.testing.assert_allclose(x[:, 0, 0], [0.5, 0.5], atol=1e-6)  # mid-range of [−25, 0] and [−32, −5]


def test_channel_count_errors_name_the_file_and_field() -> None:
    with pytest.raises(ModalityError) as exc:
        to_model_input(np.zeros((3, 4, 4)), "sentinel1_db", source="scene_007.tif")
    message = one_line(exc)
    assert "scene_007.tif" in message and "'image'" in message and "1–2" in message
    with pytest.raises(ModalityError) as exc:
        to_model_input(np.zeros((2, 4, 4)), "infrared_kelvin", source="ir.tif", field="thermal")
    assert "ir.tif" in one_line(exc) and "'thermal'" in str(exc.value)
    with pytest.raises(ModalityError, match="complex"):
        to_model_input(np.zeros((1, 4, 4), np.complex64), "sentinel1_db")
    with pytest.raises(ModalityError, match="unknown modality preset"):
        to_model_input(np.zeros((1, 4, 4)), "lidar")
    with pytest.raises(ModalityError, match="minmax"):
        Modality("sar", "dB", norm="minmax")
    x, _ = to_model_input(np.zeros((4, 4)), "infrared_dn8")  # H×W is one channel
    assert x.shape == (1, 4, 4)


def test_presets_are_the_spec_values() -> None:
    s1 = MODALITIES["sentinel1_db"]
    assert (s1.mean, s1.std, s1.clip) == ((-20.26,), (5.91,), ((-25.0, 0.0), (-32.0, -5.0)))
    assert MODALITIES["infrared_kelvin"].clip == ((250.0, 330.0),)
    assert {m.name for m in MODALITIES.values()} == {"optical", "sar", "infrared"}


# ------------------------------------------------------------------------------------ readers
def test_read_slc_errors_and_iq_layout(tmp_path: Path) -> None:
    z = (np.arange(12).reshape(1, 3, 4) + 1j * np.ones((1, 3, 4))).astype(np.complex64)
    good = write_tif(tmp_path / "hh.tif", z, json.dumps({"collect": {"image": {"scale_factor": 0.5}}}))
    chip = read_slc([good], pols=["hh"])
    assert chip.data.dtype == np.complex64 and chip.scale == (0.5,)
    np.testing.assert_allclose(chip.intensity()[0], (np.arange(12).reshape(3, 4) ** 2 + 1) * 0.25, rtol=1e-6)
    iq = write_tif(tmp_path / "iq.tif", np.concatenate([z.real, z.imag]).astype(np.float32))
    np.testing.assert_array_equal(read_slc([iq], iq=True).data, z)
    with pytest.raises(ModalityError) as exc:
        read_slc([iq])
    assert "iq.tif" in one_line(exc) and "complex" in str(exc.value)
    moved = write_tif(tmp_path / "hv.tif", z, origin=500100.0)
    with pytest.raises(ModalityError) as exc:
        read_slc([good, moved])
    assert "hv.tif" in one_line(exc) and "hh.tif" in str(exc.value)
    assert capella_scale_factor(None, "x.tif") == 1.0
    with pytest.raises(ModalityError, match="x.tif"):
        capella_scale_factor('{"collect": {}}', "x.tif")


def test_read_s1_db_refuses_linear_backscatter(tmp_path: Path) -> None:
    linear = write_tif(tmp_path / "linear.tif", np.full((2, 4, 4), 0.05, np.float32))
    with pytest.raises(ModalityError) as exc:
        read_s1_db(linear)
    assert "linear.tif" in one_line(exc)


@needs(SPACENET)
def test_spacenet6_slc_chip_reads_as_calibrated_complex() -> None:
    chip = read_spacenet6_slc(SPACENET)
    assert chip.data.dtype == np.complex64 and chip.data.shape == (4, 200, 200)
    assert chip.pols == ("hh", "hv", "vh", "vv")
    # README: HH 2.78e-4, VV 2.81e-4, HV 5.99e-5, VH 8.07e-5
    np.testing.assert_allclose(chip.scale, [2.78e-4, 5.99e-5, 8.07e-5, 2.81e-4], rtol=3e-3)
    intensity = chip.intensity()
    assert np.isfinite(intensity).all() and (intensity > 0).all()
    # the raster reader's amplitude, squared and calibrated, is the same intensity
    amplitude = read_raster(SPACENET / "sar_hh.tif").data[0]
    np.testing.assert_allclose(amplitude_to_intensity(amplitude, chip.scale[0]), intensity[0], rtol=1e-4)
    db = intensity_to_db(intensity)
    medians = np.median(db.reshape(4, -1), axis=1)
    assert ((medians > -30) & (medians < 0)).all(), medians
    assert medians[0] > medians[1] and medians[3] > medians[2]  # co-pol returns more than cross-pol


@needs(SPACENET)
def test_multilooking_the_real_slc_reduces_speckle() -> None:
    intensity = read_spacenet6_slc(SPACENET, pols=("vv",)).intensity()[0]
    looked = multilook(intensity, 4, 4)
    assert looked.shape == (50, 50)
    assert looked.mean() == pytest.approx(intensity.mean(), rel=1e-5)  # 200 = 50·4: nothing dropped
    assert looked.std() / looked.mean() < intensity.std() / intensity.mean()


@needs(SEN1FLOODS)
def test_sen1floods11_s1_chip_is_backscatter_in_db() -> None:
    raster = read_s1_db(SEN1FLOODS / "Spain_7370579_S1Hand.tif")
    assert raster.data.dtype == np.float32 and raster.data.shape == (2, 512, 512)
    assert raster.bands.names == ("vv", "vh")
    vv, vh = raster.data[0][raster.valid], raster.data[1][raster.valid]
    for band in (vv, vh):
        assert np.mean((band >= -30) & (band <= 5)) > 0.9
    assert np.median(vv) > np.median(vh)
    labels, lvalid = read_mask(SEN1FLOODS / "Spain_7370579_LabelHand.tif", like=raster)
    water, land = (labels == 1) & lvalid, (labels == 0) & lvalid
    assert raster.data[0][water].mean() < raster.data[0][land].mean() - 3  # open water is dark in VV
    x, valid = to_model_input(raster.data, "sentinel1_db", valid=raster.valid, source=raster.path)
    assert (valid == raster.valid).all() and np.isfinite(x).all()
    assert abs(float(x[:, valid].mean())) < 1.5  # the S1 z-score centres real backscatter


@needs(LANDSAT)
def test_landsat_thermal_pixels_are_plausible_kelvin() -> None:
    features = np.load(LANDSAT / "spectra_features.npy")
    labels = np.load(LANDSAT / "spectra_labels.npy")
    kelvin = features[:, 7]  # ST_B10, already converted to kelvin by the source (README)
    assert ((kelvin >= 250) & (kelvin <= 340)).all()
    # back to Collection-2 DNs and through the conversion: within half a DN step
    dn = np.round((kelvin - 149.0) / 0.00341802).astype(np.uint16)
    np.testing.assert_allclose(landsat_st_to_kelvin(dn), kelvin, atol=0.00341802 / 2 + 1e-4)
    assert kelvin[labels == 1].mean() > kelvin[labels == 2].mean()  # urban warmer than water
    x, valid = to_model_input(kelvin[None, None].astype(np.float32), "infrared_kelvin")
    assert valid.all() and ((x >= 0) & (x <= 1)).all()
