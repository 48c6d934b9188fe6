"""GeoJSON in and out: the geometries (and declared CRS) of a prompt file, and the boxes of an
answer written as a FeatureCollection in the image's CRS.

Reading takes a FeatureCollection, a Feature, a GeometryCollection or a bare geometry and returns
its Point, MultiPoint, LineString, MultiLineString, Polygon and MultiPolygon geometries in file
order. A ``crs`` member (GeoJSON 2008: ``{"type": "name", "properties": {"name": "EPSG:32632"}}``,
as GDAL writes it) is returned as its name; RFC 7946 files have none.

Writing follows GDAL's GeoJSON driver: coordinates in the image's CRS, named in a ``crs`` member
(``urn:ogc:def:crs:EPSG::<code>``, or the WKT of a CRS without an EPSG code); a picture without
georeferencing gets pixel coordinates (x right, y down) and no ``crs`` member.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsvlm.contracts import RsvlmError
from rsvlm.io.atomic import atomic_write_text

GEOMETRY_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")
#: Nesting depth of the coordinates of each geometry type (a Point is one position: depth 1).
_DEPTH = {"Point": 1, "MultiPoint": 2, "LineString": 2, "MultiLineString": 3, "Polygon": 3, "MultiPolygon": 4}


class GeoJSONError(RsvlmError, ValueError):
    """A GeoJSON file that cannot be read, or holds something other than geometries (names the file)."""


@dataclass
class Shapes:
    """The geometries of a GeoJSON file.

    Attributes:
        geometries: GeoJSON geometry objects (``{"type", "coordinates"}``), in file order.
        crs: the name in the file's ``crs`` member, or None when it has none.
    """

    geometries: list[dict[str, Any]]
    crs: str | None = None


def read_json(path: str | os.PathLike, where: str) -> Any:
    """The JSON value of the file at ``path``; a missing or unparsable file is a :class:`GeoJSONError`
    starting with ``where``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GeoJSONError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise GeoJSONError(f"{where}: cannot read the file ({error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise GeoJSONError(f"{where}: not JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None


def declared_crs(value: Any, where: str) -> str | None:
    """The name in the ``crs`` member of a GeoJSON object, or None."""
    member = value.get("crs") if isinstance(value, dict) else None
    if member is None:
        return None
    name = member.get("properties", {}).get("name") if isinstance(member, dict) else None
    if not (isinstance(member, dict) and member.get("type") == "name" and isinstance(name, str)):
        raise GeoJSONError(f"{where}: the crs member must be {{'type': 'name', 'properties': {{'name': ...}}}}")
    return name


def _geometries(value: Any, where: str) -> list[dict[str, Any]]:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "FeatureCollection":
        features = value.get("features")
        if not isinstance(features, list):
            raise GeoJSONError(f"{where}: a FeatureCollection needs a list of features")
        return [g for i, f in enumerate(features) for g in _geometries(f, f"{where}: features[{i}]")]
    if kind == "Feature":
        geometry = value.get("geometry")
        return [] if geometry is None else _geometries(geometry, where)
    if kind == "GeometryCollection":
        parts = value.get("geometries")
        if not isinstance(parts, list):
            raise GeoJSONError(f"{where}: a GeometryCollection needs a list of geometries")
        return [g for i, part in enumerate(parts) for g in _geometries(part, f"{where}: geometries[{i}]")]
    if kind in GEOMETRY_TYPES:
        check_coordinates(value.get("coordinates"), _DEPTH[kind], f"{where}: {kind}")
        return [{"type": kind, "coordinates": value["coordinates"]}]
    raise GeoJSONError(f"{where}: expected a GeoJSON geometry, Feature or FeatureCollection, got type {kind!r}")


def check_coordinates(coordinates: Any, depth: int, where: str) -> None:
    """Raise :class:`GeoJSONError` unless ``coordinates`` nest ``depth`` lists deep with positions
    of 2 or 3 finite numbers at the bottom."""
    if depth == 1:
        ok = isinstance(coordinates, list) and len(coordinates) in (2, 3)
        ok = ok and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coordinates)
        if not ok or not np.isfinite(np.asarray(coordinates, dtype=np.float64)).all():
            raise GeoJSONError(f"{where}: a position must be [x, y], got {coordinates!r}")
        return
    if not isinstance(coordinates, list) or not coordinates:
        raise GeoJSONError(f"{where}: coordinates must be a non-empty list, got {coordinates!r}")
    for part in coordinates:
        check_coordinates(part, depth - 1, where)


