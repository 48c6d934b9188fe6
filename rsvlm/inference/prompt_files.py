"""Visual prompts from the command line and from files, placed in one image's pixels (``rsvlm ask``).

Points (``X,Y`` or ``X,Y,LABEL``, label 0 for background) and boxes (``X0,Y0,X1,Y1``) come as
text. Free-form prompts come as files:

* GeoJSON (see :mod:`rsvlm.io.geojson`): Point / MultiPoint → points, LineString /
  MultiLineString → strokes, Polygon / MultiPolygon → one painted mask per geometry, rasterised
  by pixel centre (``rasterio.features.rasterize``: a pixel is inside when its centre is);
* a JSON list of ``[x, y]`` vertices (one stroke) or of such lists (one stroke each);
* a mask raster (GeoTIFF, PNG, ...; nonzero and not nodata = inside): on the image's grid (the
  same size), or georeferenced and resampled onto the image's grid (nearest neighbour).

Coordinates are ``pixel`` (x right, y down, pixel edges at integers, centres at +0.5, as
:class:`rsvlm.data.visual_prompts.VisualPrompt`) or ``map`` (the image's CRS, through its
transform; a map box is ``min x, min y, max x, max y``). A GeoJSON with a ``crs`` member naming
another CRS is reprojected to the image's; one without is in the image's CRS. Every problem is a
one-line :class:`PromptError` naming the option and the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsvlm.contracts import RsvlmError
from rsvlm.data.raster import RasterError, RasterHeader, map_to_pixels, open_raster, read_header
from rsvlm.io.geojson import GeoJSONError, Shapes, map_coordinates, read_json, read_shapes

COORDINATES = ("pixel", "map")
VECTOR_SUFFIXES = (".json", ".geojson")


class PromptError(RsvlmError, ValueError):
    """A visual prompt that cannot be read or placed on the image (names the option and the file)."""


@dataclass
class PlacedPrompts:
    """Prompts in one image's pixels, as :meth:`rsvlm.inference.api.Predictor.predict` takes them."""

    points: list[list[float]] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    scribbles: list[list[list[float]]] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)

    def arguments(self) -> dict[str, Any]:
        """``points=``, ``boxes=``, ``scribble=`` and ``mask=`` of ``predict`` (the ones given)."""
        given = {"points": self.points, "boxes": self.boxes, "scribble": self.scribbles, "mask": self.masks}
        return {k: v for k, v in given.items() if len(v)}


