"""SPIE records: build them from rasters, store them as JSON lines, export them for LLaVA.

A SPIE sample (SPEX paper) is a multispectral image tile, a binary land-cover mask for one
category, the instruction (with the APG spectral prompt) and the response.

Records file
------------
``spie.jsonl`` holds one JSON object per line (the fields of :class:`SpieRecord`). It is
append-only: every write is a whole line followed by ``\\n`` and flushed, so a crash can only
leave a half-written *last* line (no ``\\n``). :func:`read_records` ignores such a line with a
warning; :class:`RecordWriter` (and so :func:`append_records` and a resumed build) truncates
it before appending. Paths are stored relative to the records file's folder when they lie
under it, and :func:`read_records` returns them absolute.

Builder
-------
:func:`build_spie` turns sources (folders of image/label rasters) into records:

* class merging per dataset kind (:data:`DATASET_CLASSES`), e.g. Globe230k forest +
  grassland + shrubland → vegetation, GID-15 river + lake + pond → water;
* tiling: a scene that fits in ``tile``×``tile`` is used whole (``tile`` field ``None``);
  a larger one is cut into ``tile``×``tile`` windows from the top-left, and windows that run
  past the bottom/right edge are **padded** to the full tile; padded pixels are NaN in the
  image tile (nodata) and 0 in the mask, so they are invalid everywhere downstream. The
  record's ``tile`` is ``[row, col, h, w]``: the window's offset in the scene and the size of
  its unpadded part. Each tile's image and mask GeoTIFFs carry the window's georeferencing;
* one record per tile and category present in it; a tile without a category gets an
  "empty target" record for it with probability ``empty_rate`` (:data:`EMPTY_TARGET_RATE`,
  decided by a hash of the tile and category, so reruns agree); tiles without a single valid
  pixel are skipped;
* official splits are kept: each source names its split, or (generated scenes) takes the
  split of each scene from its manifest;
* parallel workers (a process pool) compute tiles; the main process is the only writer and
  writes results in task order, so the file is identical for any number of workers;
* resumable: after a tile's records are flushed its key is appended to ``spie.jsonl.done``;
  a rerun skips tiles listed there and, for a tile that was cut short by a crash, appends only
  the records that are not yet in the file.

Class codes assumed per dataset (check them against your copy; a source can override them
with ``SourceSpec.classes``):

===========  ====================================================================
segmunich    0 background, 1 arable land, 2 permanent crops, 3 pastures, 4 forests,
             5 surface water, 6 shrub, 7 open spaces, 8 wetlands, 9 mine dump,
             10 artificial vegetation, 11 urban fabric, 12 buildings
             → vegetation = {1, 2, 3, 4, 6, 10}
chesapeake   0 no data (ignored), 1 water, 2 tree canopy, 3 low vegetation, 4 barren,
             5 impervious (other), 6 impervious roads, 7 aberdeen → vegetation = {2, 3}
globe230k    1 cropland, 2 forest, 3 grassland, 4 shrubland, 5 wetland, 6 water,
             7 tundra, 8 impervious, 9 bareland, 10 snow/ice → vegetation = {2, 3, 4}
gid15        0 unlabelled (ignored), 1–12 built-up/agricultural/natural land classes,
             13 river, 14 lake, 15 pond → water = {13, 14, 15}
spacenet2    rasterised building footprints: any non-zero value → building
generated    :mod:`rsvlm.data.scenes` codes: 1 vegetation, 2 water, 3 building
binary       a 0/1 mask of ``SourceSpec.category``; any other value is an error
===========  ====================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from tqdm.auto import tqdm

from rsvlm.contracts import RsvlmError
from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.data.raster import Raster, RasterError, write_mask
from rsvlm.io.atomic import atomic_write_text

CATEGORIES: tuple[str, ...] = ("vegetation", "water", "building")

# category → label codes that make up the category, per dataset kind (see module docstring).
DATASET_CLASSES: dict[str, dict[str, tuple[int, ...]]] = {
    "segmunich": {"vegetation": (1, 2, 3, 4, 6, 10)},
    "chesapeake": {"vegetation": (2, 3)},
    "globe230k": {"vegetation": (2, 3, 4)},
    "gid15": {"water": (13, 14, 15)},
    "spacenet2": {"building": tuple(range(1, 256))},
    "generated": {"vegetation": (1,), "water": (2,), "building": (3,)},
}
# Label codes that mean "no data" (pixels become invalid).
DATASET_IGNORE: dict[str, tuple[int, ...]] = {"chesapeake": (0,), "gid15": (0,)}
# Largest label code a dataset uses; a larger one means the wrong kind was given.
DATASET_MAX_CODE: dict[str, int] = {
    "segmunich": 12,
    "chesapeake": 7,
    "globe230k": 10,
    "gid15": 15,
    "spacenet2": 255,
    "generated": 3,
    "binary": 1,
}
KINDS: tuple[str, ...] = (*DATASET_CLASSES, "binary")

# Share of (tile, absent category) pairs that still get an "empty target" record.
EMPTY_TARGET_RATE: float = 0.25

RECORDS_NAME = "spie.jsonl"
_IMAGE_DIRS = ("images", "image", "img", "imgs")
_LABEL_DIRS = ("labels", "label", "masks", "mask", "gt", "annotations")
_RASTER_EXTS = (".tif", ".tiff")


class RecordError(RsvlmError, ValueError):
    """A records file or record is malformed (the message names the file, line and field)."""


@dataclass
class SpieRecord:
    """One SPIE sample.

    Attributes:
        image: image GeoTIFF (C bands; nodata/NaN pixels are invalid).
        mask: binary mask GeoTIFF (1 band, 0/1), same grid as ``image``.
        category: ``vegetation``, ``water`` or ``building``.
        bands: names of the image's bands, in channel order.
        spectral_prompt: the APG attribute text.
        instruction: the instruction given to the model (contains the prompt for the
            spectral template).
        response: the target answer.
        split: ``train``, ``val``, ``test``, ...
        source: name of the source the tile came from.
        tile: ``[row, col, h, w]`` of the window in the source scene (h, w: unpadded part),
            or None when the record covers the whole scene.
    """

    image: str
    mask: str
    category: str
    bands: list[str]
    spectral_prompt: str
    instruction: str
    response: str
    split: str
    source: str
    tile: list[int] | None = None

    def key(self) -> tuple[str, str]:
        """(image, category): unique per record within a build."""
        return (self.image, self.category)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "record") -> SpieRecord:
        """Validate and build a record from a parsed JSON object."""
        if not isinstance(d, Mapping):
            raise RecordError(f"{where}: expected a JSON object, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d and n != "tile"]
        if missing:
            raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
        for n in ("image", "mask", "category", "spectral_prompt", "instruction", "response", "split", "source"):
            if not isinstance(d[n], str):
                raise RecordError(f"{where}: field {n!r} must be a string, got {d[n]!r}")
        if not isinstance(d["bands"], list) or not all(isinstance(b, str) for b in d["bands"]):
            raise RecordError(f"{where}: field 'bands' must be a list of band names, got {d['bands']!r}")
        tile = d.get("tile")
        if tile is not None and (
            not isinstance(tile, list) or len(tile) != 4 or not all(isinstance(t, int) for t in tile)
        ):
            raise RecordError(f"{where}: field 'tile' must be [row, col, h, w] or null, got {tile!r}")
        return cls(**{n: d.get(n) for n in names})


# --------------------------------------------------------------------------------------
# JSON-lines IO
# --------------------------------------------------------------------------------------


def _rel(path: str, root: Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(p)


def _abs(path: str, root: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (root / p).resolve())


def repair_jsonl(path: str | os.PathLike) -> int:
    """Cut a half-written last line (one without a trailing newline) off a JSON-lines file.

    Returns:
        The number of bytes removed (0 when the file is intact or absent).
    """
    p = Path(path)
    if not p.exists():
        return 0
    size = p.stat().st_size
    if size == 0:
        return 0
    with open(p, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # Scan back in blocks for the last newline.
        pos, block = size, 65536
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
    return size - keep


def _iter_lines(path: Path) -> Iterable[tuple[int, str]]:
    """Complete lines (those ending in a newline) with 1-based numbers; warns on a partial tail."""
    with open(path, encoding="utf-8", newline="\n") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith("\n"):
                warnings.warn(
                    f"{path}: ignoring half-written last line {number} ({len(line)} characters; an interrupted build?)",
                    stacklevel=3,
                )
                return
            if line.strip():
                yield number, line


def read_records(path: str | os.PathLike) -> list[SpieRecord]:
    """Read a SPIE JSON-lines file.

    Paths in the file that are relative are taken relative to the file's folder and returned
    absolute. A half-written last line is ignored (with a warning).

    Raises:
        FileNotFoundError: no such file.
        RecordError: a complete line is not valid JSON or lacks a field (names file and line).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"SPIE records file not found: {p}")
    root = p.parent
    out = []
    for number, line in _iter_lines(p):
        where = f"{p}:{number}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        rec = SpieRecord.from_dict(d, where)
        rec.image, rec.mask = _abs(rec.image, root), _abs(rec.mask, root)
        out.append(rec)
    return out


