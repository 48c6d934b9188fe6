"""Picture helpers: formulas, value ranges and the files they write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from PIL import Image

from rsvlm.io.pictures import (
    composite,
    composite_or_stretch,
    error_map,
    overlay,
    plot_curves,
    save_error_figure,
    save_mask_figure,
    save_png,
    stretch,
)

DATA = SHARED_DATA
NAIP = DATA / "chesapeake-naip-geobench" / "id_000051_image.npy"


def _read_png(path: Path) -> Image.Image:
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img


def test_overlay_matches_numpy_formula():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    mask = rng.random((9, 7)) > 0.5
    color, alpha = (10, 200, 90), 0.3
    got = overlay(rgb, mask, color=color, alpha=alpha)
    expected = np.where(mask[..., None], np.rint(0.7 * rgb + 0.3 * np.array(color)), rgb).astype(np.uint8)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        overlay(rgb, torch.from_numpy(mask), alpha=1.0)[mask], np.tile([255, 0, 0], (mask.sum(), 1))
    )


def test_stretch_range_and_percentiles():
    rng = np.random.default_rng(1)
    bands = rng.normal(100.0, 30.0, size=(3, 20, 30)).astype(np.float32)
    out = stretch(bands)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    for c in range(3):
        lo, hi = np.percentile(bands[c], [2, 98])
        expected = np.rint(np.clip((bands[c].astype(np.float64) - lo) / (hi - lo), 0, 1) * 255)
        np.testing.assert_array_equal(out[..., c], expected.astype(np.uint8))
        assert out[..., c].min() == 0 and out[..., c].max() == 255
    # ~2% of pixels fall at or below the low percentile.
    assert 0.01 < (out[..., 0] == 0).mean() < 0.04


def test_stretch_grey_constant_and_nan():
    band = np.arange(16, dtype=np.float64).reshape(1, 4, 4)
    band[0, 0, 0] = np.nan
    grey = stretch(band, percentiles=(0, 100))
    assert grey[0, 0].tolist() == [0, 0, 0]
    assert (grey[..., 0] == grey[..., 1]).all() and grey.max() == 255
    assert stretch(np.full((3, 2, 2), 5.0)).max() == 0
    with pytest.raises(ValueError, match="C = 1 or 3"):
        stretch(np.zeros((4, 2, 2)))


def test_composite_picks_named_bands():
    rng = np.random.default_rng(2)
    image = rng.random((4, 6, 5))
    names = ["Blue", "Green", "Red", "NIR"]
    np.testing.assert_array_equal(composite(image, names, "true"), stretch(image[[2, 1, 0]]))
    np.testing.assert_array_equal(composite(torch.from_numpy(image), names, "false"), stretch(image[[3, 2, 1]]))
    with pytest.raises(ValueError, match="needs band 'nir'"):
        composite(image[:3], ["red", "green", "blue"], "false")
    with pytest.raises(ValueError, match="len\\(band_names\\)"):
        composite(image, ["red", "green", "blue"], "true")


def _reference_stretch(bands: np.ndarray) -> np.ndarray:
    """Brute-force 2–98 % stretch of each band to uint8, bands last (one band repeated to grey)."""
    channels = []
    for band in bands.astype(np.float64):
        lo, hi = np.percentile(band, [2, 98])
        channels.append(np.rint(np.clip((band - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))
    if len(channels) == 1:
        channels *= 3
    return np.stack(channels, axis=-1)


def test_composite_or_stretch_falls_back_from_true_to_false_colour_to_grey():
    rng = np.random.default_rng(5)
    image = rng.normal(1000.0, 200.0, size=(5, 9, 7))
    # True colour whenever red, green and blue are named (any order, any case).
    names = ["NIR", "blue", "SWIR1", "Red", "green"]
    np.testing.assert_array_equal(composite_or_stretch(image, names), _reference_stretch(image[[3, 4, 1]]))
    # No blue: false colour (nir, red, green).
    names = ["nir", "swir1", "red", "green", "swir2"]
    np.testing.assert_array_equal(composite_or_stretch(image, names), _reference_stretch(image[[0, 2, 3]]))
    # Neither, or unknown bands: the first band in grey.
    grey = _reference_stretch(image[:1])
    np.testing.assert_array_equal(composite_or_stretch(image, ["vv", "vh", "a", "b", "c"]), grey)
    np.testing.assert_array_equal(composite_or_stretch(torch.from_numpy(image), None), grey)
    # A required composite names the missing band instead of falling back.
    with pytest.raises(ValueError, match="true-colour composite needs bands.*'blue'"):
        composite_or_stretch(image, ["nir", "swir1", "red", "green", "swir2"], kind="true")
    np.testing.assert_array_equal(
        composite_or_stretch(image, ["blue", "green", "red", "nir", "x"], kind="false"),
        _reference_stretch(image[[3, 2, 1]]),
    )


def test_save_png_round_trip_and_refuses_overwrite(tmp_path):
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 256, size=(11, 13, 3), dtype=np.uint8)
    path = tmp_path / "out" / "pic.png"
    save_png(path, picture)
    img = _read_png(path)
    assert img.size == (13, 11)
    np.testing.assert_array_equal(np.asarray(img), picture)

    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_png(path, np.zeros_like(picture))
    np.testing.assert_array_equal(np.asarray(_read_png(path)), picture)
    save_png(path, np.zeros_like(picture), overwrite=True)
    assert np.asarray(_read_png(path)).max() == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["pic.png"]  # no temp files left

    mask = rng.random((5, 4)) > 0.5
    save_png(tmp_path / "mask.png", mask)
    np.testing.assert_array_equal(np.asarray(_read_png(tmp_path / "mask.png")), mask.astype(np.uint8) * 255)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        save_png(tmp_path / "bad.png", np.zeros((3, 3, 2), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("with_target", [True, False])
def test_save_mask_figure_size(tmp_path, with_target):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    pred = rng.random((16, 16)) > 0.5
    path = save_mask_figure(tmp_path / "fig.png", rgb, pred, pred if with_target else None, panel_inches=1.5, dpi=40)
    panels = 3 if with_target else 2
    assert _read_png(path).size == (60 * panels, 60)
    with pytest.raises(FileExistsError):
        save_mask_figure(path, rgb, pred)


def test_error_map_colours_each_pixel_by_its_case():
    """Brute force, pixel by pixel: dark where not scored, then green / red / blue by case."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    pred, target, valid = (rng.random((6, 8)) > 0.5 for _ in range(3))
    got = error_map(rgb, pred, target, valid, alpha=0.6)

    def blend(pixel: np.ndarray, color: tuple[int, int, int], alpha: float) -> np.ndarray:
        return np.rint((1 - alpha) * pixel.astype(np.float64) + alpha * np.array(color, np.float64))

    for y in range(6):
        for x in range(8):
            pixel = rgb[y, x]
            if not valid[y, x]:
                expected = blend(pixel, (0, 0, 0), 0.5)
            elif pred[y, x] and target[y, x]:
                expected = blend(pixel, (0, 200, 0), 0.6)
            elif pred[y, x]:
                expected = blend(pixel, (255, 0, 0), 0.6)
            elif target[y, x]:
                expected = blend(pixel, (0, 120, 255), 0.6)
            else:
                expected = pixel
            np.testing.assert_array_equal(got[y, x], expected.astype(np.uint8), err_msg=f"pixel {y, x}")
    with pytest.raises(ValueError, match="share H×W"):
        error_map(rgb, pred, target[:, :4])


