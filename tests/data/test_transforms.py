"""Transforms: aspect-keeping resize with invalid padding, normalisation, dihedral augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from rsvlm.data.transforms import normalize, normalize_as, random_dihedral, resize_pad


def test_resize_pad_keeps_aspect_and_marks_padding_invalid():
    image = torch.rand(3, 40, 20)
    mask = (torch.rand(1, 40, 20) > 0.5).float()
    valid = torch.ones(1, 40, 20, dtype=torch.bool)
    out, m, v, info = resize_pad(image, mask, valid, 64)
    assert out.shape == (3, 64, 64) and m.shape == (1, 64, 64) and v.shape == (1, 64, 64)
    assert info["resized_size"] == [64, 32] and info["pad"] == [0, 0, 0, 32]
    assert v[:, :, :32].all() and not v[:, :, 32:].any()
    assert (out[:, :, 32:] == 0).all() and (m[:, :, 32:] == 0).all()
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    # Nearest-neighbour upsampling by 1.6: every output pixel copies an input pixel.
    rows = np.minimum(np.floor((np.arange(64) + 0.5) * 40 / 64), 39).astype(int)
    cols = np.minimum(np.floor((np.arange(32) + 0.5) * 20 / 32), 19).astype(int)
    np.testing.assert_array_equal(m[0, :, :32].numpy(), mask[0].numpy()[np.ix_(rows, cols)])


def test_normalize_sets_invalid_to_zero():
    image = torch.tensor([[[1.0, 3.0]], [[10.0, float("nan")]]])
    valid = torch.tensor([[True, False]])
    out = normalize(image, valid, np.array([1.0, 4.0]), np.array([2.0, 3.0]))
    assert out.tolist() == [[[0.0, 0.0]], [[2.0, 0.0]]]


def test_dihedral_moves_image_mask_and_valid_together():
    h, w = 6, 9
    image = torch.zeros(2, h, w)
    image[:, 1, 2] = torch.tensor([5.0, 7.0])
    mask = torch.zeros(1, h, w)
    mask[0, 1, 2] = 1
    valid = torch.ones(1, h, w, dtype=torch.bool)
    valid[0, 1, 2] = False
    seen = set()
    for seed in range(60):
        im, m, v, aug = random_dihedral(image, mask, valid, torch.Generator().manual_seed(seed))
        seen.add((aug["rot90"], aug["flip"]))
        ref = np.rot90(np.zeros((h, w)) + (np.arange(h * w).reshape(h, w) == 1 * w + 2), aug["rot90"])
        ref = np.fliplr(ref) if aug["flip"] else ref
        marker = tuple(np.argwhere(ref)[0])
        assert tuple(torch.nonzero(im[0]).tolist()[0]) == marker
        assert tuple(torch.nonzero(m[0]).tolist()[0]) == marker
        assert tuple(torch.nonzero(~v[0]).tolist()[0]) == marker
        assert im[1][marker].item() == 7.0
    assert len(seen) == 8


# ---------------------------------------------------------------- per-image normalisation
def _image_with_invalid(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    image = rng.gamma(2.0, 800.0, size=(3, 20, 30)).astype(np.float32)  # DN-like, skewed
    valid = rng.random((20, 30)) > 0.2
    image[:, ~valid] = np.nan
    image[1, ~valid] = 1e6  # a huge nodata value must not move the statistics
    return torch.from_numpy(image), torch.from_numpy(valid)[None]


def test_image_normalisation_matches_numpy_over_valid_pixels():
    image, valid = _image_with_invalid()
    out = normalize_as(image, valid, "image").numpy()
    v = valid[0].numpy()
    x = image.numpy().astype(np.float64)
    for b in range(3):
        pixels = x[b][v]
        np.testing.assert_allclose(out[b][v], (pixels - pixels.mean()) / pixels.std(), rtol=1e-5, atol=1e-5)
    assert (out[:, ~v] == 0).all()


def test_robust_image_normalisation_matches_scipy_median_and_iqr():
    image, valid = _image_with_invalid(1)
    out = normalize_as(image, valid, "robust_image").numpy()
    v = valid[0].numpy()
    for b in range(3):
        pixels = image.numpy()[b][v].astype(np.float64)
        ref = (pixels - np.median(pixels)) / scipy.stats.iqr(pixels, scale="normal")
        np.testing.assert_allclose(out[b][v], ref, rtol=1e-5, atol=1e-5)
    assert (out[:, ~v] == 0).all()


def test_robust_image_floor_keeps_a_near_uniform_image_flat_and_a_mixed_one_as_robust_image():
    from rsvlm.data.transforms import SCALE_FLOOR

    rng = np.random.default_rng(3)
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    # an 8-bit water patch: visible bands ~50 with a DN of noise, NIR 0 nearly everywhere
    lake = np.stack([50 + rng.integers(-1, 2, (32, 32)), 40 + rng.integers(-1, 2, (32, 32)), np.zeros((32, 32))])
    lake[2, :2, :2] = 3.0
    out = normalize_as(torch.from_numpy(lake).float(), valid, "robust_image_floor").numpy()
    level = np.mean(np.abs(np.median(lake.reshape(3, -1), axis=1)))
    for b in range(3):
        pixels = lake[b].ravel()
        scale = max(scipy.stats.iqr(pixels, scale="normal"), SCALE_FLOOR * level)
        np.testing.assert_allclose(out[b].ravel(), (pixels - np.median(pixels)) / scale, rtol=1e-5, atol=1e-5)
    assert np.abs(out).max() <= 1.0  # the 3-DN NIR glint is one unit; robust_image stretches DN steps further
    assert np.abs(normalize_as(torch.from_numpy(lake).float(), valid, "robust_image").numpy()).max() > 1.4
    # a scene of two materials: every band's spread is far above the floor, so nothing changes
    mixed = np.where(rng.random((32, 32)) < 0.5, 1.0, 0.2)[None] * np.array([0.5, 1.0, 2.0])[:, None, None]
    mixed = torch.from_numpy(mixed + rng.normal(0, 0.01, mixed.shape)).float()
    np.testing.assert_allclose(
        normalize_as(mixed, valid, "robust_image_floor").numpy(), normalize_as(mixed, valid, "robust_image").numpy()
    )


@pytest.mark.parametrize("method", ["image", "robust_image"])
def test_per_image_normalisation_cancels_gain_and_offset(method):
    image, valid = _image_with_invalid(2)
    gain, offset = torch.tensor([0.3, 2.0, 7.0]).view(3, 1, 1), torch.tensor([100.0, -5.0, 0.5]).view(3, 1, 1)
    a = normalize_as(image, valid, method)
    b = normalize_as(image * gain + offset, valid, method)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-4)


def test_normalisation_edge_cases():
    image = torch.ones(2, 4, 4)
    image[1] = torch.arange(16.0).view(4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    for method in ("image", "robust_image", "robust_image_floor"):
        out = normalize_as(image, valid, method)
        assert torch.isfinite(out).all() and (out[0] == 0).all()  # constant band → 0, not NaN
        nothing = normalize_as(image, torch.zeros_like(valid), method)
        assert (nothing == 0).all()
    mean, std = np.array([1.0, 2.0]), np.array([2.0, 4.0])
    assert torch.equal(normalize_as(image, valid, "dataset", mean, std), normalize(image, valid, mean, std))
    with pytest.raises(ValueError, match="normalization"):
        normalize_as(image, valid, "per-pixel")
    with pytest.raises(ValueError, match="mean and std"):
        normalize_as(image, valid, "dataset")


def test_predict_tiles_are_normalised_per_tile():
    from rsvlm.data.spie.predict_dataset import ArrayPredictDataset

    image, valid = _image_with_invalid(3)
    data = np.nan_to_num(image.numpy()[:, :, :24], nan=0.0)
    v = valid[0].numpy()[:, :24]
    ds = ArrayPredictDataset(
        [("scene", data, v)],
        ["red", "green", "blue"],
        [0, 0, 0],
        [1, 1, 1],
        tile=16,
        overlap=4,
        normalization="robust_image",
    )
    for i in range(len(ds)):
        sample = ds[i]
        r, c, h, w = sample["meta"]["window"]
        expected = normalize_as(
            torch.from_numpy(data[:, r : r + h, c : c + w]), torch.from_numpy(v[r : r + h, c : c + w]), "robust_image"
        )
        torch.testing.assert_close(sample["image"][:, :h, :w], expected)
        assert sample["valid"][0, :h, :w].numpy().tolist() == v[r : r + h, c : c + w].tolist()


def test_datamodule_rejects_unknown_normalization():
    from rsvlm.data.spie.datamodule import SpieDataModule

    with pytest.raises(ValueError, match="SpieDataModule.normalization"):
        SpieDataModule(stats="stats.json", normalization="per-pixel")


def _water_half_tile(rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
    """A 4-band 12×12 tile (blue, green, red, NIR) whose top half is bright green (water-like), and
    its ``1×12×12`` valid mask with a hole of invalid pixels across the edge of that half."""
    raw = rng.uniform(0.01, 0.5, size=(4, 12, 12)).astype(np.float32)
    raw[1, :6] *= 3
    valid = torch.ones(1, 12, 12, dtype=torch.bool)
    valid[0, 5:7, :4] = False
    return raw, valid


def _ndi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (a - b) / (a + b)
    return np.where(np.isfinite(out), out, 0.0)


def test_index_channels_are_the_indices_of_the_raw_bands_and_ignore_a_common_gain():
    from rsvlm.data.transforms import with_index_channels

    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.5, size=(4, 8, 8)).astype(np.float32)  # blue, green, red, nir
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, 0, :3] = False
    bands = ["blue", "green", "red", "nir"]
    normed = normalize_as(torch.from_numpy(raw), valid, "robust_image")
    out = with_index_channels(normed, raw, valid, bands, ["ndvi", "ndwi"])
    assert out.shape == (6, 8, 8)
    torch.testing.assert_close(out[:4], normed)
    v = valid[0].numpy()
    np.testing.assert_allclose(out[4].numpy(), np.where(v, _ndi(raw[3], raw[2]), 0), atol=1e-6)
    np.testing.assert_allclose(out[5].numpy(), np.where(v, _ndi(raw[1], raw[3]), 0), atol=1e-6)
    scaled = with_index_channels(normed, raw * 37.0, valid, bands, ["ndvi", "ndwi"])
    torch.testing.assert_close(scaled, out, atol=1e-5, rtol=1e-5)
    assert with_index_channels(normed, raw, valid, bands, []) is normed
    with pytest.raises(ValueError, match="unknown index 'evi'"):
        with_index_channels(normed, raw, valid, bands, ["evi"])


def test_predict_tiles_carry_index_channels():
    from rsvlm.data.spie.predict_dataset import ArrayPredictDataset

    rng = np.random.default_rng(1)
    data = rng.uniform(0.01, 0.5, size=(4, 20, 20)).astype(np.float32)
    v = np.ones((20, 20), bool)
    ds = ArrayPredictDataset(
        [("scene", data, v)],
        ["blue", "green", "red", "nir"],
        [0] * 4,
        [1] * 4,
        tile=16,
        overlap=4,
        normalization="image",
        index_channels=["ndwi"],
    )
    sample = ds[1]
    r, c, h, w = sample["meta"]["window"]
    assert sample["image"].shape == (5, 16, 16)
    expected = _ndi(data[1, r : r + h, c : c + w], data[3, r : r + h, c : c + w])
    np.testing.assert_allclose(sample["image"][4, :h, :w].numpy(), expected, atol=1e-6)


def test_coarse_mask_channels_are_the_index_above_otsu_of_the_image():
    """``ndwi_otsu``: 1 where NDWI exceeds skimage's Otsu threshold over the valid pixels (the index +
    Otsu baseline's mask, :func:`coarse_mask`), 0 elsewhere and on invalid pixels; a given threshold
    wins; a tile without a valid pixel is all 0; an unknown suffix is a one-line error."""
    from skimage.filters import threshold_otsu

    from rsvlm.data.indices import coarse_mask
    from rsvlm.data.transforms import with_index_channels

    raw, valid = _water_half_tile(np.random.default_rng(2))
    bands = ["blue", "green", "red", "nir"]
    v = valid[0].numpy()
    out = with_index_channels(torch.zeros(4, 12, 12), raw, valid, bands, ["ndwi", "ndwi_otsu", "ndvi_otsu"])
    ndwi = _ndi(raw[1], raw[3])
    np.testing.assert_array_equal(out[5].numpy(), np.where(v & (ndwi > threshold_otsu(ndwi[v])), 1.0, 0.0))
    np.testing.assert_array_equal(out[5].numpy() > 0, coarse_mask(raw, "water", bands, v))
    np.testing.assert_array_equal(out[6].numpy() > 0, coarse_mask(raw, "vegetation", bands, v))
    given = with_index_channels(torch.zeros(4, 12, 12), raw, valid, bands, ["ndwi_otsu"], {"ndwi": 0.0})
    np.testing.assert_array_equal(given[4].numpy(), np.where(v & (ndwi > 0.0), 1.0, 0.0))
    none = with_index_channels(torch.zeros(4, 12, 12), raw, torch.zeros_like(valid), bands, ["ndwi_otsu"])
    assert not none[4].any()
    with pytest.raises(ValueError, match=r"^index_channels: unknown index 'ndwi_mean'; known: [^\n]*ndwi_otsu"):
        with_index_channels(torch.zeros(4, 12, 12), raw, valid, bands, ["ndwi_mean"])


def test_margin_channels_are_the_index_minus_otsu_of_the_image_or_the_scene():
    """``ndwi_margin``: NDWI minus skimage's Otsu threshold over the valid pixels (0 on invalid pixels);
    its sign is the ``ndwi_otsu`` mask; a given threshold wins; tiles of a scene share the scene's."""
    from skimage.filters import threshold_otsu

    from rsvlm.data.spie.predict_dataset import ArrayPredictDataset
    from rsvlm.data.transforms import with_index_channels

    rng = np.random.default_rng(4)
    raw, valid = _water_half_tile(rng)
    v = valid[0].numpy()
    bands = ["blue", "green", "red", "nir"]
    out = with_index_channels(torch.zeros(4, 12, 12), raw, valid, bands, ["ndwi_margin", "ndwi_otsu"])
    ndwi = _ndi(raw[1], raw[3])
    np.testing.assert_allclose(out[4].numpy(), np.where(v, ndwi - threshold_otsu(ndwi[v]), 0.0), atol=1e-6)
    np.testing.assert_array_equal((out[4] > 0).numpy(), out[5].numpy() > 0)
    given = with_index_channels(torch.zeros(4, 12, 12), raw, valid, bands, ["ndwi_margin"], {"ndwi": 0.1})
    np.testing.assert_allclose(given[4].numpy(), np.where(v, ndwi - 0.1, 0.0), atol=1e-6)
    # An offset moves whichever cut is used, Otsu's or a given one, for both channels alike.
    moved = with_index_channels(
        torch.zeros(4, 12, 12), raw, valid, bands, ["ndwi_margin", "ndwi_otsu"], offsets={"ndwi": -0.05}
    )
    cut = threshold_otsu(ndwi[v]) - 0.05
    np.testing.assert_allclose(moved[4].numpy(), np.where(v, ndwi - cut, 0.0), atol=1e-6)
    np.testing.assert_array_equal(moved[5].numpy(), np.where(v & (ndwi > cut), 1.0, 0.0))
    both = with_index_channels(
        torch.zeros(4, 12, 12), raw, valid, bands, ["ndwi_margin"], {"ndwi": 0.1}, offsets={"ndwi": 0.02}
    )
    np.testing.assert_allclose(both[4].numpy(), np.where(v, ndwi - 0.12, 0.0), atol=1e-6)

    data = rng.uniform(0.01, 0.5, size=(4, 40, 40)).astype(np.float32)
    data[1, :, :14] *= 4
    scene_v = np.ones((40, 40), bool)
    ds = ArrayPredictDataset(
        [("scene", data, scene_v)], bands, [0] * 4, [1] * 4, tile=16, overlap=4, index_channels=["ndwi_margin"]
    )
    scene_ndwi = _ndi(data[1], data[3])
    cut = threshold_otsu(scene_ndwi)
    for i in range(len(ds)):
        sample = ds[i]
        r, c, h, w = sample["meta"]["window"]
        np.testing.assert_allclose(
            sample["image"][4, :h, :w].numpy(), scene_ndwi[r : r + h, c : c + w] - cut, atol=1e-6
        )


