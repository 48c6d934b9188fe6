"""Sen1Floods11 (Bonafilia et al., CVPR Workshops 2020) Sentinel-1 chip → point-prompted water / land
referring-classification records (EarthGPT-X style), for a real-data smoke run.

Input: one hand-labelled chip of the dataset's layout, ``<root>/<chip>_S1Hand.tif`` (Sentinel-1 GRD σ⁰
in dB, float32, bands VV, VH) and ``<root>/<chip>_LabelHand.tif`` (int16: 1 water, 0 not water, -1 no
data), on one grid (``../shared/data/sen1floods11-spain`` holds ``Spain_7370579``, 512 × 512).

The chip is cut into ``tile × tile`` tiles (GeoTIFFs that keep the chip's CRS, each with its window's
transform, :func:`rasterio.windows.transform`); the left half of the chip (columns ``< W // 2``) is the
``train`` split, its bottom ``val_rows`` rows of tiles the ``val`` split, and the right half the ``test``
split, so that no test pixel is seen in training. Each tile gets point prompts on valid pixels drawn
from the labels (never on no data nor on a non-finite backscatter value), each one record::

    <image>\\nWhat is the category of <Region 1>? Answer with one word or phrase.  →  water | land

(EarthGPT-X's referring-classification template, :func:`rsvlm.data.multitask.templates.roc_turns`, as
in :mod:`rsvlm.data.multitask.generated_multisource`; label 0 "not water" is answered ``land``). A split
has ``prompts_per_tile`` prompts per tile on average, half ``water`` and half ``land`` (±1 when odd):
each answer's quota is spread over the split's tiles that hold its class in a seeded order (round robin,
distinct pixels, uniform within the tile), so a tile without water gets land prompts only. Seeded:
the same settings give the same records.

Output folder (written beside it and moved into place whole; an existing one is replaced only with
``overwrite=True`` and only when it is an output of this converter)::

    <out>/images/<chip>_r<row>_c<col>.tif   S1 tile (VV, VH dB, float32, nodata NaN)
    <out>/labels/<chip>_r<row>_c<col>.tif   its label tile (int16, as the chip's)
    <out>/records.jsonl                     every split (the ``split`` field routes them)
    <out>/tiles.json                        split, window and water fraction per tile
    <out>/sen1floods11.json                 settings and counts, written last

:class:`rsvlm.data.multitask.converters.sen1floods11_data.Sen1Floods11Data` is the same conversion as an
``InstructDataModule(generate=...)`` preparer, cached in a folder keyed by its settings and the chip's
bytes (``recipes/earthgptx-sen1floods11-smoke.yaml``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from rsvlm.data.multitask.converters.common import ConverterError, require_file
from rsvlm.data.multitask.jsonl import check_records, write_records
from rsvlm.data.multitask.keyed_build import RECORDS_NAME
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, InstructRecord, Turn
from rsvlm.data.multitask.templates import roc_turns
from rsvlm.data.raster import write_geotiff
from rsvlm.data.visual_prompts import VisualPrompt, prompts_to_json
from rsvlm.io.atomic import atomic_write_text

SOURCE = "sen1floods11"
CHIP = "Spain_7370579"
TASK = "referring_classification"
#: Label value → answer (0 is "not water": vegetation, soil and built-up mixed).
ANSWERS = {1: "water", 0: "land"}
BANDS = ("vv", "vh")
MARKER = "sen1floods11.json"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Tile:
    """One tile: its file stem, split and window (``row``, ``col`` offsets in the chip, side ``size``)."""

    name: str
    split: str
    row: int
    col: int
    size: int

    @property
    def window(self) -> Window:
        """The rasterio window of the tile in the chip."""
        return Window(self.col, self.row, self.size, self.size)


def chip_files(root: str | os.PathLike, chip: str = CHIP) -> tuple[Path, Path]:
    """``(S1 image, hand label)`` paths of ``chip`` under ``root``; a ConverterError when one is missing."""
    base = Path(root)
    if not base.is_dir():
        raise ConverterError(f"{base}: Sen1Floods11 folder not found")
    image, label = base / f"{chip}_S1Hand.tif", base / f"{chip}_LabelHand.tif"
    require_file(image, "Sen1Floods11 S1Hand image")
    require_file(label, "Sen1Floods11 LabelHand label")
    return image, label


def check_settings(where: str, tile: int, prompts_per_tile: int, val_rows: int) -> None:
    """Raise a ConverterError naming ``<where>.<field>`` for a non-positive tile or prompt count or negative rows."""
    for name, value, low in (("tile", tile, 1), ("prompts_per_tile", prompts_per_tile, 1), ("val_rows", val_rows, 0)):
        if not isinstance(value, int) or value < low:
            raise ConverterError(f"{where}.{name}: must be an integer >= {low}, got {value!r}")


def plan_tiles(height: int, width: int, tile: int, val_rows: int, chip: str = CHIP) -> list[Tile]:
    """The tiles of an ``height × width`` chip: left half → train (bottom ``val_rows`` tile rows → val),
    right half → test; pixels beyond the last whole tile of a half (or of the rows) are left out."""
    half = width // 2
    if tile > half or tile > height:
        raise ConverterError(f"tile: {tile} px does not fit half of a {height}×{width} chip ({half} px wide)")
    rows = list(range(0, height - tile + 1, tile))
    if val_rows >= len(rows):
        raise ConverterError(f"val_rows: {val_rows} of {len(rows)} tile rows leaves no train tiles")
    halves = {"left": range(0, half - tile + 1, tile), "right": range(half, width - tile + 1, tile)}
    tiles = []
    for i, row in enumerate(rows):
        for side, cols in halves.items():
            split = "test" if side == "right" else ("val" if i >= len(rows) - val_rows else "train")
            tiles += [Tile(f"{chip}_r{row:04d}_c{col:04d}", split, row, col, tile) for col in cols]
    return tiles


def spread(total: int, capacity: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``total`` prompts over tiles, one at a time round robin in ``order``, each tile at most its ``capacity``."""
    counts = np.zeros(len(capacity), dtype=np.int64)
    left = total
    while left:
        open_ = [int(i) for i in order if counts[i] < capacity[i]]
        if not open_:
            raise ValueError(f"only {int(capacity.sum())} pixels for {total} prompts")
        for i in open_[:left]:
            counts[i] += 1
        left -= min(left, len(open_))
    return counts


