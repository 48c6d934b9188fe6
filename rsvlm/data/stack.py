"""One-file-per-band rasters (e.g. 38-Cloud ``red_…`` TIFFs, a Landsat scene's ``…_SR_B4.TIF``,
Sentinel-2's ``…_B04.jp2``) as one raster: read into memory (:func:`read_stack`) or written, window
by window, as one GeoTIFF of named bands (:func:`write_stack`, ``rsvlm data stack``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.data.raster import PathLike, Raster, RasterError, open_raster, read_window

#: GDAL resamplings offered for a band on another grid than the first file's.
RESAMPLINGS = ("nearest", "bilinear", "cubic", "average")


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
    _check_file_count(ps, spec)
    planes, valid = [], None
    first: tuple[str, Any, Affine | None, float | None, tuple[int, int]] | None = None
    for p, name in zip(ps, spec.names):
        data, v, crs, transform, nodata = read_window(p)
        _check_single_band(p, name, data.shape[0], spec)
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


@dataclass(frozen=True)
class StackSummary:
    """What :func:`write_stack` wrote.

    Attributes:
        path: the GeoTIFF.
        bands: its band names (also its band descriptions), in order.
        height, width: its size (the first file's).
        dtype: its data type (one that holds every input's).
        resampled: the inputs that were on another grid and were resampled onto the first's.
    """

    path: Path
    bands: tuple[str, ...]
    height: int
    width: int
    dtype: str
    resampled: tuple[str, ...]


def write_stack(
    paths: Sequence[PathLike],
    bands: BandSpec | str | Sequence[str],
    out: PathLike,
    resampling: str = "bilinear",
    overwrite: bool = False,
    block: int = 1024,
    progress: bool = False,
    scale: float | None = None,
    offset: float = 0.0,
) -> StackSummary:
    """Write single-band files as one GeoTIFF whose band descriptions are the band names.

    The first file fixes the grid (CRS, transform, size). A file on another grid (a 20 m
    Sentinel-2 band beside 10 m ones, another CRS) is warped onto it with ``resampling``
    (rasterio's ``WarpedVRT``); pixels it does not cover are invalid. The output is tiled and
    deflate-compressed (BigTIFF when large), of a data type that holds every input's, with the
    inputs' nodata value when they share one and an internal mask of the pixels valid in every
    band (what rsvlm and GDAL read as validity). Band descriptions make ``rsvlm predict`` read
    the bands by name whatever order the model wants (:func:`rsvlm.data.bands.described_bands`).
    Written ``block``×``block`` pixels at a time into a temporary file moved into place at the end.

    Args:
        paths: one single-band raster per band, in the order of ``bands``.
        bands: the band spec of the stack (preset name, list of names or ``BandSpec``).
        out: the GeoTIFF to write; never one of ``paths``.
        resampling: one of :data:`RESAMPLINGS`, for files on another grid.
        overwrite: replace ``out`` if it exists (refused otherwise, before anything is read).
        block: window side in pixels.
        progress: a progress bar over the windows (stderr).
        scale, offset: write ``value · scale + offset`` as float32 reflectance, NaN where not valid
            (given either): a product's digital numbers to its physical units, which spectral
            indices need (an offset changes NDWI and NDVI). Landsat Collection-2 Level-2 surface
            reflectance: ``scale=2.75e-5, offset=-0.2``; Sentinel-2 L2A from processing baseline
            04.00: ``scale=1e-4, offset=-0.1``. Default: the values as they are.

    Raises:
        BandError: the number of files differs from the spec, or a file has more than one band.
        RasterError: a file is unreadable, ``out`` exists (without ``overwrite``) or is an input, or
            a file on another grid has no georeferencing to be resampled by (names the files).
    """
    import rasterio
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import Resampling
    from tqdm.auto import tqdm

    from rsvlm.io.atomic import atomic_path

    ps = [os.fspath(p) for p in paths]
    spec = band_spec(bands)
    out = Path(out)
    _check_file_count(ps, spec)
    if resampling not in RESAMPLINGS:
        raise ValueError(f"resampling: one of {', '.join(RESAMPLINGS)}, got {resampling!r}")
    if any(Path(p).resolve() == out.resolve() for p in ps):
        raise RasterError(f"{out}: the output is one of the input files; name another")
    if out.exists() and not overwrite:
        raise RasterError(f"{out} exists; pass overwrite=True (rsvlm data stack --overwrite) to replace it")
    with ExitStack() as opened:
        sources = [opened.enter_context(open_raster(p, f"cannot read raster {p}")) for p in ps]
        ref = sources[0]
        for p, name, src in zip(ps, spec.names, sources):
            _check_single_band(p, name, src.count, spec)
        readers: list[tuple[str, Any, bool]] = []  # (file, reader, warped: its validity in band 2)
        for p, src in zip(ps, sources):
            if _same_grid(src, ref):
                readers.append((p, src, False))
                continue
            if src.crs is None or ref.crs is None:
                raise RasterError(
                    f"{p} is not on the grid of {ps[0]} and one of them has no CRS to resample by; "
                    "give files on one grid or georeferenced ones"
                )
            vrt = WarpedVRT(
                src,
                crs=ref.crs,
                transform=ref.transform,
                width=ref.width,
                height=ref.height,
                resampling=Resampling[resampling],
                add_alpha=True,  # band 2: 0 where the file has no data or does not reach
            )
            readers.append((p, opened.enter_context(vrt), True))
        rescale = scale is not None or offset != 0.0
        if rescale:
            dtype, nodata = "float32", float("nan")
        else:
            dtype = np.result_type(*(src.dtypes[0] for src in sources)).name
            nodata = _common_nodata([src.nodata for src in sources])
        profile = {
            "driver": "GTiff",
            "height": ref.height,
            "width": ref.width,
            "count": len(ps),
            "dtype": dtype,
            "crs": ref.crs,
            "transform": ref.transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        windows = [
            rasterio.windows.Window(col, row, min(block, ref.width - col), min(block, ref.height - row))
            for row in range(0, ref.height, block)
            for col in range(0, ref.width, block)
        ]
        # The mask goes inside the GeoTIFF, not in a .msk file beside it that a copy would lose.
        with (
            atomic_path(out, overwrite) as tmp,
            rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
            rasterio.open(tmp, "w", **profile) as dst,
        ):
            for index, (name, path) in enumerate(zip(spec.names, ps), start=1):
                dst.set_band_description(index, name)
                dst.update_tags(index, source=Path(path).name)
            for window in tqdm(windows, desc=f"stack {out.name}", unit="window", disable=not progress):
                valid = np.ones((int(window.height), int(window.width)), bool)
                for index, (path, reader, warped) in enumerate(readers, start=1):
                    data, mask = _read_band(reader, window, path, alpha=warped)
                    valid &= mask
                    if rescale:
                        data = np.where(mask, data * (1.0 if scale is None else scale) + offset, np.nan)
                    dst.write(data.astype(dtype, copy=False), index, window=window)
                dst.write_mask(valid.astype(np.uint8) * 255, window=window)
    resampled = tuple(path for path, _, warped in readers if warped)
    return StackSummary(out, spec.names, ref.height, ref.width, dtype, resampled)


def _check_file_count(paths: Sequence[str], spec: BandSpec) -> None:
    """One file per band of ``spec``, or a :class:`BandError` giving both counts."""
    if len(paths) != len(spec):
        raise BandError(f"{len(paths)} files given for the {len(spec)} bands {', '.join(spec.names)}", spec=spec)


def _check_single_band(path: str, name: str, count: int, spec: BandSpec) -> None:
    """A file of a stack holds one band, or a :class:`BandError` naming the file and its band."""
    if count != 1:
        raise BandError(
            f"{path}: expected a single-band file for band {name!r}, found {count} bands",
            band=name,
            spec=spec,
            path=path,
        )


def _read_band(reader: Any, window: Any, path: str, alpha: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(data h×w, valid h×w bool)`` of band 1 of a reader's window; a read error names ``path``.

    ``alpha``: the reader is a ``WarpedVRT`` with an alpha band (2), which its masks do not report
    (GDAL flags them all valid), so it is read as validity too.
    """
    from rasterio.errors import RasterioError, RasterioIOError

    try:
        data = reader.read(1, window=window)
        valid = reader.read_masks(1, window=window) > 0
        if alpha:
            valid &= reader.read(2, window=window) > 0
    except (RasterioError, RasterioIOError) as exc:
        raise RasterError(f"cannot read raster {path} window {window.flatten()}: {exc}") from exc
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data)
    return data, valid


def _same_grid(src: Any, ref: Any) -> bool:
    """Whether two open rasters share size, CRS and transform (pixel for pixel)."""
    return (src.height, src.width, src.crs, src.transform) == (ref.height, ref.width, ref.crs, ref.transform)


def _common_nodata(values: Sequence[float | None]) -> float | None:
    """The nodata value every input declares (NaN counts as one value), else None."""
    keys = {"nan" if v is not None and np.isnan(v) else v for v in values}
    if len(keys) != 1:
        return None
    return values[0]
