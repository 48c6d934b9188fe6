"""Folders of image/label GeoTIFF pairs for multi-class segmentation: where they are, their
splits and band specs (:func:`discover`), and how their label codes become classes
(:func:`label_lut`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsvlm.contracts import RsvlmError
from rsvlm.data.bands import BandSpec, band_spec
from rsvlm.data.base import SPLIT_ALIASES, SPLITS, canonical_split

IGNORE_INDEX = 255
_RASTER_SUFFIXES = (".tif", ".tiff")


class SegmentationDataError(RsvlmError, ValueError):
    """A segmentation source or sample does not fit the datamodule (names the file and field)."""


@dataclass
class SegmentationSource:
    """A folder of image/label GeoTIFF pairs.

    Layouts (files paired by name, ``images/a.tif`` with ``labels/a.tif``):

    * ``root/manifest.json`` as written by :func:`rsvlm.data.scenes.write_scene_folder`
      (scenes and their splits listed there);
    * ``root/{train,val,test}/{images,labels}/``;
    * ``root/{images,labels}/`` with ``split`` set.

    Args:
        root: the folder.
        bands: band names of the images (preset, comma-separated or list); None takes the
            manifest's ``bands``.
        label_map: label code → class index. Codes not listed become invalid (255). None
            uses the codes as class indices.
        ignore_values: label codes meaning "no data" (e.g. ``[0]`` for GID-15 / Chesapeake).
        split: put every scene of this source into this split; None takes the split from the
            manifest or the split sub-folders.
        scale: multiplies the pixel values, to bring sources of different sensors into shared
            units before the common normalisation (e.g. ``1e-4`` for Sentinel-2 L2A
            reflectance stored ×10000, ``1/255`` for 8-bit NAIP).
    """

    root: str
    bands: list[str] | str | None = None
    label_map: dict[int, int] | None = None
    ignore_values: list[int] = field(default_factory=list)
    split: str | None = None
    scale: float = 1.0


@dataclass
class SegmentationItem:
    """One image/label pair of a source: its files, split and the index of its source."""

    image: str
    label: str
    split: str
    source: int


def _pairs(images: Path, labels: Path) -> list[tuple[str, str]]:
    out = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in _RASTER_SUFFIXES):
        lab = labels / img.name
        if not lab.exists():
            raise SegmentationDataError(f"{img}: no label raster {lab} with the same file name")
        out.append((str(img), str(lab)))
    return out


def discover(source: SegmentationSource, index: int = 0) -> tuple[list[SegmentationItem], BandSpec]:
    """The image/label pairs of a source with their splits, and the source's band spec."""
    root = Path(source.root).expanduser()
    where = f"sources[{index}] ({root})"
    if not root.is_dir():
        raise SegmentationDataError(f"{where}: field 'root' is not a folder")
    forced = None if source.split is None else canonical_split(source.split)
    if forced is not None and forced not in SPLITS:
        raise SegmentationDataError(f"{where}: field 'split' must be one of {SPLITS}, got {source.split!r}")
    manifest_bands = None
    found: list[tuple[str, str, str]] = []
    manifest = root / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        manifest_bands = data.get("bands")
        for scene in data.get("scenes", []):
            split = canonical_split(scene.get("split"))
            found.append((str(root / scene["image"]), str(root / scene["label"]), split))
    elif any((root / s / "images").is_dir() for s in (*SPLITS, *SPLIT_ALIASES)):
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            split = canonical_split(sub.name)
            if split in SPLITS and (sub / "images").is_dir():
                found += [(i, lab, split) for i, lab in _pairs(sub / "images", sub / "labels")]
    elif (root / "images").is_dir():
        if forced is None:
            raise SegmentationDataError(
                f"{where}: a plain images/ + labels/ folder needs field 'split' (train, val or test)"
            )
        found = [(i, lab, forced) for i, lab in _pairs(root / "images", root / "labels")]
    else:
        raise SegmentationDataError(f"{where}: expected manifest.json, {{train,val,test}}/images/ or images/ + labels/")
    if not found:
        raise SegmentationDataError(f"{where}: no image/label GeoTIFF pairs found")
    bands = source.bands if source.bands is not None else manifest_bands
    if bands is None:
        raise SegmentationDataError(f"{where}: field 'bands' is needed (no manifest.json names them)")
    items = [SegmentationItem(img, lab, forced or split, index) for img, lab, split in found]
    return items, band_spec(bands)


def label_lut(label_map: Mapping[int, int] | None, num_classes: int, where: str) -> np.ndarray:
    """A 256-entry uint8 look-up table: label code → class index (255 = invalid)."""
    if label_map is None:
        lut = np.arange(256, dtype=np.uint8)
    else:
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for code, cls in label_map.items():
            if not 0 <= int(code) <= 255 or not (0 <= int(cls) < num_classes or int(cls) == IGNORE_INDEX):
                raise SegmentationDataError(
                    f"{where}: field 'label_map' maps {code} → {cls}; codes must be in 0..255 and "
                    f"classes in 0..{num_classes - 1} (or {IGNORE_INDEX})"
                )
            lut[int(code)] = int(cls)
    return lut