def sample_points(
    labels: list[np.ndarray], prompts_per_tile: int, rng: np.random.Generator, where: str
) -> list[list[tuple[int, int, int]]]:
    """``(row, col, label)`` prompts per tile of one split: half on water, half on land (the odd one drawn),
    each answer spread over the tiles holding its class, distinct pixels drawn uniformly; ``labels`` are the
    tiles' label arrays with invalid pixels set to -1."""
    total = len(labels) * prompts_per_tile
    first = int(rng.integers(2))  # which answer gets the odd prompt
    quotas = {1: total // 2 + (total % 2) * (first == 1), 0: total // 2 + (total % 2) * (first == 0)}
    out: list[list[tuple[int, int, int]]] = [[] for _ in labels]
    for value in (1, 0):
        capacity = np.array([int((lab == value).sum()) for lab in labels])
        try:
            counts = spread(quotas[value], capacity, rng.permutation(len(labels)))
        except ValueError as error:
            raise ConverterError(f"{where}: {ANSWERS[value]}: {error} (prompts_per_tile={prompts_per_tile})") from None
        for i, (lab, count) in enumerate(zip(labels, counts)):
            if count:
                picked = rng.choice(np.flatnonzero(lab == value), size=int(count), replace=False)
                rows, cols = np.unravel_index(picked, lab.shape)
                out[i] += [(int(r), int(c), value) for r, c in zip(rows, cols)]
    return [[points[j] for j in rng.permutation(len(points))] for points in out]


def _record(tile: Tile, k: int, point: tuple[int, int, int], image: Path, chip: str) -> InstructRecord:
    """The record of prompt ``k`` of ``tile`` (point ``(row, col, label)`` in tile pixels)."""
    row, col, value = point
    answer = ANSWERS[value]
    human, gpt = roc_turns("earthgptx", answer, [col, row, col + 1, row + 1], (tile.size, tile.size))
    return InstructRecord(
        id=f"{SOURCE}_{tile.split}_{tile.name}_{k:03d}",
        images=[str(image)],
        task=TASK,
        granularity=DEFAULT_GRANULARITY[TASK],
        conversations=[Turn("human", human), Turn("gpt", gpt)],
        source=SOURCE,
        split=tile.split,
        modality="sar",
        size=[tile.size, tile.size],
        labels=[answer],
        visual_prompts=prompts_to_json([VisualPrompt("point", vertices=[[col + 0.5, row + 0.5]])]),
        bands=list(BANDS),
        value="db",
        coord_convention="center",
        meta={
            "chip": chip,
            "tile": tile.name,
            "window": [tile.row, tile.col, tile.size, tile.size],
            "pixel": [tile.row + row, tile.col + col],
            "label": value,
            "modality": "sar",
            "prompt_kind": "point",
        },
    )


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` and it is an output of this converter."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConverterError(f"{out}: output exists and is not a folder")
    if any(out.iterdir()):
        if not overwrite:
            raise ConverterError(f"{out}: output folder exists; pass overwrite=True to replace it")
        if not (out / MARKER).is_file():
            raise ConverterError(f"{out}: not a Sen1Floods11 converter output (no {MARKER}); refusing to replace it")


def _install(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move the finished folder ``tmp`` to ``out`` (replacing an earlier output when allowed)."""
    _check_out(out, overwrite)
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
    os.rename(out, old / "out")
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _tiles_into(
    tmp: Path, image: Path, label: Path, tiles: list[Tile], prompts_per_tile: int, seed: int, chip: str
) -> tuple[list[InstructRecord], list[dict[str, Any]]]:
    """Write the tiles under ``tmp`` and make their records (paths under ``tmp``) and tile summaries."""
    with rasterio.open(image) as src:
        s1, s1_crs, s1_transform = src.read(), src.crs, src.transform
    with rasterio.open(label) as src:
        lab, lab_crs, lab_transform, lab_count = src.read(), src.crs, src.transform, src.count
    if s1.shape[0] != len(BANDS) or lab_count != 1 or s1.shape[1:] != lab.shape[1:]:
        raise ConverterError(
            f"{label}: expected 2 S1 bands and 1 label band on one grid, got {s1.shape} and {lab.shape}"
        )
    valid = (lab[0] >= 0) & np.isfinite(s1).all(axis=0)
    codes = np.where(valid, lab[0], -1)
    records: list[InstructRecord] = []
    summaries: list[dict[str, Any]] = []
    for split_index, split in enumerate(SPLITS):
        chosen = [t for t in tiles if t.split == split]
        if not chosen:
            continue
        cuts = [codes[t.row : t.row + t.size, t.col : t.col + t.size] for t in chosen]
        rng = np.random.default_rng([seed, split_index])
        points = sample_points(cuts, prompts_per_tile, rng, f"{label}: {split} split")
        for t, cut, tile_points in zip(chosen, cuts, points):
            rows, cols = slice(t.row, t.row + t.size), slice(t.col, t.col + t.size)
            path = tmp / "images" / f"{t.name}.tif"
            write_geotiff(
                path,
                s1[:, rows, cols],
                s1_crs,
                window_transform(t.window, s1_transform),
                band_names=("VV", "VH"),
                nodata=float("nan"),
                compress="deflate",
            )
            write_geotiff(
                tmp / "labels" / f"{t.name}.tif",
                lab[:, rows, cols],
                lab_crs,
                window_transform(t.window, lab_transform),
                compress="deflate",
            )
            records += [_record(t, k, p, path, chip) for k, p in enumerate(tile_points)]
            summaries.append(
                {
                    "tile": t.name,
                    "split": split,
                    "window": [t.row, t.col, t.size, t.size],
                    "water_fraction": float((cut == 1).sum() / max(1, (cut >= 0).sum())),
                    "invalid_pixels": int((cut < 0).sum()),
                    "prompts": len(tile_points),
                }
            )
    return records, summaries


def convert_sen1floods11(
    root: str | os.PathLike,
    out: str | os.PathLike,
    tile: int = 64,
    prompts_per_tile: int = 8,
    val_rows: int = 1,
    seed: int = 0,
    chip: str = CHIP,
    overwrite: bool = False,
) -> list[InstructRecord]:
    """Tile one Sen1Floods11 chip and write point-prompted water / land records (module docstring).

    Args:
        root: the folder holding ``<chip>_S1Hand.tif`` and ``<chip>_LabelHand.tif``.
        out: output folder (tiles, ``records.jsonl``, ``tiles.json``, ``sen1floods11.json``).
        tile: tile side in pixels (whole tiles only; each half of the chip holds ``W // 2 // tile`` columns).
        prompts_per_tile: prompts (records) per tile on average within each split.
        val_rows: bottom rows of tiles of the left half given to ``val`` (0: no val split).
        seed: sampling seed.
        chip: the chip's file prefix.
        overwrite: replace an existing output folder (only one this converter wrote).

    Returns:
        The records (absolute paths into ``out``), train, then val, then test.

    Raises:
        ConverterError: missing files, bad settings, a split without enough pixels of a class, or an
            existing output folder (one line naming the file or field).
    """
    check_settings("convert_sen1floods11", tile, prompts_per_tile, val_rows)
    image, label = chip_files(root, chip)
    target = Path(out).expanduser()
    _check_out(target, overwrite)
    with rasterio.open(label) as src:
        tiles = plan_tiles(src.height, src.width, tile, val_rows, chip)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        records, summaries = _tiles_into(tmp, image, label, tiles, prompts_per_tile, seed, chip)
        check_records(records, str(label))
        write_records(tmp / RECORDS_NAME, records)
        atomic_write_text(tmp / "tiles.json", json.dumps(summaries, indent=1))
        counts = {
            s: {a: sum(r.split == s and r.labels == [a] for r in records) for a in ANSWERS.values()} for s in SPLITS
        }
        settings = {
            "chip": chip,
            "tile": tile,
            "prompts_per_tile": prompts_per_tile,
            "val_rows": val_rows,
            "seed": seed,
        }
        atomic_write_text(
            tmp / MARKER, json.dumps({**settings, "source": str(Path(root)), "records": counts}, indent=1)
        )
        _install(tmp, target, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    moved = target.resolve()
    return [replace(r, images=[str(moved / Path(p).relative_to(tmp)) for p in r.images]) for r in records]
