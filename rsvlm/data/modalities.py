"""Multisource input: SAR and thermal-infrared values to the units a model reads, and the
per-modality normalisation of the EarthGPT-X spec (``earthgpt-x.md`` §3.1).

Conversions (pure numpy; NaN in → NaN out, so invalid pixels stay visible to ``valid``):

=====================================  ============================================================
:func:`complex_to_intensity`            SLC ``z`` → intensity ``I = |z·k|² = (re² + im²)·k²``
:func:`amplitude_to_intensity`          amplitude ``A`` → ``I = (A·k)²``
:func:`intensity_to_db`                 ``dB = 10·log10(max(I, floor))``, optionally clipped
:func:`db_to_intensity`                 ``I = 10^(dB/10)``
:func:`multilook`                       boxcar mean of **linear** intensity over ``looks_y×looks_x``
:func:`landsat_st_to_kelvin`            Collection-2 ST DN → kelvin: ``T = DN·0.00341802 + 149.0``
:func:`dn_to_radiance`                  ``L = M_L·DN + A_L`` (W·m⁻²·sr⁻¹·µm⁻¹)
:func:`brightness_temperature`          ``T = K2 / ln(K1/L + 1)`` (kelvin)
=====================================  ============================================================

:class:`Modality` describes what one input kind is (optical / SAR / infrared, its unit, channel
count, clip range and normalisation); :data:`MODALITIES` holds the spec's presets and
:func:`to_model_input` applies one to an array. Readers: :func:`read_slc` (complex SLC GeoTIFFs,
e.g. SpaceNet 6 / Capella), :func:`read_spacenet6_slc` (the quad-pol folder) and
:func:`read_s1_db` (Sentinel-1 GRD σ⁰ in dB, e.g. Sen1Floods11 ``S1Hand``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from einops import reduce

from rsvlm.contracts import RsvlmError

if TYPE_CHECKING:
    from rsvlm.data.raster import Raster

#: The ``modality`` ids of a batch (``B`` long); :class:`rsvlm.encoders.modality_stem.MultiSourceStem` reads them.
MODALITY_IDS: dict[str, int] = {"optical": 0, "sar": 1, "infrared": 2}
#: Intensity floor before log10 (−100 dB): zero-intensity pixels (shadow, padding) stay finite.
DB_FLOOR = 1e-10
LANDSAT_ST_SCALE = 0.00341802  # kelvin per DN, Landsat Collection-2 Level-2 ST_B10
LANDSAT_ST_OFFSET = 149.0  # kelvin
LANDSAT8_B10_K1 = 774.8853  # W·m⁻²·sr⁻¹·µm⁻¹, from the Landsat 8 MTL (K1_CONSTANT_BAND_10)
LANDSAT8_B10_K2 = 1321.0789  # kelvin, from the Landsat 8 MTL (K2_CONSTANT_BAND_10)
LANDSAT8_B10_ML, LANDSAT8_B10_AL = 3.342e-4, 0.1  # RADIANCE_MULT / _ADD_BAND_10 of Landsat 8 MTL files
EARTHDIAL_S1_MEAN, EARTHDIAL_S1_STD = -20.26, 5.91  # dB, EarthDial's Sentinel-1 z-score
S1_CLIP_DB: dict[str, tuple[float, float]] = {"vv": (-25.0, 0.0), "vh": (-32.0, -5.0)}  # typical S1 ranges
IR_CLIP_K = (250.0, 330.0)


class ModalityError(RsvlmError, ValueError):
    """An array does not fit its modality (channel count, complex values, unknown preset)."""


# ---------------------------------------------------------------------------------- SAR
def complex_to_intensity(z: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Single-look complex → intensity ``I = |z·k|² = (re² + im²)·k²`` (linear power, float32).

    Args:
        z: complex array of any shape (e.g. C×H×W); ``k = scale`` is the calibration factor
            (Capella / SpaceNet 6 ``scale_factor``), so ``|z|·k`` is the calibrated amplitude.
    """
    if not np.iscomplexobj(z):
        raise ModalityError(f"complex_to_intensity needs a complex array, got dtype {np.asarray(z).dtype}")
    # float64: integer-scaled parts up to ±32767 square to ~1e9 before k² brings them down.
    z64 = np.asarray(z, dtype=np.complex128)
    return ((z64.real**2 + z64.imag**2) * float(scale) ** 2).astype(np.float32)