def test_save_error_figure_size_and_no_silent_overwrite(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    mask = np.eye(16, dtype=bool)
    path = tmp_path / "errors.png"
    save_error_figure(path, rgb, mask, {"a": mask, "b": ~mask}, title="t", panel_inches=2.0, dpi=50)
    assert _read_png(path).size == (4 * 100, 140)  # 4 panels of 2 in at 50 dpi; + 0.8 in of titles
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_error_figure(path, rgb, mask, {"a": ~mask}, panel_inches=2.0, dpi=50)
    assert path.read_bytes() == before


def test_plot_curves(tmp_path):
    path = plot_curves(
        tmp_path / "curves.png",
        [1, 2, 3],
        {"train": [1.0, 0.5, 0.3], "val": [1.1, 0.7, 0.6]},
        "epoch",
        "loss",
        figsize=(3, 2),
        dpi=50,
    )
    assert _read_png(path).size == (150, 100)
    with pytest.raises(ValueError, match="series 'val' has 2 values"):
        plot_curves(tmp_path / "bad.png", [1, 2, 3], {"val": [1.0, 2.0]}, "epoch", "loss")
    with pytest.raises(FileExistsError):
        plot_curves(path, [1], {"a": [1.0]}, "x", "y")


def test_real_naip_composites(tmp_path):
    if not NAIP.exists():
        pytest.skip(f"shared data not found at {NAIP} (it lives beside the repository, not in it)")
    image = np.load(NAIP)  # uint8 R, G, B, NIR
    names = ["red", "green", "blue", "nir"]
    true, false = composite(image, names, "true"), composite(image, names, "false")
    assert true.shape == false.shape == (256, 256, 3)
    # False colour puts NIR in the red channel: equal to the stretched NIR band.
    np.testing.assert_array_equal(false[..., 0], stretch(image[[3, 3, 3]])[..., 0])
    np.testing.assert_array_equal(true[..., 2], stretch(image[[2, 2, 2]])[..., 0])
    label = np.load(NAIP.with_name("id_000051_label.npy"))
    water = label == 1
    path = save_mask_figure(tmp_path / "naip.png", true, water, water, panel_inches=1, dpi=64)
    assert _read_png(path).size == (192, 64)