def test_predict_tiles_cut_the_coarse_mask_at_the_scene_threshold():
    """Every tile's ``ndwi_otsu`` channel is the whole scene's coarse mask (not one Otsu per tile): the
    tiles put back together give :func:`coarse_mask` of the scene, as the index baseline predicts it."""
    from rsvlm.data.indices import coarse_mask
    from rsvlm.data.spie.predict_dataset import ArrayPredictDataset

    rng = np.random.default_rng(3)
    data = rng.uniform(0.01, 0.5, size=(4, 40, 40)).astype(np.float32)
    data[1, :, :14] *= 4  # water on the left: most tiles hold none of it
    v = np.ones((40, 40), bool)
    v[30:, 30:] = False
    bands = ["blue", "green", "red", "nir"]
    ds = ArrayPredictDataset(
        [("scene", data, v)], bands, [0] * 4, [1] * 4, tile=16, overlap=4, index_channels=["ndwi_otsu"]
    )
    stitched = np.full((40, 40), -1.0)
    for i in range(len(ds)):
        sample = ds[i]
        r, c, h, w = sample["meta"]["window"]
        stitched[r : r + h, c : c + w] = sample["image"][4, :h, :w].numpy()
    np.testing.assert_array_equal(stitched > 0, coarse_mask(data, "water", bands, v))
    with pytest.raises(ValueError, match=r"^index_channels: unknown index 'ndmi'"):
        ArrayPredictDataset([("scene", data, v)], bands, [0] * 4, [1] * 4, index_channels=["ndmi"])


