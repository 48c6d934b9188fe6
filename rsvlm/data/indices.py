"""Spectral indices, Otsu thresholds and the coarse land-cover mask of SPEX.

* NDVI = (NIR − Red) / (NIR + Red)                     vegetation
* NDWI = (Green − NIR) / (Green + NIR)  (McFeeters)    water
* NDBI = (SWIR1 − NIR) / (SWIR1 + NIR)                 building / built-up

Every index is float32 H×W and is **0 where the denominator is 0** or where the result
would not be finite (NaN / inf inputs), so downstream code never sees NaN or inf and no
floating-point warning is emitted. Pixels whose input bands are not finite are
additionally excluded from thresholds by :func:`coarse_mask`.

The coarse mask of SPEX's attribute prompt generator is ``index > Otsu threshold``, with
the threshold computed over valid pixels only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.filters import threshold_otsu

from rsvlm.contracts import RsvlmError
from rsvlm.data.bands import BandSpec, band_spec

BandsLike = BandSpec | str | Sequence[str]

INDEX_FOR_CATEGORY: dict[str, str] = {"vegetation": "ndvi", "water": "ndwi", "building": "ndbi"}

# (numerator-positive band, numerator-negative band) of each normalised difference.
INDEX_BANDS: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),
    "ndwi": ("green", "nir"),
    "ndbi": ("swir1", "nir"),
}

_CATEGORY_ALIASES = {"buildings": "building", "built-up": "building", "builtup": "building"}


class CategoryError(RsvlmError, ValueError):
    """A land-cover category rsvlm does not know (the message lists the ones it does)."""


def normalize_category(category: str) -> str:
    """Canonical category name: ``vegetation``, ``water`` or ``building``.

    Accepts ``buildings`` (and ``built-up``) for ``building``; case-insensitive.

    Raises:
        CategoryError: an unknown category (a ``ValueError``).
    """
    c = category.strip().lower()
    c = _CATEGORY_ALIASES.get(c, c)
    if c not in INDEX_FOR_CATEGORY:
        raise CategoryError(
            f"unknown land-cover category {category!r}; expected one of "
            f"{', '.join(INDEX_FOR_CATEGORY)} (or 'buildings')"
        )
    return c


def normalized_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a − b) / (a + b) as float32, 0 where a + b == 0 or the result is not finite.

    Args:
        a, b: arrays of the same shape (any dtype; computed in float32).
    """
    a32 = np.asarray(a, dtype=np.float32)
    b32 = np.asarray(b, dtype=np.float32)
    with np.errstate(all="ignore"):
        num = a32 - b32
        den = a32 + b32
        out = np.zeros(np.broadcast_shapes(a32.shape, b32.shape), dtype=np.float32)
        np.divide(num, den, out=out, where=den != 0)
    out[~np.isfinite(out)] = 0.0
    return out


def _index(image: np.ndarray, bands: BandsLike, name: str) -> np.ndarray:
    spec = band_spec(bands)
    pos, neg = INDEX_BANDS[name]
    # Look both bands up before touching data so a missing band is named clearly.
    spec.index(pos), spec.index(neg)
    return normalized_difference(spec.take(image, pos), spec.take(image, neg))


def ndvi(image: np.ndarray, bands: BandsLike) -> np.ndarray:
    """NDVI = (NIR − Red)/(NIR + Red) of a C×H×W image → float32 H×W."""
    return _index(image, bands, "ndvi")


def ndwi(image: np.ndarray, bands: BandsLike) -> np.ndarray:
    """McFeeters NDWI = (Green − NIR)/(Green + NIR) of a C×H×W image → float32 H×W."""
    return _index(image, bands, "ndwi")


def ndbi(image: np.ndarray, bands: BandsLike) -> np.ndarray:
    """NDBI = (SWIR1 − NIR)/(SWIR1 + NIR) of a C×H×W image → float32 H×W.

    Raises:
        BandError: the spec has no ``swir1`` (or ``nir``) band.
    """
    return _index(image, bands, "ndbi")


_INDEX_FUNCS = {"ndvi": ndvi, "ndwi": ndwi, "ndbi": ndbi}


def category_index(image: np.ndarray, category: str, bands: BandsLike) -> np.ndarray:
    """The index SPEX uses for ``category`` (NDVI / NDWI / NDBI) → float32 H×W."""
    return _INDEX_FUNCS[INDEX_FOR_CATEGORY[normalize_category(category)]](image, bands)


def otsu_threshold(values: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Otsu's threshold (``skimage.filters.threshold_otsu``, 256 bins) over valid pixels.

    Args:
        values: array of any shape.
        valid: bool array of the same shape; None means all pixels. Non-finite values are
            always excluded.

    Raises:
        ValueError: no valid finite pixel is left, or ``valid`` has the wrong shape.
    """
    v = np.asarray(values)
    keep = np.isfinite(v)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != v.shape:
            raise ValueError(f"otsu_threshold: valid has shape {valid.shape} but values have shape {v.shape}")
        keep &= valid
    sel = v[keep]
    if sel.size == 0:
        raise ValueError("otsu_threshold: no valid pixels to threshold")
    return float(threshold_otsu(sel))


def coarse_mask(
    image: np.ndarray, category: str, bands: BandsLike, valid: np.ndarray | None = None, threshold: float | None = None
) -> np.ndarray:
    """SPEX's coarse land-cover mask: category index > Otsu threshold of the valid pixels.

    Args:
        image: C×H×W multispectral image.
        category: vegetation, water or building(s).
        bands: band spec of ``image``.
        valid: H×W bool validity (e.g. ``Raster.valid``); None means all pixels. Pixels
            with a non-finite value in either index band are treated as invalid too.
        threshold: cut the index here instead (a whole scene's Otsu threshold when ``image`` is
            one tile of it); None: Otsu's threshold of ``image``'s valid pixels.

    Returns:
        H×W bool mask; invalid pixels are False. An image without any valid pixel gives an
        all-False mask.
    """
    spec = band_spec(bands)
    name = INDEX_FOR_CATEGORY[normalize_category(category)]
    idx = _INDEX_FUNCS[name](image, spec)
    pos, neg = INDEX_BANDS[name]
    ok = np.isfinite(spec.take(image, pos)) & np.isfinite(spec.take(image, neg))
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != idx.shape:
            raise ValueError(f"coarse_mask: valid has shape {valid.shape}, image is {idx.shape}")
        ok &= valid
    if not ok.any():
        return np.zeros(idx.shape, dtype=bool)
    return (idx > (otsu_threshold(idx, ok) if threshold is None else threshold)) & ok
