"""Raster IO: multispectral images in, binary masks out, georeferencing kept.

* :func:`read_raster` reads any GDAL raster (GeoTIFF first of all) of any band count and
  dtype into a float32 C×H×W array plus an H×W validity mask.
* :func:`read_window` / :func:`read_header` read one window / only the header of a file
  (:func:`rsvlm.data.stack.read_stack` reads one-file-per-band sets such as 38-Cloud).
* :func:`read_mask` reads a label raster as H×W uint8 values plus validity.
* :func:`write_geotiff` writes any C×H×W array atomically (every GeoTIFF rsvlm writes);
  :func:`write_mask` writes an H×W mask on the grid of a source raster, never over an input.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window as RioWindow

from rsvlm.contracts import MissingFileError, RsvlmError
from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.data.tiling import Window
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
        raise MissingFileError(f"raster file not found: {path}")


def _reason(exc: BaseException) -> str:
    # rasterio often says "Read failed. See previous exception" and chains GDAL's message.
    msgs = [str(exc)]
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(msgs) < 4:
        msgs.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return " <- ".join(m for m in msgs if m)


def _georef(crs: Any, transform: Affine) -> tuple[Any, Affine | None]:
    # GDAL reports the identity transform for files without a geotransform.
    if crs is None and transform == Affine.identity():
        return None, None
    return crs, transform


@contextmanager
def open_raster(path: str, failure: str) -> Iterator[Any]:
    """An open rasterio dataset of ``path`` (a file without georeferencing is fine); a missing
    file is a ``FileNotFoundError``, an unreadable one a :class:`RasterError` starting with ``failure``."""
    _check_exists(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                yield src
    # RasterioIOError is a RasterioError only from rasterio 1.4; 1.3 raises it for a corrupt file.
    except (RasterioError, RasterioIOError) as exc:
        raise RasterError(f"{failure}: {_reason(exc)}") from exc


def read_window(
    path: PathLike, window: Window | None = None, indexes: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, Any, Affine | None, float | None]:
    """Read a whole raster file or one window of it.

    Args:
        path: the raster.
        window: ``(row, col, h, w)`` in pixels, or None for the whole file.
        indexes: the bands to read, 1-based as in GDAL, in the order wanted (None: all of them);
            ``C`` below is their number, and only their masks decide validity.

    Returns:
        ``(data, valid, crs, transform, nodata)``: float32 C×h×w (complex → amplitude), bool
        h×w validity, the CRS, the window's own pixel → CRS transform (None when the file has no
        georeferencing) and the declared nodata value.

    Raises:
        FileNotFoundError: the file does not exist.
        RasterError: the file (or window) cannot be read; names the path and rasterio's reason.
    """
    p = os.fspath(path)
    where = "" if window is None else f" window {list(window)}"
    with open_raster(p, f"cannot read raster {p}{where}") as src:
        win = None if window is None else RioWindow(window[1], window[0], window[3], window[2])
        bands = None if indexes is None else [int(i) for i in indexes]
        raw = src.read(bands, window=win)
        masks = src.read_masks(bands, window=win)
        # The window shares the file's pixel size; its origin is the window's corner.
        transform = src.transform if win is None else src.transform @ Affine.translation(win.col_off, win.row_off)
        crs, transform = _georef(src.crs, transform)
        nodata = src.nodata
    data = (np.abs(raw) if np.iscomplexobj(raw) else raw).astype(np.float32, copy=False)
    # read_masks covers declared nodata (incl. NaN) and internal mask/alpha bands.
    valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(data), axis=0)
    return data, valid, crs, transform, (None if nodata is None else float(nodata))


@dataclass(frozen=True)
class RasterHeader:
    """What a raster file declares, read without its pixels."""

    path: str
    count: int
    height: int
    width: int
    crs: Any
    transform: Affine | None
    descriptions: tuple[str | None, ...] = ()


def read_header(path: PathLike) -> RasterHeader:
    """Band count, size, georeferencing and band descriptions of a raster file (pixels are not read).

    Raises:
        FileNotFoundError: the file does not exist.
        RasterError: the file cannot be opened (names the path).
    """
    p = os.fspath(path)
    with open_raster(p, f"cannot open raster {p}") as src:
        count, height, width = src.count, src.height, src.width
        crs, transform = _georef(src.crs, src.transform)
        descriptions = tuple(src.descriptions)
    return RasterHeader(p, count, height, width, crs, transform, descriptions)


def georef_meta(crs: Any, transform: Affine | None) -> dict[str, Any]:
    """JSON-friendly georeferencing: the CRS as a string and the first 6 transform numbers."""
    return {
        "crs": None if crs is None else crs.to_string(),
        "transform": None if transform is None else list(transform)[:6],
    }


def check_single_band(count: int, path: str) -> None:
    """Raise :class:`RasterError` unless a label raster has exactly one band."""
    if count != 1:
        raise RasterError(f"{path}: a label raster must have 1 band, found {count}")


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
    data, valid, crs, transform, nodata = read_window(p)
    spec = None
    if bands is not None:
        spec = band_spec(bands).with_source(p)
        spec.check_count(data.shape[0], path=p)
    return Raster(data=data, valid=valid, bands=spec, crs=crs, transform=transform, path=p, nodata=nodata)


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
    data, valid, _, _, _ = read_window(p)
    check_single_band(data.shape[0], p)
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
    return write_geotiff(out, m.astype(np.uint8)[None], like.crs, like.transform, compress="deflate")


def write_geotiff(
    path: PathLike,
    data: np.ndarray,
    crs: Any = None,
    transform: Affine | None = None,
    band_names: Sequence[str] = (),
    nodata: float | None = None,
    compress: str | None = None,
) -> Path:
    """Write a C×H×W array as a GeoTIFF, atomically (:func:`rsvlm.io.atomic.atomic_path`).

    Every GeoTIFF rsvlm writes goes through here, so a crash never leaves a half-written one.

    Args:
        path: output file (its folder is created; an existing file is replaced).
        data: C×H×W array; its dtype is the file's.
        crs, transform: georeferencing; None writes none.
        band_names: band descriptions, one per band (or none).
        nodata: the declared nodata value (e.g. NaN), or None.
        compress: GDAL compression (e.g. ``"deflate"``), or None.
    """
    out = Path(path)
    profile: dict[str, Any] = dict(
        driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0], dtype=data.dtype.name
    )
    optional = {"nodata": nodata, "compress": compress, "crs": crs, "transform": transform}
    profile.update({key: value for key, value in optional.items() if value is not None})
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            for i, name in enumerate(band_names, start=1):
                dst.set_band_description(i, name)
    return out


def map_to_pixels(transform: Any, xy: np.ndarray) -> np.ndarray:
    """``N×2`` map coordinates (x, y in the raster's CRS) → continuous pixel coordinates
    (column, row; pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``) through the inverse of the
    raster's affine ``transform``."""
    inverse = ~transform
    cols, rows = inverse * (xy[:, 0], xy[:, 1])
    return np.stack([np.asarray(cols, dtype=np.float64), np.asarray(rows, dtype=np.float64)], axis=1)
