"""SPIE tiles: plan the tiles of every scene of a build, and make one tile's records.

Tiling: a scene that fits in ``tile``×``tile`` is used whole (``tile`` field ``None``); a
larger one is cut into ``tile``×``tile`` windows from the top-left
(:func:`rsvlm.data.tiling.tile_windows` with ``edge="pad"``), and windows that run past the
bottom/right edge are **padded** to the full tile; padded pixels are NaN in the image tile
(nodata) and 0 in the mask, so they are invalid everywhere downstream. The record's ``tile`` is
``[row, col, h, w]``: the window's offset in the scene and the size of its unpadded part. Each
tile's image and mask GeoTIFFs carry the window's georeferencing.

Records: one per tile and category present in it; a tile without a category gets an "empty
target" record for it with probability ``empty_rate`` (:data:`EMPTY_TARGET_RATE`, decided by a
hash of the tile and category, so reruns agree); tiles without a single valid pixel are skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsvlm.data.bands import BandSpec, band_spec
from rsvlm.data.raster import (
    Raster,
    RasterError,
    check_single_band,
    read_header,
    read_window,
    write_geotiff,
    write_mask,
)
from rsvlm.data.spie.records import SpieRecord
from rsvlm.data.spie.sources import DATASET_MAX_CODE, SourceSpec, list_scenes, load_responses
from rsvlm.data.tiling import Window, tile_windows

# Share of (tile, absent category) pairs that still get an "empty target" record.
EMPTY_TARGET_RATE: float = 0.25


@dataclass
class BuildConfig:
    """Settings shared by every tile of a build (sent to the workers)."""

    out_dir: str
    tile: int
    style: str
    template: str
    describer: Any
    empty_rate: float
    max_regions: int = 10


@dataclass
class TileTask:
    """One tile of one scene: what a worker needs to make its records."""

    key: str
    image: str
    label: str
    split: str
    source: str
    bands: tuple[str, ...]
    classes: dict[str, tuple[int, ...]]
    ignore: tuple[int, ...]
    kind: str
    window: Window | None
    height: int
    width: int
    responses: dict[str, str] = field(default_factory=dict)
    dataset: str | None = None


def scene_windows(height: int, width: int, tile: int) -> list[Window | None]:
    """The build's windows of an H×W scene: ``[None]`` (the whole scene) when it fits in one tile,
    else ``tile``×``tile`` windows from the top-left, cut at the edges (padded when read)."""
    if height <= tile and width <= tile:
        return [None]
    return list(tile_windows(height, width, tile, overlap=0, edge="pad"))


def _keep_empty(key: str, category: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) from the tile key (Python's hash() is salted per run)."""
    h = hashlib.sha256(f"{key}|{category}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < rate


def _read_padded(path: str, window: Window | None, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """Read a window, padded to ``size`` → (float32 C×h×w, valid h×w, crs, transform)."""
    data, valid, crs, transform, _ = read_window(path, window)
    h, w = data.shape[1:]
    if (h, w) != size:
        data = np.pad(data, ((0, 0), (0, size[0] - h), (0, size[1] - w)))
        valid = np.pad(valid, ((0, size[0] - h), (0, size[1] - w)), constant_values=False)
    return data, valid, crs, transform


def _check_labels(task: TileTask, labels: np.ndarray) -> None:
    """Valid label values must be non-negative integers no larger than the dataset kind's codes."""
    if not labels.size:
        return
    if np.any(labels != np.round(labels)) or labels.min() < 0:
        raise RasterError(
            f"{task.label}: labels must be non-negative integers, found values in [{labels.min()}, {labels.max()}]"
        )
    top = DATASET_MAX_CODE.get(task.kind, 255)
    if labels.max() > top:
        what = "0/1 values" if task.kind == "binary" else f"codes 0..{top} of a {task.kind!r} label raster"
        raise RasterError(
            f"{task.label}: found label value {int(labels.max())} but expected "
            f"{what} (labels outside {{0,1}} after merging; wrong dataset kind?)"
        )


def build_tile(task: TileTask, config: BuildConfig) -> list[SpieRecord]:
    """Make the image tile, masks and records of one tile (runs in a worker process)."""
    from rsvlm.data.spie.apg import instruction, spectral_prompt

    spec = BandSpec(task.bands, source=task.image)
    size = (task.height, task.width) if task.window is None else (config.tile, config.tile)
    data, valid, crs, transform = _read_padded(task.image, task.window, size)
    spec.check_count(data.shape[0], path=task.image)
    labels, lvalid, _, _ = _read_padded(task.label, task.window, size)
    check_single_band(labels.shape[0], task.label)
    lab = labels[0]
    lvalid &= np.isfinite(lab)
    for code in task.ignore:
        lvalid &= lab != code
    _check_labels(task, lab[lvalid])
    valid &= lvalid
    if not valid.any():
        return []
    image = np.where(valid[None], data, np.float32(0))
    tile_data = np.where(valid[None], data, np.float32(np.nan))

    out = Path(config.out_dir)
    image_path = out / "images" / f"{task.key}.tif"
    write_geotiff(image_path, tile_data, crs, transform, band_names=task.bands, nodata=float("nan"))
    like = Raster(data=tile_data, valid=valid, crs=crs, transform=transform, path=None)
    lab_int = np.where(lvalid, lab, -1).astype(np.int64)
    records = []
    for category, codes in task.classes.items():
        mask = np.isin(lab_int, np.asarray(codes, dtype=np.int64)) & valid
        if not mask.any() and not _keep_empty(task.key, category, config.empty_rate):
            continue
        mask_path = out / "masks" / f"{task.key}_{category}.tif"
        write_mask(mask_path, mask.astype(np.uint8), like=like, overwrite=True)
        prompt = spectral_prompt(image, category, spec, style=config.style, valid=valid, max_regions=config.max_regions)
        records.append(
            SpieRecord(
                image=str(image_path),
                mask=str(mask_path),
                category=category,
                bands=list(task.bands),
                spectral_prompt=prompt,
                instruction=instruction(category, prompt, template=config.template),
                response=task.responses.get(category) or config.describer(image, mask, category, spec),
                split=task.split,
                source=task.source,
                dataset=task.dataset,
                tile=None if task.window is None else list(task.window),
            )
        )
    return records


def plan_tiles(sources: Sequence[SourceSpec], tile: int) -> list[TileTask]:
    """Every tile of every source, in a fixed order; checks band counts and label grids."""
    tasks: list[TileTask] = []
    names = [s.source_name() for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"build_spie: two sources are both named {dupes}; give them distinct SourceSpec.name values")
    for src in sources:
        src.validate()
        given = load_responses(src.responses)
        spec = band_spec(src.bands)
        classes, ignore, name = src.class_map(), src.ignore_codes(), src.source_name()
        for scene in list_scenes(src):
            image, label = read_header(scene.image), read_header(scene.label)
            spec.check_count(image.count, path=scene.image)
            h, w = image.height, image.width
            if (label.height, label.width) != (h, w):
                raise RasterError(
                    f"label {scene.label} is {label.height}×{label.width} but image {scene.image} is {h}×{w}"
                )
            for win in scene_windows(h, w, tile):
                stem = scene.stem if win is None else f"{scene.stem}_r{win[0]}_c{win[1]}"
                tasks.append(
                    TileTask(
                        key=f"{name}/{scene.split}/{stem}",
                        image=scene.image,
                        label=scene.label,
                        split=scene.split,
                        source=name,
                        bands=spec.names,
                        classes=classes,
                        ignore=ignore,
                        kind=src.kind,
                        window=win,
                        height=h,
                        width=w,
                        responses=dict(given.get(stem, {})),
                        dataset=src.dataset_name(),
                    )
                )
    return tasks