def test_scene_statistics_normalise_and_prompt_every_tile_as_the_whole_scene():
    """``statistics="scene"``: each tile is normalised by the whole scene's median and IQR / 1.349
    (numpy and scipy over the scene's valid pixels) and its APG prompt cuts NDWI at skimage's Otsu threshold of
    the whole scene; ``"tile"`` keeps each tile's own (the default); anything else is refused."""
    from scipy.stats import norm
    from skimage.filters import threshold_otsu

    from rsvlm.data.spie.apg import instruction, spectral_prompt
    from rsvlm.data.spie.predict_dataset import ArrayPredictDataset

    rng = np.random.default_rng(5)
    data = rng.uniform(0.02, 0.4, size=(4, 40, 40)).astype(np.float32)
    data[1, :, :12] *= 4  # a bright-green (water-like) strip, in the first tile column only
    v = np.ones((40, 40), bool)
    v[30:, 30:] = False
    bands = ["blue", "green", "red", "nir"]
    options = dict(tile=16, overlap=4, normalization="robust_image", categories=["water"])
    scene = ArrayPredictDataset([("scene", data, v)], bands, [0] * 4, [1] * 4, statistics="scene", **options)
    tiled = ArrayPredictDataset([("scene", data, v)], bands, [0] * 4, [1] * 4, **options)
    pixels = data[:, v].astype(np.float64)
    q1, median, q3 = np.quantile(pixels, [0.25, 0.5, 0.75], axis=1)
    scale = (q3 - q1) / (2 * norm.ppf(0.75))  # the IQR of a unit normal
    ndwi = (data[1] - data[3]) / (data[1] + data[3])
    cut = float(threshold_otsu(ndwi[v]))
    differs = 0
    for i in range(len(scene)):
        sample, own = scene[i], tiled[i]
        r, c, h, w = sample["meta"]["window"]
        tile, tv = data[:, r : r + h, c : c + w], v[r : r + h, c : c + w]
        expected = np.where(tv, (tile - median[:, None, None]) / scale[:, None, None], 0.0)
        np.testing.assert_allclose(sample["image"][:, :h, :w].numpy(), expected, rtol=1e-5, atol=1e-5)
        filled = np.where(tv[None], tile, 0)
        assert sample["instruction"] == instruction(
            "water", spectral_prompt(filled, "water", bands, valid=tv, threshold=cut)
        )
        assert own["instruction"] == instruction("water", spectral_prompt(filled, "water", bands, valid=tv))
        differs += sample["instruction"] != own["instruction"]
    assert differs > 0  # the scene's cut is not every tile's own
    with pytest.raises(ValueError, match="statistics"):
        ArrayPredictDataset([("scene", data, v)], bands, [0] * 4, [1] * 4, statistics="global", **options)