def parse_numbers(text: str, option: str, counts: tuple[int, ...], form: str) -> list[float]:
    """``"1.5,2,3"`` → ``[1.5, 2.0, 3.0]``: comma-separated finite numbers, as many as one of ``counts``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not np.isfinite(values).all():
        raise PromptError(f"{option} {text!r}: expected {form}")
    return values


def parse_point(text: str) -> list[float]:
    """``X,Y`` or ``X,Y,LABEL`` (label 1 foreground, 0 background) of ``--point``."""
    values = parse_numbers(text, "--point", (2, 3), "X,Y or X,Y,LABEL (comma-separated numbers)")
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise PromptError(f"--point {text!r}: the label must be 1 (foreground) or 0 (background)")
    return values


def parse_box(text: str) -> list[float]:
    """``X0,Y0,X1,Y1`` of ``--box`` with ``X0 <= X1`` and ``Y0 <= Y1`` (in map coordinates: min x,
    min y, max x, max y)."""
    values = parse_numbers(text, "--box", (4,), "X0,Y0,X1,Y1 (4 comma-separated numbers)")
    if values[2] < values[0] or values[3] < values[1]:
        raise PromptError(f"--box {text!r}: needs X0 <= X1 and Y0 <= Y1")
    return values


def place_prompts(
    image: str | os.PathLike,
    points: Sequence[tuple[str, list[float]]] = (),
    boxes: Sequence[tuple[str, list[float]]] = (),
    shape_files: Sequence[str | os.PathLike] = (),
    mask_files: Sequence[str | os.PathLike] = (),
    coordinates: str = "pixel",
) -> PlacedPrompts:
    """The prompts of ``rsvlm ask`` in the pixels of ``image`` (see the module docstring).

    Args:
        image: the raster the prompts are drawn on.
        points, boxes: ``(text as given, parsed numbers)`` of each ``--point`` / ``--box``.
        shape_files: ``--scribble`` files (GeoJSON or a JSON list of vertices).
        mask_files: ``--mask-prompt`` files (a mask raster, or a GeoJSON / JSON file as above).
        coordinates: ``"pixel"`` or ``"map"``.

    Raises:
        PromptError: a prompt outside the image, an unreadable file, a CRS or grid that cannot be
            matched to the image's.
    """
    if coordinates not in COORDINATES:
        raise PromptError(f"--coordinates must be pixel or map, got {coordinates!r}")
    try:
        header = read_header(image)
    except FileNotFoundError:
        raise PromptError(f"{image}: no such file") from None
    if coordinates == "map" and (header.crs is None or header.transform is None):
        raise PromptError(f"--coordinates map: {image} has no CRS and transform; give the prompts in pixels")
    placed = PlacedPrompts()
    for text, values in points:
        xy = _to_pixels(header, np.array([values[:2]]), coordinates)[0]
        _check_point(xy, header, f"--point {text!r}")
        placed.points.append([*xy.tolist(), *values[2:]])
    for text, values in boxes:
        corners = _to_pixels(header, np.array([values[:2], values[2:]]), coordinates)
        x0, y0, x1, y1 = (*corners.min(axis=0).tolist(), *corners.max(axis=0).tolist())
        if not (x0 < header.width and x1 > 0 and y0 < header.height and y1 > 0):
            raise PromptError(f"--box {text!r}: lies outside {image} ({_size(header)})")
        placed.boxes.append([x0, y0, x1, y1])
    for path in shape_files:
        _add_vector_file(placed, header, Path(path), "--scribble", coordinates)
    for path in mask_files:
        if Path(path).suffix.lower() in VECTOR_SUFFIXES:
            _add_vector_file(placed, header, Path(path), "--mask-prompt", coordinates)
        else:
            placed.masks.append(mask_on_grid(Path(path), header, "--mask-prompt"))
    return placed


def _size(header: RasterHeader) -> str:
    return f"{header.width}×{header.height} pixels"


def _to_pixels(header: RasterHeader, xy: np.ndarray, coordinates: str) -> np.ndarray:
    return map_to_pixels(header.transform, xy) if coordinates == "map" else xy.astype(np.float64)


def _check_point(xy: np.ndarray, header: RasterHeader, where: str) -> None:
    if not (0 <= xy[0] < header.width and 0 <= xy[1] < header.height):
        raise PromptError(f"{where}: pixel ({xy[0]:g}, {xy[1]:g}) lies outside {header.path} ({_size(header)})")


# ---------------------------------------------------------------------------- vector files
def _read_vector(path: Path, where: str) -> Shapes:
    """A GeoJSON file's shapes, or a JSON list of vertices as LineStrings (no CRS)."""
    value = read_json(path, where)
    if not isinstance(value, list):
        return read_shapes(path, where)
    nested = bool(value) and isinstance(value[0], list) and bool(value[0]) and isinstance(value[0][0], list)
    strokes = value if nested else [value]
    for i, stroke in enumerate(strokes):
        ok = isinstance(stroke, list) and len(stroke) >= 2
        ok = ok and all(isinstance(p, list) and len(p) == 2 and all(_is_number(c) for c in p) for p in stroke)
        if not ok:
            raise PromptError(f"{where}: a stroke must be [[x, y], ...] with at least 2 vertices (stroke {i})")
    return Shapes([{"type": "LineString", "coordinates": s} for s in strokes])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _in_pixels(shapes: Shapes, header: RasterHeader, coordinates: str, where: str) -> list[dict[str, Any]]:
    """The geometries in the image's pixels (reprojected first when the file names another CRS)."""
    if coordinates == "pixel":
        if shapes.crs is not None:
            raise PromptError(
                f"{where}: declares the CRS {shapes.crs}, so its coordinates are map coordinates: "
                "pass --coordinates map"
            )
        return shapes.geometries
    geometries = shapes.geometries
    if shapes.crs is not None:
        geometries = _reprojected(geometries, shapes.crs, header, where)
    return [map_coordinates(g, lambda xy: map_to_pixels(header.transform, xy)) for g in geometries]


def _reprojected(geometries: list[dict], name: str, header: RasterHeader, where: str) -> list[dict]:
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform_geom

    try:
        with rasterio.Env():  # GDAL's messages go to logging, not to stderr beside the one-line error
            source = CRS.from_user_input(name)
    except CRSError as error:
        raise PromptError(f"{where}: cannot read its CRS {name!r} ({str(error).splitlines()[0]})") from None
    if source == header.crs:
        return geometries
    try:
        with rasterio.Env():
            return [transform_geom(source, header.crs, g) for g in geometries]
    except Exception as error:  # rasterio / PROJ errors of many kinds
        raise PromptError(
            f"{where}: cannot reproject from {name} to the CRS of {header.path} ({str(error).splitlines()[0]})"
        ) from None


