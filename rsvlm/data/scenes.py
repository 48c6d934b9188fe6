"""Generated multispectral scenes for demos and tests.

A scene is a C×H×W float32 surface-reflectance image (0–1) and an H×W uint8 class map:

=====  ==========  =========================================================
code   class       layout
=====  ==========  =========================================================
0      bare soil   background
1      vegetation  blobby fields: smoothed Gaussian noise above a quantile
2      water       a meandering river (sum of two sines) or 1–3 lakes
3      building    rectangular blocks in 1–3 clusters, never on water
=====  ==========  =========================================================

Each of vegetation, water and building is left out of a scene with probability
:data:`ABSENT_RATE` (0.2, independently), so about one scene in five has an empty target for
a given category; the paper's SPIE data also holds such "no target" samples.

Reflectance
-----------
Every pixel of class k gets the spectral signature of its material, resampled to the band
centres (linear interpolation in wavelength between the table's nodes; band response
functions are not modelled), times a multiplicative texture ``1 + 0.08·n₁(x) + 0.02·n₂(x, c)``
(``n`` smooth unit-variance noise: a shared brightness field and a small per-band one), plus
Gaussian sensor noise of σ = 0.004, clipped to [0, 1]: surface reflectance. :class:`SensorVariation`
(off by default, :mod:`rsvlm.data.sensor`) adds per-scene per-band gain/offset, haze, more noise
and integer DNs; :class:`~rsvlm.data.materials.MaterialVariation` (off by default) mixes the
materials per region (canopy cover, turbidity, brightness) and blurs boundaries.

The signatures are typical values, rounded to 0.005–0.01, of spectra of the four materials in

* the USGS Spectral Library Version 7 (Kokaly, R. F., et al., 2017, U.S. Geological Survey
  Data Series 1035, https://doi.org/10.3133/ds1035): green grass / deciduous leaves for
  vegetation, grey construction concrete for buildings;
* the ECOSTRESS Spectral Library 1.0 (Meerdink, S. K., et al., 2019, Remote Sensing of
  Environment 230, 111196; formerly ASTER, Baldridge et al., 2009): clear water (tap / sea
  water), and a dry brown loamy soil.

They are representative shapes (the red edge and NIR plateau of leaves, water's absorption
beyond 700 nm, the flat rising spectrum of concrete, soil's monotone rise to the SWIR), not
the values of one catalogued sample; they were transcribed by hand, not extracted by code.
Wavelengths in nm:

=========  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====
material   443    490    560    608    665    705    740    783    842    865    945    1375   1610   2190
=========  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====
soil       0.07   0.09   0.13   0.17   0.20   0.22   0.23   0.24   0.26   0.27   0.28   0.30   0.36   0.33
vegetation 0.03   0.04   0.09   0.07   0.04   0.10   0.30   0.42   0.46   0.47   0.45   0.12   0.24   0.11
water      0.07   0.07   0.06   0.04   0.03   0.02   0.015  0.012  0.010  0.010  0.008  0.004  0.005  0.003
concrete   0.20   0.22   0.25   0.26   0.27   0.27   0.28   0.28   0.29   0.29   0.29   0.30   0.33   0.30
=========  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====  =====

Band centres (:data:`BAND_CENTRES_NM`) are those of Sentinel-2 MSI for the bands it has and
of WorldView-3 for ``yellow``, ``rededge`` and ``nir2``. Thermal and SAR bands cannot be
generated (they are not reflectance); asking for them is an error that names the band.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from scipy.ndimage import gaussian_filter

from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.data.layouts import parcel_layout
from rsvlm.data.materials import MaterialVariation
from rsvlm.data.raster import write_geotiff
from rsvlm.data.sensor import SensorVariation
from rsvlm.io.atomic import atomic_write_text

CLASS_NAMES: dict[int, str] = {0: "bare soil", 1: "vegetation", 2: "water", 3: "building"}
CATEGORY_CODES: dict[str, int] = {"vegetation": 1, "water": 2, "building": 3}

# Probability that a scene has none of a category (independently per category).
ABSENT_RATE: float = 0.2

# Centre wavelength (nm) per canonical band name (bands.py). Sentinel-2 MSI where it has the
# band; WorldView-3 for yellow, its single red edge and NIR2.
BAND_CENTRES_NM: dict[str, float] = {
    "coastal": 443.0,
    "blue": 490.0,
    "green": 560.0,
    "yellow": 608.0,
    "red": 665.0,
    "rededge": 724.0,
    "rededge1": 705.0,
    "rededge2": 740.0,
    "rededge3": 783.0,
    "nir": 842.0,
    "nir08": 865.0,
    "nir2": 949.0,
    "water_vapour": 945.0,
    "cirrus": 1375.0,
    "swir1": 1610.0,
    "swir2": 2190.0,
}

SIGNATURE_NM: tuple[float, ...] = (443, 490, 560, 608, 665, 705, 740, 783, 842, 865, 945, 1375, 1610, 2190)
# Rows follow the class codes; see the module docstring for the sources.
SIGNATURES: dict[str, tuple[float, ...]] = {
    "bare soil": (0.07, 0.09, 0.13, 0.17, 0.20, 0.22, 0.23, 0.24, 0.26, 0.27, 0.28, 0.30, 0.36, 0.33),
    "vegetation": (0.03, 0.04, 0.09, 0.07, 0.04, 0.10, 0.30, 0.42, 0.46, 0.47, 0.45, 0.12, 0.24, 0.11),
    "water": (0.07, 0.07, 0.06, 0.04, 0.03, 0.02, 0.015, 0.012, 0.010, 0.010, 0.008, 0.004, 0.005, 0.003),
    "building": (0.20, 0.22, 0.25, 0.26, 0.27, 0.27, 0.28, 0.28, 0.29, 0.29, 0.29, 0.30, 0.33, 0.30),
}

Layout = Literal["blobs", "parcels", "mixed"]
LAYOUTS: tuple[str, ...] = ("blobs", "parcels", "mixed")
TEXTURE_SHARED = 0.08
TEXTURE_PER_BAND = 0.02
SENSOR_NOISE = 0.004
BandsLike = BandSpec | str | Sequence[str]


def band_centres(bands: BandsLike) -> np.ndarray:
    """Centre wavelengths (nm) of the bands, float64 (C,).

    Raises:
        BandError: a band has no known centre or is not a reflective band (thermal, SAR).
    """
    spec = band_spec(bands)
    out = []
    for name in spec.names:
        if name not in BAND_CENTRES_NM:
            raise BandError(
                f"cannot generate band {name!r}: generated scenes model reflective bands only "
                f"(400–2500 nm) and know the centres of {', '.join(BAND_CENTRES_NM)}",
                band=name,
                spec=spec,
            )
        out.append(BAND_CENTRES_NM[name])
    return np.asarray(out, dtype=np.float64)


def signature_matrix(bands: BandsLike) -> np.ndarray:
    """Reflectance of each class at each band centre: float32 (4 classes, C)."""
    centres = band_centres(bands)
    nm = np.asarray(SIGNATURE_NM, dtype=np.float64)
    rows = [np.interp(centres, nm, np.asarray(SIGNATURES[CLASS_NAMES[k]])) for k in sorted(CLASS_NAMES)]
    return np.stack(rows).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to zero mean and unit variance."""
    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    std = field.std()
    return (field - field.mean()) / (std if std > 0 else 1.0)


