"""Raster IO: multispectral images in, binary masks out, georeferencing kept.

* :func:`read_raster` reads any GDAL raster (GeoTIFF first of all) of any band count and
  dtype into a float32 C×H×W array plus an H×W validity mask.
* :func:`read_stack` reads one-file-per-band sets (e.g. 38-Cloud) into one raster.
* :func:`read_mask` reads a label raster as H×W uint8 values plus validity.
* :func:`write_mask` writes an H×W mask as a GeoTIFF on the grid of a source raster,
  atomically and never over an input.

Validity: a pixel is valid when, in **every** band, it is not the declared nodata value
(nor masked by an internal GDAL mask / alpha band) and is finite. Invalid pixels keep their
values in ``data`` (NaN stays NaN); every later step (indices, Otsu, APG, metrics) is given
``valid`` and ignores them.

Complex input (SAR single-look complex, e.g. SpaceNet 6 / Capella): ``data`` holds the
**amplitude** ``|z|`` as float32, without calibration scale factors, without squaring to
intensity and without conversion to dB; do those explicitly if a model needs them.

Rasters without georeferencing (no CRS, no geotransform, e.g. 38-Cloud patches) are read
with ``crs=None`` and ``transform=None``, and masks written on their grid carry none either.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from rsvlm.contracts import RsvlmError
from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.io.atomic import atomic_path

PathLike = str | os.PathLike


class RasterError(RsvlmError, ValueError):
    """A raster cannot be read or written, or does not match the raster it must match."""


@dataclass
class Raster:
    """A multispectral image with its validity mask and georeferencing.

    Attributes:
        data: float32 array, C×H×W.
        valid: bool array, H×W; True where every band holds a usable value.
        bands: names of the C bands, or None when unknown.
        crs: ``rasterio.crs.CRS`` or None when the file has none.
        transform: ``affine.Affine`` pixel → CRS transform, or None when the file has none.
        path: the file read (the first file for a stack), or None for in-memory rasters.
        nodata: the declared nodata value of the (first) file, or None.
        sources: every file the raster was read from (one per band for a stack).
    """

    data: np.ndarray
    valid: np.ndarray
    bands: BandSpec | None = None
    crs: Any = None
    transform: Affine | None = None
    path: str | None = None
    nodata: float | None = None
    sources: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise RasterError(
                f"Raster.data must be C×H×W, got shape {self.data.shape}" + (f" ({self.path})" if self.path else "")
            )
        if self.valid.shape != self.data.shape[1:]:
            raise RasterError(
                f"Raster.valid must be H×W = {self.data.shape[1:]}, got "
                f"{self.valid.shape}" + (f" ({self.path})" if self.path else "")
            )
        if self.bands is not None:
            self.bands.check_count(self.data.shape[0], path=self.path)
        if not self.sources and self.path is not None:
            self.sources = (self.path,)

    @property
    def count(self) -> int:
        """Number of bands C."""
        return int(self.data.shape[0])

    @property
    def height(self) -> int:
        return int(self.data.shape[1])

    @property
    def width(self) -> int:
        return int(self.data.shape[2])

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return (self.height, self.width)

    def band(self, name: str) -> np.ndarray:
        """The H×W plane of band ``name`` (requires ``bands``)."""
        if self.bands is None:
            raise BandError(
                f"{self.path or 'raster'}: has no band spec, cannot look up band {name!r}; pass bands= when reading",
                band=name,
                path=self.path,
            )
        return self.bands.take(self.data, name)


def _check_exists(path: str) -> None:
    # GDAL virtual paths and URLs cannot be checked with os.path; leave those to GDAL.
    if path.startswith("/vsi") or "://" in path:
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"raster file not found: {path}")


def _reason(exc: BaseException) -> str:
    # rasterio often says "Read failed. See previous exception" and chains GDAL's message.
    msgs = [str(exc)]
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(msgs) < 4:
        msgs.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return " <- ".join(m for m in msgs if m)


def _georef(src: Any) -> tuple[Any, Affine | None]:
    crs = src.crs
    transform = src.transform
    # GDAL reports the identity transform for files without a geotransform.
    if crs is None and transform == Affine.identity():
        transform = None
    return crs, transform


def _read_one(path: PathLike) -> tuple[np.ndarray, np.ndarray, Any, Affine | None, float | None]:
    """Read one file → (float32 C×H×W, valid H×W, crs, transform, nodata)."""
    p = os.fspath(path)
    _check_exists(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(p) as src:
                raw = src.read()
                masks = src.read_masks()
                crs, transform = _georef(src)
                nodata = src.nodata
    except RasterioError as exc:
        raise RasterError(f"cannot read raster {p}: {_reason(exc)}") from exc
    if np.iscomplexobj(raw):
        data = np.abs(raw).astype(np.float32, copy=False)
    else:
        data = raw.astype(np.float32, copy=False)
    # read_masks covers declared nodata (incl. NaN) and internal mask/alpha bands.
    valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(data), axis=0)
    return data, valid, crs, transform, (None if nodata is None else float(nodata))


def read_raster(path: PathLike, bands: BandSpec | str | Sequence[str] | None = None) -> Raster:
    """Read a raster file of any band count and dtype.

    Args:
        path: a GeoTIFF (or any GDAL-readable raster).
        bands: the band spec, a preset name or a list of band names; checked against the
            file's band count. None leaves ``Raster.bands`` unset.

    Returns:
        A :class:`Raster` with float32 C×H×W ``data`` (complex → amplitude) and H×W ``valid``.

    Raises:
        FileNotFoundError: the file does not exist.
        RasterError: the file is unreadable, corrupt or truncated (names the path and
            rasterio's reason).
        BandError: ``bands`` given and the band count differs (names the file, the expected
            spec and the count found).
    """
    p = os.fspath(path)
    data, valid, crs, transform, nodata = _read_one(p)
    spec = None
    if bands is not None:
        spec = band_spec(bands).with_source(p)
        spec.check_count(data.shape[0], path=p)
    return Raster(data=data, valid=valid, bands=spec, crs=crs, transform=transform, path=p, nodata=nodata)


def read_stack(paths: Sequence[PathLike], bands: BandSpec | str | Sequence[str]) -> Raster:
    """Read a one-file-per-band set (e.g. 38-Cloud ``red_…``, ``green_…`` TIFFs).

    Args:
        paths: one single-band file per band, in the order of ``bands``.
        bands: the band spec (preset name, list of names or ``BandSpec``) of the stack.

    Returns:
        A :class:`Raster` with C = len(paths); ``valid`` is the AND of every file's validity;
        CRS/transform/nodata from the first file; ``sources`` lists every file.

    Raises:
        BandError: the number of files differs from the spec, or a file has more than one band.
        RasterError: a file is unreadable, or files differ in size or georeferencing
            (names both files).
    """
    ps = [os.fspath(p) for p in paths]
    spec = band_spec(bands)
    if len(ps) != len(spec):
        raise BandError(
            f"read_stack: {len(ps)} files given for band spec ({', '.join(spec.names)}) of {len(spec)} bands", spec=spec
        )
    planes, valid = [], None
    first: tuple[str, Any, Affine | None, float | None, tuple[int, int]] | None = None
    for p, name in zip(ps, spec.names):
        data, v, crs, transform, nodata = _read_one(p)
        if data.shape[0] != 1:
            raise BandError(
                f"{p}: expected a single-band file for band {name!r}, found {data.shape[0]} bands",
                band=name,
                spec=spec,
                path=p,
            )
        if first is None:
            first = (p, crs, transform, nodata, data.shape[1:])
        else:
            if data.shape[1:] != first[4]:
                raise RasterError(
                    f"{p} is {data.shape[1]}×{data.shape[2]} but {first[0]} is "
                    f"{first[4][0]}×{first[4][1]}; stacked bands must share a grid"
                )
            if crs != first[1] or transform != first[2]:
                raise RasterError(
                    f"{p} and {first[0]} have different georeferencing ({crs}, {transform} vs {first[1]}, {first[2]})"
                )
        planes.append(data[0])
        valid = v if valid is None else (valid & v)
    assert first is not None and valid is not None
    return Raster(
        data=np.stack(planes),
        valid=valid,
        bands=spec.with_source(first[0]),
        crs=first[1],
        transform=first[2],
        path=first[0],
        nodata=first[3],
        sources=tuple(ps),
    )


def read_mask(
    path: PathLike, like: Raster | None = None, invalid_values: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Read a single-band label raster.

    Validity: a label pixel is invalid when it is the declared nodata value, is not finite,
    is negative (Sen1Floods11 uses -1 for "no data") or is one of ``invalid_values``
    (e.g. ``(0,)`` for Chesapeake, whose class 0 means "no data" but is not declared).
    Invalid pixels are set to 0 in the returned values.

    Args:
        path: the label raster.
        like: the image the labels belong to; its H×W must match.
        invalid_values: extra label values that mean "no data".

    Returns:
        ``(values, valid)``: uint8 H×W class codes and bool H×W validity.

    Raises:
        RasterError: unreadable file, more than one band, non-integer or > 255 labels, or an
            H×W different from ``like`` (names both files).
    """
    p = os.fspath(path)
    data, valid, _, _, _ = _read_one(p)
    if data.shape[0] != 1:
        raise RasterError(f"{p}: a label raster must have 1 band, found {data.shape[0]}")
    values = data[0]
    if like is not None and values.shape != like.shape:
        raise RasterError(
            f"label {p} is {values.shape[0]}×{values.shape[1]} but image "
            f"{like.path or '(in memory)'} is {like.height}×{like.width}"
        )
    valid = valid & (values >= 0)
    for v in invalid_values:
        valid &= values != v
    good = values[valid]
    if good.size and (good.max() > 255 or np.any(good != np.round(good))):
        raise RasterError(
            f"{p}: labels must be integers in 0..255, found values in "
            f"[{good.min()}, {good.max()}]" + (" with fractions" if np.any(good != np.round(good)) else "")
        )
    out = np.where(valid, values, 0).astype(np.uint8)
    return out, valid


def write_mask(path: PathLike, mask: np.ndarray, like: Raster, overwrite: bool = False) -> Path:
    """Write an H×W mask as a single-band uint8 GeoTIFF on the grid of ``like``.

    The output carries ``like``'s CRS and transform (none if it has none), is
    deflate-compressed, and is written to a temporary file in the same folder and then
    moved into place with ``os.replace``, so a crash never leaves a half-written mask.

    Args:
        path: output file.
        mask: H×W bool or integer array (values 0..255), same H×W as ``like``.
        like: the source raster whose grid the mask is on.
        overwrite: replace an existing output (never an input of ``like``).

    Returns:
        The output path.

    Raises:
        RasterError: output is one of ``like``'s input files, exists and ``overwrite`` is
            False, or the mask's shape/values do not fit.
    """
    out = Path(path)
    target = out.resolve()
    for src in like.sources or ((like.path,) if like.path else ()):
        if Path(src).resolve() == target:
            raise RasterError(f"refusing to write mask over its source raster {src}")
    if out.exists() and not overwrite:
        raise RasterError(f"{out} already exists; pass overwrite=True to replace it")
    m = np.asarray(mask)
    if m.shape != like.shape:
        raise RasterError(f"mask for {out} is {m.shape} but raster {like.path or '(in memory)'} is {like.shape}")
    if m.dtype != np.bool_ and m.size and (m.min() < 0 or m.max() > 255):
        raise RasterError(f"mask for {out} must hold values in 0..255, found [{m.min()}, {m.max()}]")
    profile: dict[str, Any] = dict(
        driver="GTiff", height=m.shape[0], width=m.shape[1], count=1, dtype="uint8", compress="deflate"
    )
    if like.crs is not None:
        profile["crs"] = like.crs
    if like.transform is not None:
        profile["transform"] = like.transform
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(m.astype(np.uint8), 1)
    return out
