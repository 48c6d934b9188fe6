"""Rendering of one object layout as an optical, SAR or thermal-infrared image
(:mod:`rsvlm.data.multitask.generated_multisource`).

A :class:`Layout` is what every modality shares: a straight shoreline splitting the scene into water
and land, and objects (:class:`rsvlm.data.multitask.generated.SceneObject`, drawn by
:mod:`rsvlm.data.multitask.generated_shapes`) with an optical colour each. The object classes
(:data:`CLASSES`) differ by shape — ship (elongated ellipse, on water), storage tank (disc), airplane
(cross), building (rectangle) — and by signature: one optical colour per class (:data:`CLASS_COLOURS`),
σ⁰ levels 3-4 dB apart (above 4-look speckle's 2.3 dB per pixel, below it for a single pixel) and
brightness temperatures 10 K apart on land. A tiny randomly initialised demo model learns a signature
within minutes; shape alone it did not (the demo's referring classification stayed at the majority
answer when colours were shared between classes and the σ⁰ / temperatures lay 1-2 dB / 1 K apart).

=========  =======  ============  ========================================================================
modality   bands    unit          rendering
=========  =======  ============  ========================================================================
optical    3 (RGB)  ``dn8``       textured water / land in [20, 200], objects in their class's flat colour
sar        2 (VV,   ``db``        σ⁰ per cover: water −22 / −29 dB (flat), land −12 / −19 dB ± texture,
           VH)                    objects −6…+5 dB; times speckle ``n ~ Gamma(L, 1/L)`` (mean 1,
                                  variance 1/L, ``L`` looks; L = 1 is exponential) on linear intensity,
                                  then 10·log10, unclipped
infrared   1        ``kelvin``    water 288 K, land 300 K ± texture; ship 297, tank 284, airplane 294,
                                  building 309 K; Gaussian blur σ 0.7 px, then N(0, 0.3 K) noise (NETD)
=========  =======  ============  ========================================================================

Every renderer returns ``C×H×W`` (uint8 for optical, float32 otherwise) and draws only from the
``rng`` it is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from rsvlm.data.modalities import db_to_intensity, intensity_to_db
from rsvlm.data.multitask.generated import SceneObject
from rsvlm.data.multitask.generated_shapes import BACKGROUND_RANGE, COLOURS, coarse_noise

#: Object classes of the multisource scenes (a subset of GeoMag's, told apart by shape alone).
CLASSES = ("ship", "storage tank", "airplane", "building")
#: Classes drawn on water; the others stand on land.
ON_WATER = ("ship",)
WATER_FRACTION = (0.3, 0.5)  # share of a scene's pixels under water
SHORE_TILT = 25.0  # degrees the shoreline turns away from the scene's edge, at most

# ------------------------------------------------------------------------------------ optical
WATER_RGB = (40, 75, 130)
#: Each class's optical colour (a :data:`~rsvlm.data.multitask.generated_shapes.COLOURS` key), none shared.
CLASS_COLOURS = {"ship": "white", "storage tank": "yellow", "airplane": "blue", "building": "red"}
LAND_RGB = ((150, 140, 110), (125, 140, 85), (170, 160, 130), (140, 125, 105))

# ---------------------------------------------------------------------------------------- SAR
#: Mean σ⁰ (VV, VH) in dB of each cover and object class.
SAR_DB: dict[str, tuple[float, float]] = {
    "water": (-22.0, -29.0),
    "land": (-12.0, -19.0),
    "ship": (-1.0, -9.0),
    "storage tank": (5.0, -4.0),
    "airplane": (-6.0, -14.0),
    "building": (2.0, -6.0),
}
SAR_LAND_TEXTURE_DB = 1.5  # amplitude of the land's smooth σ⁰ variation; water stays flat

# ----------------------------------------------------------------------------------- infrared
#: Brightness temperature (kelvin) of each cover and object class.
IR_KELVIN: dict[str, float] = {
    "water": 288.0,
    "land": 300.0,
    "ship": 297.0,
    "storage tank": 284.0,
    "airplane": 294.0,
    "building": 309.0,
}
IR_TEXTURE_K = {"water": 0.5, "land": 2.5}
IR_BLUR_PX = 0.7
IR_NETD_K = 0.3


@dataclass(frozen=True)
class ModalityFormat:
    """How one modality is stored: band names, the records' ``value`` unit, the file suffix, and the
    :data:`rsvlm.data.modalities.MODALITIES` preset that normalises it for a model."""

    bands: tuple[str, ...]
    value: str
    suffix: str
    preset: str


FORMATS: dict[str, ModalityFormat] = {
    "optical": ModalityFormat(("red", "green", "blue"), "dn8", ".png", "optical_dn8"),
    "sar": ModalityFormat(("vv", "vh"), "db", ".tif", "sentinel1_db"),
    "infrared": ModalityFormat(("thermal",), "kelvin", ".tif", "infrared_kelvin"),
}


@dataclass
class Layout:
    """What every modality of a scene shares.

    Attributes:
        water: ``H×W`` bool, True under water.
        objects: the drawn objects (mask, box, shape, class, coarse location).
        colours: each object's optical colour (a :data:`~rsvlm.data.multitask.generated_shapes.COLOURS` key).
    """

    water: np.ndarray
    objects: list[SceneObject]
    colours: list[str]

    @property
    def size(self) -> int:
        return int(self.water.shape[0])


def shoreline(rng: np.random.Generator, size: int) -> np.ndarray:
    """``size×size`` bool water: the pixels beyond a straight shore running along one scene edge
    (tilted by up to :data:`SHORE_TILT` degrees), covering a share of :data:`WATER_FRACTION`."""
    theta = np.radians(90.0 * int(rng.integers(4)) + rng.uniform(-SHORE_TILT, SHORE_TILT))
    fraction = rng.uniform(*WATER_FRACTION)
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    along = (cols - size / 2) * np.cos(theta) + (rows - size / 2) * np.sin(theta)
    return along >= np.quantile(along, 1.0 - fraction)


def _cover(layout: Layout, water: np.ndarray | float, land: np.ndarray | float) -> np.ndarray:
    """``H×W`` float64: ``water`` under water, ``land`` elsewhere."""
    return np.where(layout.water, water, land).astype(np.float64)


def render_optical(rng: np.random.Generator, layout: Layout) -> np.ndarray:
    """``3×H×W`` uint8 RGB: textured water and land in [20, 200], each object in its flat colour."""
    size = layout.size
    land = np.array(LAND_RGB[int(rng.integers(len(LAND_RGB)))], np.float32) + coarse_noise(rng, size, 6)[..., None] * 12
    water = np.array(WATER_RGB, np.float32) + coarse_noise(rng, size, 10)[..., None] * 8
    image = np.where(layout.water[..., None], water, land) + rng.normal(0.0, 3.0, (size, size, 3))
    image = np.clip(np.rint(image), *BACKGROUND_RANGE).astype(np.uint8)
    for obj, colour in zip(layout.objects, layout.colours, strict=True):
        image[obj.mask] = COLOURS[colour]
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def sar_backscatter(rng: np.random.Generator, layout: Layout) -> np.ndarray:
    """``2×H×W`` float32 speckle-free linear σ⁰ (VV, VH) of the layout (:data:`SAR_DB`)."""
    texture = coarse_noise(rng, layout.size, 8) * SAR_LAND_TEXTURE_DB
    db = np.stack([_cover(layout, SAR_DB["water"][c], SAR_DB["land"][c] + texture) for c in range(2)])
    for obj in layout.objects:
        db[:, obj.mask] = np.array(SAR_DB[obj.name])[:, None]
    return db_to_intensity(db)


def speckle(rng: np.random.Generator, intensity: np.ndarray, looks: float) -> np.ndarray:
    """``intensity·n`` with ``n ~ Gamma(looks, 1/looks)`` per pixel and channel (mean 1, variance
    ``1/looks``): fully developed speckle of an ``looks``-look intensity image (float32, same shape)."""
    n = rng.gamma(looks, 1.0 / looks, intensity.shape)
    return (intensity * n).astype(np.float32)


def render_sar(rng: np.random.Generator, layout: Layout, looks: float) -> np.ndarray:
    """``2×H×W`` float32 σ⁰ in dB (VV, VH): :func:`sar_backscatter` with :func:`speckle`, unclipped."""
    return intensity_to_db(speckle(rng, sar_backscatter(rng, layout), looks))


def render_infrared(rng: np.random.Generator, layout: Layout) -> np.ndarray:
    """``1×H×W`` float32 brightness temperature in kelvin (:data:`IR_KELVIN`), blurred, plus NETD noise."""
    size = layout.size
    water = IR_KELVIN["water"] + coarse_noise(rng, size, 10) * IR_TEXTURE_K["water"]
    land = IR_KELVIN["land"] + coarse_noise(rng, size, 6) * IR_TEXTURE_K["land"]
    kelvin = _cover(layout, water, land)
    for obj in layout.objects:
        kelvin[obj.mask] = IR_KELVIN[obj.name]
    kelvin = ndimage.gaussian_filter(kelvin, IR_BLUR_PX, mode="nearest") + rng.normal(0.0, IR_NETD_K, kelvin.shape)
    return kelvin[None].astype(np.float32)


def render(modality: str, rng: np.random.Generator, layout: Layout, looks: float) -> np.ndarray:
    """The layout in ``modality`` (``C×H×W``; ``looks`` is read by SAR only)."""
    if modality == "optical":
        return render_optical(rng, layout)
    if modality == "sar":
        return render_sar(rng, layout, looks)
    if modality == "infrared":
        return render_infrared(rng, layout)
    raise ValueError(f"modality: must be one of {', '.join(FORMATS)}, got {modality!r}")