def _vegetation(rng: np.random.Generator, size: int) -> np.ndarray:
    field = _smooth_noise(rng, (size, size), sigma=max(1.5, size / 12))
    fraction = rng.uniform(0.15, 0.5)
    return field > np.quantile(field, 1.0 - fraction)


def _river(rng: np.random.Generator, size: int) -> np.ndarray:
    cols = np.arange(size, dtype=np.float64)
    centre = (
        rng.uniform(0.25, 0.75) * size
        + rng.uniform(0.05, 0.15)
        * size
        * np.sin(2 * np.pi * cols / (size * rng.uniform(0.6, 1.4)) + rng.uniform(0, 2 * np.pi))
        + rng.uniform(0.02, 0.06)
        * size
        * np.sin(2 * np.pi * cols / (size * rng.uniform(0.2, 0.4)) + rng.uniform(0, 2 * np.pi))
    )
    half_width = max(1.0, rng.uniform(0.025, 0.06) * size)
    rows = np.arange(size, dtype=np.float64)[:, None]
    river = np.abs(rows - centre[None, :]) <= half_width
    # Rivers run in any of the four directions.
    return np.rot90(river, k=int(rng.integers(4))).copy()


def _lakes(rng: np.random.Generator, size: int) -> np.ndarray:
    field = _smooth_noise(rng, (size, size), sigma=max(2.0, size / 8))
    fraction = rng.uniform(0.04, 0.15)
    return field > np.quantile(field, 1.0 - fraction)