def _add_vector_file(placed: PlacedPrompts, header: RasterHeader, path: Path, option: str, coordinates: str) -> None:
    from rasterio.features import rasterize
    from rasterio.transform import Affine

    from rsvlm.prompts.geometry import clip_polyline

    where = f"{option} {path}"
    try:
        shapes = _read_vector(path, where)
    except GeoJSONError as error:
        raise PromptError(str(error)) from None
    for i, geometry in enumerate(_in_pixels(shapes, header, coordinates, where)):
        at, kind, coords = f"{where} (geometry {i}, {geometry['type']})", geometry["type"], geometry["coordinates"]
        if kind in ("Point", "MultiPoint"):
            for xy in [coords] if kind == "Point" else coords:
                _check_point(np.asarray(xy[:2], dtype=np.float64), header, at)
                placed.points.append([float(xy[0]), float(xy[1])])
        elif kind in ("LineString", "MultiLineString"):
            for line in [coords] if kind == "LineString" else coords:
                vertices = np.asarray(line, dtype=np.float64)[:, :2]
                if len(vertices) < 2:
                    raise PromptError(f"{at}: a stroke needs at least 2 vertices")
                if clip_polyline(vertices, header.width, header.height) is None:
                    raise PromptError(f"{at}: the stroke lies outside {header.path} ({_size(header)})")
                placed.scribbles.append(vertices.tolist())
        else:
            try:
                mask = rasterize(
                    [geometry], out_shape=(header.height, header.width), transform=Affine.identity(), dtype="uint8"
                )
            except Exception as error:  # a ring of too few positions, a self-crossing GEOS refuses, ...
                raise PromptError(f"{at}: cannot rasterise it ({str(error).splitlines()[0]})") from None
            if not mask.any():
                raise PromptError(f"{at}: covers no pixel centre of {header.path} ({_size(header)})")
            placed.masks.append(mask.astype(bool))


# ---------------------------------------------------------------------------- mask rasters
def mask_on_grid(path: Path, header: RasterHeader, option: str = "--mask-prompt") -> np.ndarray:
    """``H×W`` bool: a mask raster (nonzero, valid pixels of any band) on the grid of ``header``'s image.

    A raster of the image's size is taken as on its grid unless both are georeferenced on
    different grids; a georeferenced one of another grid is resampled (nearest neighbour) onto it.
    """
    where = f"{option} {path}"
    try:
        with open_raster(str(path), f"{where}: cannot read the mask raster") as src:
            inside = (src.read() != 0).any(axis=0) & (src.dataset_mask() > 0)
            crs, transform = src.crs, src.transform
    except FileNotFoundError:
        raise PromptError(f"{where}: no such file") from None
    except RasterError as error:
        raise PromptError(str(error)) from None
    from rasterio.transform import Affine

    georeferenced = crs is not None and transform != Affine.identity()
    image_georeferenced = header.crs is not None and header.transform is not None
    same_size = inside.shape == (header.height, header.width)
    if georeferenced and image_georeferenced:
        if not (same_size and crs == header.crs and transform.almost_equals(header.transform)):
            inside = _resampled(inside, crs, transform, header, where)
    elif not same_size:
        raise PromptError(
            f"{where}: a {inside.shape[1]}×{inside.shape[0]} mask cannot be matched to the grid of {header.path} "
            f"({_size(header)}): give a mask of the image's size, or georeference both"
        )
    if not inside.any():
        raise PromptError(f"{where}: no pixel of the mask falls on {header.path}")
    return inside


def _resampled(inside: np.ndarray, crs: Any, transform: Any, header: RasterHeader, where: str) -> np.ndarray:
    from rasterio.warp import Resampling, reproject

    out = np.zeros((header.height, header.width), dtype=np.uint8)
    try:
        reproject(
            inside.astype(np.uint8),
            out,
            src_transform=transform,
            src_crs=crs,
            dst_transform=header.transform,
            dst_crs=header.crs,
            resampling=Resampling.nearest,
        )
    except Exception as error:  # rasterio / PROJ errors of many kinds
        raise PromptError(
            f"{where}: cannot resample the mask onto the grid of {header.path} ({str(error).splitlines()[0]})"
        ) from None
    return out > 0


__all__ = [
    "COORDINATES",
    "PlacedPrompts",
    "PromptError",
    "mask_on_grid",
    "parse_box",
    "parse_point",
    "place_prompts",
]