class RecordWriter:
    """Append-only writer of a SPIE JSON-lines file (use as a context manager).

    Opening repairs a half-written last line; every :meth:`write` writes whole lines and
    flushes them; closing fsyncs.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)
        self._f = open(self.path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed by close() / __exit__

    def write(self, records: Sequence[SpieRecord]) -> None:
        if not records:
            return
        root = self.path.parent
        lines = []
        for r in records:
            d = asdict(r)
            d["image"], d["mask"] = _rel(r.image, root), _rel(r.mask, root)
            lines.append(json.dumps(d, ensure_ascii=False) + "\n")
        self._f.write("".join(lines))
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def append_records(path: str | os.PathLike, records: Sequence[SpieRecord]) -> None:
    """Append records to a JSON-lines file (created if absent), repairing a partial last line."""
    with RecordWriter(path) as w:
        w.write(records)


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def export_llava(
    records: Sequence[SpieRecord] | str | os.PathLike, path: str | os.PathLike, root: str | os.PathLike | None = None
) -> Path:
    """Write records as the LLaVA-style JSON list of the released SPEX code (atomically).

    Each item is ``{"id", "image", "gt_image", "conversations": [{"from": "human", "value":
    "<image>\\n" + instruction}, {"from": "gpt", "value": response}]}``.

    Args:
        records: records, or a records file to read.
        path: output JSON file.
        root: image folder the paths are made relative to (the released code joins its
            ``image_folder`` with them); default: the folder of ``path``. Paths outside it
            stay absolute.
    """
    recs = read_records(records) if isinstance(records, (str, os.PathLike)) else list(records)
    out = Path(path)
    base = Path(root) if root is not None else out.parent
    items = []
    for r in recs:
        items.append(
            {
                "id": Path(r.mask).stem,
                "image": _rel(r.image, base),
                "gt_image": _rel(r.mask, base),
                "conversations": [
                    {"from": "human", "value": "<image>\n" + r.instruction},
                    {"from": "gpt", "value": r.response},
                ],
            }
        )
    _atomic_write_text(out, json.dumps(items, ensure_ascii=False, indent=1))
    return out


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


@dataclass
class SourceSpec:
    """One input dataset of a build.

    Args:
        kind: one of :data:`KINDS` (selects the class merging).
        path: a folder with ``images/`` and ``labels/`` (files paired by name), or a folder of
            generated scenes with a ``manifest.json``. Not needed when ``pairs`` is given.
        split: the split of every scene of this source (``train``/``val``/``test``); None
            takes each scene's split from a generated folder's manifest.
        bands: band spec of the images: a preset name, comma-separated names or a list.
        pairs: explicit ``[image, label]`` file pairs instead of a folder.
        category: the category of a ``binary`` source.
        classes: category → label codes, replacing the kind's default merging.
        ignore: label codes meaning "no data", replacing the kind's default.
        name: source name used in records and output paths; default ``<kind>-<folder name>``.
        responses: a JSON file of responses that come with the dataset,
            ``{"<tile stem>": {"<category>": "<text>"}}`` (tile stem: the scene's file stem, or
            ``<stem>_r<row>_c<col>`` for a tile of a large scene). They take precedence over the
            response generator, which fills in what the file does not give.
    """

    kind: str
    path: str | None = None
    split: str | None = None
    bands: str | list[str] = "demo"
    pairs: list[list[str]] | None = None
    category: str | None = None
    classes: dict[str, list[int]] | None = None
    ignore: list[int] | None = None
    name: str | None = None
    responses: str | None = None

    def source_name(self) -> str:
        if self.name:
            return self.name
        if self.path:
            return f"{self.kind}-{Path(self.path).name}"
        return self.kind

    def class_map(self) -> dict[str, tuple[int, ...]]:
        if self.classes is not None:
            return {c: tuple(v) for c, v in self.classes.items()}
        if self.kind == "binary":
            if self.category not in CATEGORIES:
                raise ValueError(
                    f"SourceSpec({self.source_name()}): a 'binary' source needs "
                    f"category= one of {', '.join(CATEGORIES)}, got {self.category!r}"
                )
            return {self.category: (1,)}
        return dict(DATASET_CLASSES[self.kind])

    def ignore_codes(self) -> tuple[int, ...]:
        return tuple(self.ignore) if self.ignore is not None else DATASET_IGNORE.get(self.kind, ())

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"SourceSpec.kind: unknown dataset kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.path is None and not self.pairs:
            raise ValueError(f"SourceSpec({self.kind}): give a folder (path=) or file pairs (pairs=)")
        for c in self.class_map():
            if c not in CATEGORIES:
                raise ValueError(
                    f"SourceSpec({self.source_name()}).classes: unknown category "
                    f"{c!r}; expected {', '.join(CATEGORIES)}"
                )
        band_spec(self.bands)


@dataclass
class Scene:
    """One image/label pair of a source."""

    image: str
    label: str
    split: str
    stem: str


def _find_dir(folder: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    return None


def _rasters(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in _RASTER_EXTS}


def list_scenes(source: SourceSpec) -> list[Scene]:
    """The image/label pairs of a source, with their splits.

    Raises:
        FileNotFoundError: the folder, its ``images/``/``labels/`` subfolders or a file is missing.
        ValueError: images without labels (named), or no split for a scene.
    """
    if source.pairs:
        if source.split is None:
            raise ValueError(f"SourceSpec({source.source_name()}): pairs need split=")
        scenes = []
        for pair in source.pairs:
            if len(pair) != 2:
                raise ValueError(
                    f"SourceSpec({source.source_name()}).pairs: each entry must be [image, label], got {pair!r}"
                )
            img, lab = (str(Path(x).resolve()) for x in pair)
            for f in (img, lab):
                if not os.path.exists(f):
                    raise FileNotFoundError(f"SourceSpec({source.source_name()}): file not found: {f}")
            scenes.append(Scene(img, lab, source.split, Path(img).stem))
        return scenes
    folder = Path(source.path).expanduser().resolve()  # type: ignore[arg-type]
    if not folder.is_dir():
        raise FileNotFoundError(f"SourceSpec({source.source_name()}): folder not found: {folder}")
    manifest = folder / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        out = []
        for s in m["scenes"]:
            split = source.split or s.get("split")
            if not split:
                raise ValueError(f"{manifest}: scene {s.get('id')} has no split and the source gives none")
            out.append(Scene(str(folder / s["image"]), str(folder / s["label"]), split, s["id"]))
        return out
    if source.split is None:
        raise ValueError(
            f"SourceSpec({source.source_name()}): split= is required for {folder} "
            f"(only generated folders with a manifest.json carry their own splits)"
        )
    img_dir, lab_dir = _find_dir(folder, _IMAGE_DIRS), _find_dir(folder, _LABEL_DIRS)
    if img_dir is None or lab_dir is None:
        raise FileNotFoundError(
            f"{folder}: expected an images folder (one of "
            f"{', '.join(_IMAGE_DIRS)}) and a labels folder (one of "
            f"{', '.join(_LABEL_DIRS)}) with files paired by name"
        )
    images, labels = _rasters(img_dir), _rasters(lab_dir)
    if not images:
        raise FileNotFoundError(
            f"{img_dir}: no rasters in the images folder of SourceSpec({source.source_name()}); nothing to build"
        )
    unpaired = sorted(set(images) - set(labels))
    if unpaired:
        raise ValueError(
            f"{img_dir}: {len(unpaired)} image(s) without a label of the same name in "
            f"{lab_dir}, e.g. {', '.join(unpaired[:5])}"
        )
    return [Scene(str(images[s]), str(labels[s]), source.split, s) for s in sorted(images)]


# --------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------


def tile_windows(height: int, width: int, tile: int) -> list[tuple[int, int, int, int] | None]:
    """Windows ``(row, col, h, w)`` covering an H×W scene, or ``[None]`` when it fits in one tile.

    Windows start every ``tile`` pixels from the top-left; ``h``/``w`` are the parts inside
    the scene (the rest of the tile is padding).
    """
    if height <= tile and width <= tile:
        return [None]
    return [
        (r, c, min(tile, height - r), min(tile, width - c))
        for r in range(0, height, tile)
        for c in range(0, width, tile)
    ]


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
    window: tuple[int, int, int, int] | None
    height: int
    width: int
    responses: dict[str, str] = field(default_factory=dict)


def _keep_empty(key: str, category: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) from the tile key (Python's hash() is salted per run)."""
    h = hashlib.sha256(f"{key}|{category}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < rate


def _read_window(
    path: str, window: tuple[int, int, int, int] | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """Read a window, padded to ``size`` → (float32 C×h×w, valid h×w, crs, transform)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if window is None:
                    win = Window(0, 0, src.width, src.height)
                else:
                    r, c, h, w = window
                    win = Window(c, r, w, h)
                raw = src.read(window=win)
                masks = src.read_masks(window=win)
                crs = src.crs
                # The padded tile shares the window's origin and pixel size.
                transform = src.transform @ Affine.translation(win.col_off, win.row_off)
    except RasterioError as exc:
        raise RasterError(f"cannot read raster {path}: {exc}") from exc
    data = (np.abs(raw) if np.iscomplexobj(raw) else raw).astype(np.float32, copy=False)
    valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(data), axis=0)
    h, w = data.shape[1:]
    if (h, w) != size:
        data = np.pad(data, ((0, 0), (0, size[0] - h), (0, size[1] - w)))
        valid = np.pad(valid, ((0, size[0] - h), (0, size[1] - w)), constant_values=False)
    if crs is None and transform == Affine.identity():
        transform = None
    return data, valid, crs, transform


def _write_image(path: Path, data: np.ndarray, crs: Any, transform: Any, names: Sequence[str]) -> None:
    profile: dict[str, Any] = dict(
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype="float32",
        nodata=float("nan"),
    )
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.tif", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(data)
                for i, n in enumerate(names, start=1):
                    dst.set_band_description(i, n)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def build_tile(task: TileTask, config: BuildConfig) -> list[SpieRecord]:
    """Make the image tile, masks and records of one tile (runs in a worker process)."""
    from rsvlm.data.spie.apg import instruction, spectral_prompt

    spec = BandSpec(task.bands, source=task.image)
    size = (task.height, task.width) if task.window is None else (config.tile, config.tile)
    data, valid, crs, transform = _read_window(task.image, task.window, size)
    spec.check_count(data.shape[0], path=task.image)
    labels, lvalid, _, _ = _read_window(task.label, task.window, size)
    if labels.shape[0] != 1:
        raise RasterError(f"{task.label}: a label raster must have 1 band, found {labels.shape[0]}")
    lab = labels[0]
    lvalid &= np.isfinite(lab)
    for code in task.ignore:
        lvalid &= lab != code
    good = lab[lvalid]
    if good.size:
        if np.any(good != np.round(good)) or good.min() < 0:
            raise RasterError(
                f"{task.label}: labels must be non-negative integers, found values in [{good.min()}, {good.max()}]"
            )
        top = DATASET_MAX_CODE.get(task.kind, 255)
        if good.max() > top:
            what = "0/1 values" if task.kind == "binary" else f"codes 0..{top} of a {task.kind!r} label raster"
            raise RasterError(
                f"{task.label}: found label value {int(good.max())} but expected "
                f"{what} (labels outside {{0,1}} after merging; wrong dataset kind?)"
            )
    valid &= lvalid
    if not valid.any():
        return []
    image = np.where(valid[None], data, np.float32(0))
    tile_data = np.where(valid[None], data, np.float32(np.nan))

    out = Path(config.out_dir)
    image_path = out / "images" / f"{task.key}.tif"
    _write_image(image_path, tile_data, crs, transform, task.bands)
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
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    with rasterio.open(scene.image) as im, rasterio.open(scene.label) as lb:
                        count, h, w = im.count, im.height, im.width
                        lshape = (lb.height, lb.width)
            except RasterioError as exc:
                raise RasterError(f"cannot open {scene.image} or {scene.label}: {exc}") from exc
            if count != len(spec):
                raise BandError(
                    f"{scene.image}: expected {len(spec)} bands "
                    f"({', '.join(spec.names)}) for source {name}, found {count}",
                    spec=spec,
                    path=scene.image,
                )
            if lshape != (h, w):
                raise RasterError(f"label {scene.label} is {lshape[0]}×{lshape[1]} but image {scene.image} is {h}×{w}")
            for win in tile_windows(h, w, tile):
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
                    )
                )
    return tasks


def load_responses(path: str | None) -> dict[str, dict[str, str]]:
    """Read a dataset's own responses (see :class:`SourceSpec`); ``{}`` when there is no file."""
    if path is None:
        return {}
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"SourceSpec.responses: {file} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"SourceSpec.responses: {file} is not valid JSON ({exc})") from exc
    bad = (
        [k for k, v in data.items() if not isinstance(v, dict) or not all(isinstance(t, str) for t in v.values())]
        if isinstance(data, dict)
        else ["<top level>"]
    )
    if bad:
        raise ValueError(
            f"SourceSpec.responses: {file} must map tile stems to {{category: text}}; bad entries: {bad[:5]}"
        )
    return data


@dataclass
class BuildSummary:
    """What a build did."""

    records_path: Path
    tiles_total: int
    tiles_skipped: int
    tiles_built: int
    records_written: int
    records_total: int
    seconds: float
    per_split: dict[str, int] = field(default_factory=dict)
    per_category: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        rate = self.tiles_built / self.seconds if self.seconds > 0 else float("nan")
        return (
            f"{self.records_path}: {self.records_written} new records from "
            f"{self.tiles_built} tiles ({self.tiles_skipped} already done) in "
            f"{self.seconds:.1f} s ({rate:.1f} tiles/s); {self.records_total} records in "
            f"total; per split {self.per_split}; per category {self.per_category}"
        )


def _read_done(path: Path) -> set[str]:
    if not path.exists():
        return set()
    repair_jsonl(path)
    return {line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line}


def build_spie(
    sources: Sequence[SourceSpec],
    out_dir: str | os.PathLike,
    tile: int = 512,
    workers: int = 0,
    style: Literal["paper", "released"] = "paper",
    template: Literal["spectral", "plain"] = "spectral",
    describer: Callable[..., str] | None = None,
    resume: bool = True,
    progress: bool = True,
    empty_rate: float = EMPTY_TARGET_RATE,
    max_regions: int = 10,
) -> BuildSummary:
    """Build SPIE records (and tile/mask GeoTIFFs) from sources into ``out_dir``.

    Output layout::

        out_dir/spie.jsonl                       the records (append-only)
        out_dir/spie.jsonl.done                  keys of finished tiles (for resuming)
        out_dir/build.json                       the build settings
        out_dir/images/<source>/<split>/<scene>[_r<row>_c<col>].tif
        out_dir/masks/<source>/<split>/<scene>[_r<row>_c<col>]_<category>.tif

    Args:
        sources: the input datasets.
        out_dir: output folder (created).
        tile: tile side in pixels.
        workers: worker processes; 0 computes tiles in this process. Workers are spawned
            (not forked), so a script calling this with ``workers > 0`` needs the usual
            ``if __name__ == "__main__":`` guard.
        style: APG format, ``paper`` or ``released``.
        template: instruction template, ``spectral`` (with the APG prompt) or ``plain``.
        max_regions: how many regions (largest first) each spectral prompt lists (paper: 10).
        describer: response generator ``(image C×H×W, mask H×W, category, bands) -> str``;
            default :class:`rsvlm.data.spie.describe.AttributeDescriber`. It must be picklable when
            ``workers > 0`` (it is sent to the workers); use ``workers=0`` for a model-backed
            describer.
        resume: skip tiles finished by an earlier build into ``out_dir`` (the settings must
            match). False starts over, replacing the records file.
        progress: show a tqdm progress bar.
        empty_rate: probability of an empty-target record for a category absent from a tile.

    Returns:
        A :class:`BuildSummary`.

    Raises:
        ValueError: resuming with different settings, bad sources.
        BandError / RasterError: a scene has the wrong band count, labels that do not fit the
            dataset kind, or a label grid that differs from its image (names the file).
    """
    start = time.perf_counter()
    if describer is None:
        from rsvlm.data.spie.describe import AttributeDescriber

        describer = AttributeDescriber()
    if tile < 1:
        raise ValueError(f"build_spie: tile must be positive, got {tile}")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    records_path, done_path, settings_path = (out / RECORDS_NAME, out / f"{RECORDS_NAME}.done", out / "build.json")
    # The describer's plain settings (seed, ...) change responses, so a resume must match them.
    describer_settings = (
        {k: v for k, v in vars(describer).items() if isinstance(v, (int, float, str, bool, type(None)))}
        if hasattr(describer, "__dict__")
        else {}
    )
    settings = {
        "tile": tile,
        "style": style,
        "template": template,
        "empty_rate": empty_rate,
        "max_regions": max_regions,
        "describer": f"{type(describer).__module__}.{type(describer).__qualname__}",
        "describer_settings": describer_settings,
    }
    if resume and settings_path.exists():
        old = json.loads(settings_path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{settings_path}: cannot resume a build made with other settings "
                f"(old, new): {diff}; use a new output folder or resume=False"
            )
    if not resume:
        for p in (records_path, done_path):
            if p.exists():
                p.unlink()
    old_sources = json.loads(settings_path.read_text()).get("sources", []) if settings_path.exists() and resume else []
    new_sources = [asdict(s) for s in sources]
    all_sources = old_sources + [s for s in new_sources if s not in old_sources]
    _atomic_write_text(settings_path, json.dumps({**settings, "sources": all_sources}, indent=1))

    tasks = plan_tiles(sources, tile)
    done = _read_done(done_path) if resume else set()
    cut = repair_jsonl(records_path)
    if cut:
        warnings.warn(
            f"{records_path}: removed a half-written last line ({cut} bytes) left by "
            f"an interrupted build; its tile is rebuilt",
            stacklevel=2,
        )
    existing = {r.key() for r in read_records(records_path)} if records_path.exists() else set()
    todo = [t for t in tasks if t.key not in done]
    config = BuildConfig(
        out_dir=str(out),
        tile=tile,
        style=style,
        template=template,
        describer=describer,
        empty_rate=empty_rate,
        max_regions=max_regions,
    )
    written = 0
    bar = tqdm(total=len(todo), disable=not progress, unit="tile", desc="build-spie")
    with RecordWriter(records_path) as writer, open(done_path, "a", encoding="utf-8") as ledger:
        for task, records in _run(todo, config, workers):
            new = [r for r in records if r.key() not in existing]
            writer.write(new)
            existing.update(r.key() for r in new)
            written += len(new)
            # The ledger line goes after the records are flushed: a listed tile is complete.
            ledger.write(task.key + "\n")
            ledger.flush()
            bar.update(1)
            bar.set_postfix(records=written, refresh=False)
    bar.close()
    all_records = read_records(records_path)
    per_split: dict[str, int] = {}
    per_category: dict[str, int] = {}
    for r in all_records:
        per_split[r.split] = per_split.get(r.split, 0) + 1
        per_category[r.category] = per_category.get(r.category, 0) + 1
    return BuildSummary(
        records_path=records_path,
        tiles_total=len(tasks),
        tiles_skipped=len(tasks) - len(todo),
        tiles_built=len(todo),
        records_written=written,
        records_total=len(all_records),
        seconds=time.perf_counter() - start,
        per_split=per_split,
        per_category=per_category,
    )


def _run(tasks: Sequence[TileTask], config: BuildConfig, workers: int) -> Iterable[tuple[TileTask, list[SpieRecord]]]:
    """Yield (task, records) in task order, computed here or by a process pool."""
    if workers <= 0:
        for t in tasks:
            yield t, build_tile(t, config)
        return
    # spawn: fork is unsafe once torch / GDAL threads exist in the parent.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: deque[tuple[TileTask, Future]] = deque()
        it = iter(tasks)
        # A bounded window of in-flight tiles keeps memory flat on large builds.
        for t in it:
            pending.append((t, pool.submit(build_tile, t, config)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            t, fut = pending.popleft()
            records = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(build_tile, nxt, config)))
            yield t, records
