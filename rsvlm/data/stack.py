"""One-file-per-band rasters (e.g. 38-Cloud ``red_…``, ``green_…`` TIFFs) read as one raster."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from affine import Affine

from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.data.raster import PathLike, Raster, RasterError, read_window


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
        data, v, crs, transform, nodata = read_window(p)
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