def amplitude_to_intensity(amplitude: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Amplitude ``A`` (e.g. :func:`rsvlm.data.raster.read_raster` of an SLC) → ``I = (A·k)²``, float32."""
    return ((np.asarray(amplitude, dtype=np.float64) * float(scale)) ** 2).astype(np.float32)


def intensity_to_db(
    intensity: np.ndarray, floor: float = DB_FLOOR, clip: tuple[float, float] | None = None
) -> np.ndarray:
    """Linear intensity → decibels ``10·log10(max(I, floor))``, then clipped to ``clip`` = (lo, hi) dB.

    ``floor`` 1e-10 maps zero (and negative, e.g. after calibration noise subtraction) intensity to
    −100 dB instead of −inf; the spec's clip ranges are VV [−25, 0] and VH [−32, −5] dB
    (:data:`S1_CLIP_DB`). NaN stays NaN. Returns float32 of the input's shape.
    """
    x = np.asarray(intensity, dtype=np.float64)
    db = 10.0 * np.log10(np.maximum(x, floor))
    if clip is not None:
        db = np.clip(db, *clip)
    return db.astype(np.float32)


def db_to_intensity(db: np.ndarray) -> np.ndarray:
    """Decibels → linear intensity ``10^(dB/10)`` (float32); the inverse of :func:`intensity_to_db`."""
    return (10.0 ** (np.asarray(db, dtype=np.float64) / 10.0)).astype(np.float32)


def multilook(intensity: np.ndarray, looks_y: int, looks_x: int) -> np.ndarray:
    """Multilook: mean of non-overlapping ``looks_y×looks_x`` blocks of **linear** intensity.

    ``out[..., i, j] = mean(I[..., i·ly:(i+1)·ly, j·lx:(j+1)·lx])``: ``...×H×W`` → ``...×H//ly×W//lx``
    (trailing rows / columns that do not fill a block are dropped). Averaging dB values would
    average log-power and bias the result low, so dB input must go through :func:`db_to_intensity`
    first; complex input is refused (average intensity, not phase). A NaN makes its block NaN.
    """
    x = np.asarray(intensity)
    if np.iscomplexobj(x):
        raise ModalityError("multilook averages intensity: convert the SLC with complex_to_intensity first")
    if looks_y < 1 or looks_x < 1 or x.ndim < 2:
        raise ModalityError(f"multilook needs looks >= 1 and a …×H×W array, got {looks_y}×{looks_x}, shape {x.shape}")
    h, w = (x.shape[-2] // looks_y) * looks_y, (x.shape[-1] // looks_x) * looks_x
    if h == 0 or w == 0:
        raise ModalityError(f"multilook: {looks_y}×{looks_x} looks do not fit an image of {x.shape[-2:]}")
    out = reduce(x[..., :h, :w].astype(np.float64), "... (h ly) (w lx) -> ... h w", "mean", ly=looks_y, lx=looks_x)
    return out.astype(np.float32)


# ------------------------------------------------------------------------------ thermal
def landsat_st_to_kelvin(
    dn: np.ndarray, scale: float = LANDSAT_ST_SCALE, offset: float = LANDSAT_ST_OFFSET, fill: int | None = 0
) -> np.ndarray:
    """Landsat Collection-2 Level-2 surface-temperature DN → kelvin ``T = DN·scale + offset``.

    Defaults are USGS's ST_B10 factors (0.00341802 K/DN, 149.0 K). DN == ``fill`` (0, the
    Collection-2 fill value; None: none) becomes NaN. Returns float32 kelvin.
    """
    d = np.asarray(dn, dtype=np.float64)
    kelvin = d * scale + offset
    if fill is not None:
        kelvin = np.where(d == fill, np.nan, kelvin)
    return kelvin.astype(np.float32)


def dn_to_radiance(dn: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """Level-1 DN → TOA spectral radiance ``L = M_L·DN + A_L`` (W·m⁻²·sr⁻¹·µm⁻¹), float32.

    ``gain`` = ``RADIANCE_MULT_BAND_x`` and ``offset`` = ``RADIANCE_ADD_BAND_x`` of the scene's MTL
    (Landsat 8 B10: 3.342e-4 and 0.1, :data:`LANDSAT8_B10_ML` / :data:`LANDSAT8_B10_AL`).
    """
    return (np.asarray(dn, dtype=np.float64) * gain + offset).astype(np.float32)


def brightness_temperature(
    radiance: np.ndarray, k1: float = LANDSAT8_B10_K1, k2: float = LANDSAT8_B10_K2
) -> np.ndarray:
    """TOA radiance → at-sensor brightness temperature ``T = K2 / ln(K1/L + 1)`` in kelvin (float32).

    ``k1`` (W·m⁻²·sr⁻¹·µm⁻¹) and ``k2`` (K) are the band's MTL constants; the defaults are
    Landsat 8 TIRS B10's (774.8853, 1321.0789). Non-positive radiance has no temperature: NaN.
    """
    L = np.asarray(radiance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = k2 / np.log(k1 / np.where(L > 0, L, np.nan) + 1.0)
    return t.astype(np.float32)


# -------------------------------------------------------------------- modality presets
@dataclass(frozen=True)
class Modality:
    """What one input kind is and how it reaches the model (all plain types, jsonargparse-buildable).

    Attributes:
        name: ``optical``, ``sar`` or ``infrared`` (a key of :data:`MODALITY_IDS`).
        unit: the unit ``to_model_input`` expects: ``dn8``, ``reflectance``, ``dB`` or ``kelvin``.
        min_channels, max_channels: accepted channel counts (``max_channels`` None: any).
        clip: ``(lo, hi)`` per channel in ``unit`` (one pair: every channel); empty: no clipping.
        norm: ``none``; ``scale`` (x / ``divisor``); ``minmax`` ((x − lo)/(hi − lo) ∈ [0, 1] with
            ``clip``); ``zscore`` ((x − mean)/std).
        mean, std: z-score statistics per channel (one value: every channel).
        divisor: for ``scale`` (255 for 8-bit chips).
    """

    name: str
    unit: str
    min_channels: int = 1
    max_channels: int | None = None
    clip: tuple[tuple[float, float], ...] = ()
    norm: str = "none"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    divisor: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in MODALITY_IDS:
            raise ModalityError(f"Modality.name must be one of {list(MODALITY_IDS)}, got {self.name!r}")
        if self.norm not in ("none", "scale", "minmax", "zscore"):
            raise ModalityError(f"Modality.norm must be none, scale, minmax or zscore, got {self.norm!r}")
        if self.norm == "minmax" and not self.clip:
            raise ModalityError(f"Modality {self.name!r}: norm 'minmax' needs the clip range")
        if self.norm == "zscore" and not (self.mean and self.std):
            raise ModalityError(f"Modality {self.name!r}: norm 'zscore' needs mean and std")

    def per_channel(self, values: Sequence[Any], channels: int, field: str) -> np.ndarray:
        """``values`` as a ``channels``-long float64 array (one value broadcasts to every channel)."""
        arr = np.asarray(values, dtype=np.float64)
        if len(arr) not in (1, channels):
            raise ModalityError(
                f"Modality {self.name!r}: field {field!r} has {len(arr)} entries for {channels} channels"
            )
        return np.broadcast_to(arr, (channels, *arr.shape[1:]))


_S1_CLIP = (S1_CLIP_DB["vv"], S1_CLIP_DB["vh"])
#: The spec's presets (§3.1). 8-bit chips are only scaled to [0, 1]: the expert's RGB mean/std is
#: applied after the stem made 3 channels, by the encoder, since each expert has its own.
MODALITIES: dict[str, Modality] = {
    "optical_dn8": Modality("optical", "dn8", 3, 3, norm="scale", divisor=255.0),
    "optical_reflectance": Modality("optical", "reflectance"),  # band statistics: rsvlm.data.stats
    "sar_dn8": Modality("sar", "dn8", 1, 2, norm="scale", divisor=255.0),
    "sentinel1_db": Modality(
        "sar", "dB", 1, 2, clip=_S1_CLIP, norm="zscore", mean=(EARTHDIAL_S1_MEAN,), std=(EARTHDIAL_S1_STD,)
    ),
    "sentinel1_db_minmax": Modality("sar", "dB", 1, 2, clip=_S1_CLIP, norm="minmax"),
    "infrared_dn8": Modality("infrared", "dn8", 1, 1, norm="scale", divisor=255.0),
    "infrared_kelvin": Modality("infrared", "kelvin", 1, 1, clip=(IR_CLIP_K,), norm="minmax"),
}


def modality_preset(modality: Modality | str) -> Modality:
    """``modality`` itself, or the :data:`MODALITIES` preset of that name."""
    if isinstance(modality, Modality):
        return modality
    if modality not in MODALITIES:
        raise ModalityError(f"unknown modality preset {modality!r}; known: {', '.join(MODALITIES)}")
    return MODALITIES[modality]


def _check_channels(x: np.ndarray, m: Modality, source: str, field: str) -> np.ndarray:
    if np.iscomplexobj(x):
        raise ModalityError(
            f"{source}: field {field!r} holds complex values; convert with complex_to_intensity and intensity_to_db"
        )
    x = x[None] if x.ndim == 2 else x
    count = x.shape[0] if x.ndim == 3 else -1
    hi = m.max_channels
    if count < m.min_channels or (hi is not None and count > hi):
        wanted = f"{m.min_channels}" if hi == m.min_channels else f"{m.min_channels}–{hi if hi else 'any'}"
        raise ModalityError(
            f"{source}: field {field!r} has shape {tuple(x.shape)}, "
            f"but {m.name} ({m.unit}) takes C×H×W with {wanted} channel(s)"
        )
    return x


def _normalise(x: np.ndarray, m: Modality) -> np.ndarray:
    c = x.shape[0]
    if m.clip:
        bounds = m.per_channel(m.clip, c, "clip")
        lo, hi = bounds[:, 0, None, None], bounds[:, 1, None, None]
        x = np.clip(x, lo, hi)
    if m.norm == "scale":
        return x / m.divisor
    if m.norm == "minmax":  # __post_init__ made sure clip (lo, hi) exists
        return (x - lo) / (hi - lo)
    if m.norm == "zscore":
        mean = m.per_channel(m.mean, c, "mean")[:, None, None]
        return (x - mean) / m.per_channel(m.std, c, "std")[:, None, None]
    return x


def to_model_input(
    array: np.ndarray,
    modality: Modality | str,
    nodata: float | None = None,
    valid: np.ndarray | None = None,
    source: str = "array",
    field: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """Clip and normalise one image of a modality for the model.

    Args:
        array: ``C×H×W`` (or ``H×W``: one channel) in the modality's ``unit``.
        modality: a :class:`Modality` or a :data:`MODALITIES` preset name.
        nodata: a value meaning "no data" (besides NaN / ±inf, always invalid).
        valid: an ``H×W`` mask of pixels already known valid (e.g. ``Raster.valid``).
        source, field: the file and field named in errors.

    Returns:
        ``(x, valid)``: float32 ``C×H×W`` normalised values, 0 at invalid pixels (spec §3.3), and
        bool ``H×W``: True where every channel is finite, not ``nodata`` and ``valid``.

    Raises:
        ModalityError: one line naming ``source``, ``field`` and the channel counts accepted.
    """
    m = modality_preset(modality)
    x = _check_channels(np.asarray(array), m, source, field).astype(np.float64)
    ok = np.all(np.isfinite(x), axis=0)
    if nodata is not None:
        ok &= ~np.any(x == nodata, axis=0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    out = np.where(ok[None], _normalise(np.where(ok[None], x, 0.0), m), 0.0)
    return out.astype(np.float32), ok


# ------------------------------------------------------------------------------- readers
@dataclass
class SlcChip:
    """Co-registered single-look complex channels (one polarisation each).

    Attributes:
        data: complex64 ``C×H×W`` in the file's (integer-scaled) units.
        scale: calibration factor ``k`` per channel (``|z|·k`` is the calibrated amplitude).
        pols: channel names, e.g. ``("hh", "hv", "vh", "vv")``.
        sources: the file of each channel.
        crs, transform: the shared georeferencing (None when absent).
    """

    data: np.ndarray
    scale: tuple[float, ...]
    pols: tuple[str, ...]
    sources: tuple[str, ...]
    crs: Any = None
    transform: Any = None

    def intensity(self) -> np.ndarray:
        """Calibrated intensity ``|z·k|²`` per channel, float32 ``C×H×W``."""
        return np.stack([complex_to_intensity(z, k) for z, k in zip(self.data, self.scale, strict=True)])


def capella_scale_factor(description: str | None, path: str) -> float:
    """``collect.image.scale_factor`` of a Capella-style TIFF ``ImageDescription`` JSON; 1.0 without one."""
    if not description:
        return 1.0
    try:
        return float(json.loads(description)["collect"]["image"]["scale_factor"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModalityError(f"{path}: ImageDescription has no readable collect.image.scale_factor ({exc})") from exc


def _read_complex_band(path: str, iq: bool) -> tuple[np.ndarray, float, Any, Any]:
    from rsvlm.data.raster import _georef, open_raster

    with open_raster(path, f"cannot read SLC {path}") as src:
        raw = src.read()
        scale = capella_scale_factor(src.tags().get("TIFFTAG_IMAGEDESCRIPTION"), path)
        crs, transform = _georef(src.crs, src.transform)
    if np.iscomplexobj(raw) and raw.shape[0] == 1 and not iq:
        return raw[0].astype(np.complex64), scale, crs, transform
    if iq and not np.iscomplexobj(raw) and raw.shape[0] == 2:
        # I/Q stored as two real bands: band 1 in-phase (real), band 2 quadrature (imaginary).
        return (raw[0] + 1j * raw[1]).astype(np.complex64), scale, crs, transform
    layout = "2 real bands (I, Q)" if iq else "1 complex band"
    raise ModalityError(f"{path}: an SLC file must hold {layout}, found {raw.shape[0]} band(s) of {raw.dtype}")


def read_slc(paths: Sequence[str | os.PathLike], pols: Sequence[str] | None = None, iq: bool = False) -> SlcChip:
    """Read single-look complex GeoTIFFs, one polarisation per file, into one :class:`SlcChip`.

    Args:
        paths: the files, in channel order; each holds one complex band (complex64 / complex int),
            or, with ``iq``, two real bands I and Q.
        pols: channel names (default ``c0``, ``c1``, …).

    Raises:
        FileNotFoundError: a file is missing.
        ModalityError: a file is not complex / I-Q, or the files are not on one grid (names both).
    """
    files = [os.fspath(p) for p in paths]
    names = tuple(pols) if pols is not None else tuple(f"c{i}" for i in range(len(files)))
    if len(names) != len(files) or not files:
        raise ModalityError(f"read_slc: {len(files)} files but pols={list(names)}")
    planes, scales, grid = [], [], None
    for path in files:
        z, k, crs, transform = _read_complex_band(path, iq)
        if grid is not None and (z.shape, crs, transform) != grid[1:]:
            raise ModalityError(f"{path}: not on the grid of {grid[0]} ({z.shape} vs {grid[1]}, or CRS/transform)")
        grid = grid or (path, z.shape, crs, transform)
        planes.append(z)
        scales.append(k)
    return SlcChip(np.stack(planes), tuple(scales), names, tuple(files), grid[2], grid[3])


def read_spacenet6_slc(folder: str | os.PathLike, pols: Sequence[str] = ("hh", "hv", "vh", "vv")) -> SlcChip:
    """The ``sar_<pol>.tif`` quad-pol SLC chips of a SpaceNet 6 / solaris folder, calibrated by each
    file's Capella ``scale_factor``."""
    root = Path(folder)
    return read_slc([root / f"sar_{p}.tif" for p in pols], pols=pols)


def read_s1_db(path: str | os.PathLike) -> Raster:
    """A Sentinel-1 GRD σ⁰ raster in dB (bands VV, VH; e.g. Sen1Floods11 ``*_S1Hand.tif``) as a
    :class:`rsvlm.data.raster.Raster`, refusing linear σ⁰ (no negative value: it is not dB)."""
    from rsvlm.data.raster import read_raster

    raster = read_raster(path, bands="sentinel1")
    values = raster.data[:, raster.valid]
    if values.size and not np.any(values < 0):
        raise ModalityError(f"{path}: band 'vv' has no negative value, so it is linear σ⁰, not dB; use intensity_to_db")
    return raster