def read_shapes(path: str | os.PathLike, where: str | None = None) -> Shapes:
    """The geometries and declared CRS of a GeoJSON file (see the module docstring).

    Raises:
        GeoJSONError: the file is missing, not JSON, or holds no geometry (message starts with ``where``,
            default the path).
    """
    where = where or str(path)
    value = read_json(path, where)
    shapes = Shapes(_geometries(value, where), declared_crs(value, where))
    if not shapes.geometries:
        raise GeoJSONError(f"{where}: holds no geometry")
    return shapes


def map_coordinates(geometry: dict[str, Any], move: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """``geometry`` with every position moved by ``move`` (``N×2`` float64 → ``N×2``; a third
    coordinate is dropped)."""

    def moved(value: Any, depth: int) -> Any:
        if depth == 2:
            return move(np.asarray(value, dtype=np.float64)[:, :2]).tolist()
        return [moved(part, depth - 1) for part in value]

    depth = _DEPTH[geometry["type"]]
    coordinates = geometry["coordinates"]
    if depth == 1:
        return {"type": geometry["type"], "coordinates": moved([coordinates], 2)[0]}
    return {"type": geometry["type"], "coordinates": moved(coordinates, depth)}


def crs_member(crs: Any) -> dict[str, Any] | None:
    """The ``crs`` member naming ``crs`` (a ``rasterio.crs.CRS``), or None for None."""
    if crs is None:
        return None
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def box_ring(box: Sequence[float], transform: Any = None) -> list[list[float]]:
    """The closed ring (5 positions) of a pixel box ``x0, y0, x1, y1`` (pixel edges), through the
    affine ``transform`` (pixel → map) when one is given, else in pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return [pixel_to_map(x, y, transform) for x, y in corners]


def pixel_to_map(x: float, y: float, transform: Any = None) -> list[float]:
    """``[X, Y]``: the pixel position ``(x, y)`` (x right, y down, pixel edges at integers) through the
    affine ``transform`` (``X = a·x + b·y + c``, ``Y = d·x + e·y + f``), or ``[x, y]`` without one."""
    if transform is None:
        return [float(x), float(y)]
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    return [a * x + b * y + c, d * x + e * y + f]


def grounding_collection(groundings: Sequence[Any], crs: Any = None, transform: Any = None) -> dict[str, Any]:
    """A FeatureCollection of the boxes (Polygons) and points of ``groundings``
    (:class:`rsvlm.data.coords.Grounding`, in the image's pixels), each with its ``phrase`` and its
    ``pixels`` (the box or point in the image's pixels); map coordinates through ``transform``."""
    features = []
    for g in groundings:
        for box in g.boxes:
            geometry = {"type": "Polygon", "coordinates": [box_ring(box, transform)]}
            properties = {"phrase": g.phrase, "pixels": [float(v) for v in box]}
            features.append({"type": "Feature", "properties": properties, "geometry": geometry})
        for point in g.points:
            x, y = (float(v) for v in point)
            geometry = {"type": "Point", "coordinates": pixel_to_map(x, y, transform)}
            features.append(
                {"type": "Feature", "properties": {"phrase": g.phrase, "pixels": [x, y]}, "geometry": geometry}
            )
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    member = crs_member(crs) if transform is not None else None
    if member is not None:
        collection["crs"] = member
    collection["features"] = features
    return collection


def write_groundings(
    path: str | os.PathLike, groundings: Sequence[Any], crs: Any = None, transform: Any = None, overwrite: bool = False
) -> Path:
    """Write :func:`grounding_collection` to ``path`` atomically (an existing file only with ``overwrite``)."""
    text = json.dumps(grounding_collection(groundings, crs, transform), indent=1)
    return atomic_write_text(path, text, overwrite=overwrite)


__all__ = [
    "GEOMETRY_TYPES",
    "GeoJSONError",
    "Shapes",
    "box_ring",
    "crs_member",
    "grounding_collection",
    "map_coordinates",
    "pixel_to_map",
    "read_json",
    "read_shapes",
    "write_groundings",
]
