"""SPIE sources: the input datasets of a build, their class merging and their scenes.

A :class:`SourceSpec` names a folder of image/label rasters (or explicit file pairs, or a
folder of generated scenes with a ``manifest.json``), the dataset kind that selects the class
merging (:data:`DATASET_CLASSES`, e.g. Globe230k forest + grassland + shrubland → vegetation,
GID-15 river + lake + pond → water) and the split; :func:`list_scenes` pairs its images with
their labels.

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

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rsvlm.contracts import MissingFileError
from rsvlm.data.bands import band_spec

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

_IMAGE_DIRS = ("images", "image", "img", "imgs")
_LABEL_DIRS = ("labels", "label", "masks", "mask", "gt", "annotations")
_RASTER_EXTS = (".tif", ".tiff")


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
        dataset: dataset name written to records (what ``SpieDataModule(datasets=...)`` filters
            on); default: the kind, or for ``binary`` the source name.
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
    dataset: str | None = None

    def dataset_name(self) -> str:
        if self.dataset:
            return self.dataset
        return self.source_name() if self.kind == "binary" else self.kind

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
                    raise MissingFileError(f"SourceSpec({source.source_name()}): file not found: {f}")
            scenes.append(Scene(img, lab, source.split, Path(img).stem))
        return scenes
    folder = Path(source.path).expanduser().resolve()  # type: ignore[arg-type]
    if not folder.is_dir():
        raise MissingFileError(f"SourceSpec({source.source_name()}): folder not found: {folder}")
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
        raise MissingFileError(
            f"{folder}: expected an images folder (one of "
            f"{', '.join(_IMAGE_DIRS)}) and a labels folder (one of "
            f"{', '.join(_LABEL_DIRS)}) with files paired by name"
        )
    images, labels = _rasters(img_dir), _rasters(lab_dir)
    if not images:
        raise MissingFileError(
            f"{img_dir}: no rasters in the images folder of SourceSpec({source.source_name()}); nothing to build"
        )
    unpaired = sorted(set(images) - set(labels))
    if unpaired:
        raise ValueError(
            f"{img_dir}: {len(unpaired)} image(s) without a label of the same name in "
            f"{lab_dir}, e.g. {', '.join(unpaired[:5])}"
        )
    return [Scene(str(images[s]), str(labels[s]), source.split, s) for s in sorted(images)]


def load_responses(path: str | None) -> dict[str, dict[str, str]]:
    """Read a dataset's own responses (see :class:`SourceSpec`); ``{}`` when there is no file."""
    if path is None:
        return {}
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MissingFileError(f"SourceSpec.responses: {file} does not exist") from exc
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