def _buildings(rng: np.random.Generator, size: int, blocked: np.ndarray) -> np.ndarray:
    out = np.zeros((size, size), dtype=bool)
    lo, hi = max(2, size // 20), max(3, size // 7)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.15, 0.85, size=2) * size
        for _ in range(int(rng.integers(2, 9))):
            h, w = rng.integers(lo, hi + 1, size=2)
            y = int(np.clip(cy + rng.normal(0, size / 8) - h / 2, 0, size - h))
            x = int(np.clip(cx + rng.normal(0, size / 8) - w / 2, 0, size - w))
            out[y : y + h, x : x + w] = True
    return out & ~blocked


def generate_layout(size: int, rng: np.random.Generator, layout: Layout = "blobs", uniform: float = 0.0) -> np.ndarray:
    """An H×W (size × size) uint8 class map with codes of :data:`CLASS_NAMES`.

    ``layout``: ``"blobs"`` (vegetation blobs, a river or lakes, building clusters on soil),
    ``"parcels"`` (a field mosaic, :func:`rsvlm.data.layouts.parcel_layout`) or ``"mixed"``
    (either, with probability 1/2 per scene). ``uniform``: the probability that the scene is one
    class throughout instead (soil, vegetation, water or buildings, equally likely), as a tile of a
    lake, a forest or a city centre is; 0 (the default) draws nothing for it, so layouts stay as
    they were.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    if not 0.0 <= uniform <= 1.0:
        raise ValueError(f"uniform must be in [0, 1]; got {uniform!r}")
    if uniform > 0 and rng.random() < uniform:
        return np.full((size, size), rng.choice(sorted(CLASS_NAMES)), dtype=np.uint8)
    if layout == "mixed":
        layout = "parcels" if rng.random() < 0.5 else "blobs"
    if layout == "parcels":
        return parcel_layout(size, rng, ABSENT_RATE, _river)
    classes = np.zeros((size, size), dtype=np.uint8)
    present = {c: rng.random() >= ABSENT_RATE for c in ("vegetation", "water", "building")}
    if present["vegetation"]:
        classes[_vegetation(rng, size)] = CATEGORY_CODES["vegetation"]
    water = np.zeros((size, size), dtype=bool)
    if present["water"]:
        water = _river(rng, size) if rng.random() < 0.5 else _lakes(rng, size)
        classes[water] = CATEGORY_CODES["water"]
    if present["building"]:
        classes[_buildings(rng, size, blocked=water)] = CATEGORY_CODES["building"]
    return classes


def render(
    classes: np.ndarray, bands: BandsLike, rng: np.random.Generator, materials: MaterialVariation | None = None
) -> np.ndarray:
    """Reflectance image C×H×W float32 in [0, 1] for an H×W class map (``materials``: mixtures
    per region instead of one pure signature per class, :mod:`rsvlm.data.materials`)."""
    sig = signature_matrix(bands)  # K×C
    c = sig.shape[1]
    h, w = classes.shape
    if materials is not None and materials.active:
        base = materials.reflectance(classes, sig, band_centres(bands), rng)
    else:
        base = np.moveaxis(sig[classes], -1, 0)  # C×H×W
    shared = _smooth_noise(rng, (h, w), sigma=max(1.0, min(h, w) / 32))
    per_band = _smooth_noise(rng, (c, h, w), sigma=(0, 1.5, 1.5)) if c else 0.0
    texture = 1.0 + TEXTURE_SHARED * shared[None] + TEXTURE_PER_BAND * per_band
    image = base * texture + rng.normal(0.0, SENSOR_NOISE, size=(c, h, w))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def generate_scene(
    size: int,
    bands: BandsLike,
    rng: np.random.Generator,
    materials: MaterialVariation | None = None,
    layout: Layout = "blobs",
    uniform: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One generated scene.

    Args:
        size: H = W in pixels (≥ 8).
        bands: band spec, preset name or list of reflective band names.
        rng: the generator that makes everything (layout, materials, texture, noise).
        materials: per-region material mixtures (None: one pure signature per class).
        layout: ``"blobs"``, ``"parcels"`` or ``"mixed"`` (:func:`generate_layout`).
        uniform: the share of scenes that are one class throughout (:func:`generate_layout`).

    Returns:
        ``(image, classes)``: C×H×W float32 reflectance in [0, 1] and H×W uint8 codes
        0 bare soil, 1 vegetation, 2 water, 3 building.
    """
    if size < 8:
        raise ValueError(f"generate_scene: size must be at least 8 pixels, got {size}")
    spec = band_spec(bands)
    band_centres(spec)  # fail on unknown bands before drawing anything
    classes = generate_layout(size, rng, layout, uniform)
    return render(classes, spec, rng, materials), classes


def _split_of(n: int, fractions: Mapping[str, float], seed: int) -> list[str]:
    """Assign n scenes to splits in the given proportions, shuffled by ``seed``."""
    if not fractions:
        raise ValueError("split_fractions must name at least one split")
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ValueError(f"split_fractions must be non-negative with a positive sum, got {dict(fractions)}")
    total = sum(fractions.values())
    names = list(fractions)
    # Cumulative rounding keeps the counts summing to n.
    bounds = np.round(np.cumsum([fractions[k] / total for k in names]) * n).astype(int)
    labels = np.empty(n, dtype=object)
    order = np.random.default_rng([seed, 0x5111]).permutation(n)
    start = 0
    for name, end in zip(names, bounds):
        labels[order[start:end]] = name
        start = end
    return [str(x) for x in labels]


def write_scene_folder(
    root: str | os.PathLike,
    n: int,
    size: int,
    bands: BandsLike,
    seed: int = 0,
    split_fractions: Mapping[str, float] | None = None,
    sensor: SensorVariation | None = None,
    materials: MaterialVariation | None = None,
    layout: Layout = "blobs",
    uniform: float = 0.0,
) -> Path:
    """Write ``n`` generated scenes as GeoTIFFs plus a manifest.

    Layout::

        root/images/scene_00000.tif   C-band float32 reflectance, band descriptions = names
        root/labels/scene_00000.tif   1-band uint8 class codes (0 soil, 1 veg, 2 water, 3 bldg)
        root/manifest.json            written last: scenes, splits, bands, seed, class names

    Georeferencing is a dummy: EPSG:32632 (UTM 32N), 10 m pixels, each scene on its own
    patch of ground. Scene ``i`` is made by ``default_rng([seed, i])``, so it does not depend
    on ``n``, and the output is identical for the same arguments.

    Args:
        root: output folder (created).
        n: number of scenes.
        size: scene side in pixels.
        bands: band spec, preset name or list of names.
        seed: base seed.
        split_fractions: split name → share, e.g. ``{"train": .8, "val": .1, "test": .1}``
            (the default); scenes are shuffled into splits by ``seed``.
        sensor: sensor effects per scene (None: reflectance as generated). They are drawn
            from ``default_rng([seed, i, 1])``, so the layouts do not change; the manifest
            records the settings and each scene's drawn parameters.
        materials: per-region material mixtures (:class:`rsvlm.data.materials.MaterialVariation`;
            None: pure signatures); the manifest records the settings.
        layout: ``"blobs"`` (default), ``"parcels"`` or ``"mixed"`` (:func:`generate_layout`);
            the manifest records it unless it is the default.
        uniform: the share of scenes that are one class throughout (:func:`generate_layout`);
            the manifest records it unless it is 0.

    Returns:
        The manifest path.
    """
    if n < 1 or size < 1:
        raise ValueError(f"write_scene_folder: n (scenes) and size (pixels) must be >= 1, got n={n}, size={size}")
    spec = band_spec(bands)
    centres = band_centres(spec)
    fractions = dict(split_fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    splits = _split_of(n, fractions, seed)
    crs = CRS.from_epsg(32632)
    scenes = []
    for i in range(n):
        image, classes = generate_scene(size, spec, np.random.default_rng([seed, i]), materials, layout, uniform)
        drawn = None
        if sensor is not None and sensor.active:
            image, drawn = sensor.apply(image, centres, np.random.default_rng([seed, i, 1]))
        transform = Affine(10.0, 0.0, 500_000 + i * (size + 16) * 10.0, 0.0, -10.0, 5_300_000.0)
        stem = f"scene_{i:05d}"
        write_geotiff(root / "images" / f"{stem}.tif", image, crs, transform, spec.names, compress="deflate")
        write_geotiff(root / "labels" / f"{stem}.tif", classes[None], crs, transform, ("class",), compress="deflate")
        present = [CLASS_NAMES[k] for k in sorted(CATEGORY_CODES.values()) if (classes == k).any()]
        scenes.append(
            {
                "id": stem,
                "image": f"images/{stem}.tif",
                "label": f"labels/{stem}.tif",
                "split": splits[i],
                "present": present,
                **({"sensor": drawn} if drawn is not None else {}),
            }
        )
    manifest = {
        "kind": "generated",
        "version": 1,
        "n": n,
        "size": size,
        "bands": list(spec.names),
        "seed": seed,
        "split_fractions": fractions,
        "classes": {str(k): v for k, v in CLASS_NAMES.items()},
        **({"sensor": asdict(sensor)} if sensor is not None and sensor.active else {}),
        **({"materials": asdict(materials)} if materials is not None and materials.active else {}),
        **({"layout": layout} if layout != "blobs" else {}),
        **({"uniform": uniform} if uniform else {}),
        "scenes": scenes,
    }
    path = root / "manifest.json"
    return atomic_write_text(path, json.dumps(manifest, indent=1))
