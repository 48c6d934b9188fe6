"""Labelled real images for evaluation: the shipped sample folders, or any image/mask rasters.

:func:`read_shipped` knows the folders of the shared real-data directory (each has a README
giving sensor, band order and label codes):

=============================  ========================  ====================================
folder                         bands (rsvlm names)       targets
=============================  ========================  ====================================
``sen1floods11-spain``         Sentinel-2 L1C, 13 bands  water = label 1 (label −1 invalid)
                               (TOA reflectance)
``chesapeake-naip-geobench``   NAIP red, green, blue,    water = class 1, vegetation = tree
                               nir (8-bit / 255)         (2) + low vegetation (3); 0 invalid
``38cloud-landsat8``           Landsat 8 red, green,     none: a cloud mask only; cloudy
                               blue, nir (uint16 DN)     pixels are invalid
=============================  ========================  ====================================

Units: Sentinel-2 is divided by its published scale 10000 (TOA reflectance), NAIP by 255,
38-Cloud stays in DN. A model trained with per-image normalisation does not care; one trained
with dataset statistics sees other units than it was trained on wherever they differ. :func:`select_bands` picks a model's bands by name and names the file and the
band when one is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsvlm.contracts import RsvlmError
from rsvlm.data.bands import BandError, band_spec
from rsvlm.data.indices import normalize_category

SHIPPED_FOLDERS: tuple[str, ...] = ("sen1floods11-spain", "chesapeake-naip-geobench", "38cloud-landsat8")
CHESAPEAKE_CODES: dict[str, tuple[int, ...]] = {"water": (1,), "vegetation": (2, 3)}


class RealDataError(RsvlmError, FileNotFoundError):
    """A real-data folder or file is missing."""


@dataclass
class LabelledImage:
    """One real image with its reference masks.

    Attributes:
        dataset: the folder / dataset name (a table column group).
        path: the image file (named in errors).
        image: ``C×H×W`` float32 in the file's units.
        bands: the band names of ``image``, in order.
        valid: ``H×W`` bool: pixels with data and a label.
        targets: category → ``H×W`` bool reference mask (only the labelled categories).
    """

    dataset: str
    path: str
    image: np.ndarray
    bands: tuple[str, ...]
    valid: np.ndarray
    targets: dict[str, np.ndarray] = field(default_factory=dict)


def select_bands(item: LabelledImage, names: Sequence[str]) -> np.ndarray:
    """``image`` restricted to ``names`` in that order: ``len(names)×H×W``.

    Raises:
        BandError: one line naming the file, the missing band and the bands it has.
    """
    missing = [n for n in names if n not in item.bands]
    if missing:
        raise BandError(
            f"{item.path}: has no band {missing[0]!r} that the model needs "
            f"(model bands: {', '.join(names)}; the image has: {', '.join(item.bands)})",
            band=missing[0],
            path=item.path,
        )
    return item.image[[item.bands.index(n) for n in names]]


def read_shipped(root: str | Path, folders: Sequence[str] | None = None) -> list[LabelledImage]:
    """The labelled images of the shipped folders under ``root`` (:data:`SHIPPED_FOLDERS`).

    Args:
        root: the real-data directory.
        folders: read only these (default: every shipped folder present under ``root``).

    Raises:
        RealDataError: ``root`` (or a folder asked for by name) does not exist.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RealDataError(f"real-data folder not found: {root}")
    wanted = list(folders) if folders is not None else [f for f in SHIPPED_FOLDERS if (root / f).is_dir()]
    readers = {
        "sen1floods11-spain": _sen1floods11,
        "chesapeake-naip-geobench": _chesapeake,
        "38cloud-landsat8": _cloud38,
    }
    items: list[LabelledImage] = []
    for name in wanted:
        if name not in readers:
            raise RealDataError(f"{root}: unknown shipped folder {name!r}; known: {', '.join(SHIPPED_FOLDERS)}")
        if not (root / name).is_dir():
            raise RealDataError(f"real-data folder not found: {root / name}")
        items += readers[name](root / name)
    return items


def _sen1floods11(folder: Path) -> list[LabelledImage]:
    from rsvlm.data.raster import read_mask, read_raster

    out = []
    for s2_path in sorted(folder.glob("*_S2Hand.tif")):
        s2 = read_raster(s2_path, bands="sentinel2")
        labels, lvalid = read_mask(str(s2_path).replace("_S2Hand", "_LabelHand"), like=s2)
        valid = s2.valid & lvalid
        out.append(
            # Stored as TOA reflectance × 10000 (folder README).
            LabelledImage(
                folder.name, str(s2_path), s2.data / 10000.0, s2.bands.names, valid, {"water": (labels == 1) & valid}
            )
        )
    return out


def _chesapeake(folder: Path) -> list[LabelledImage]:
    out = []
    for path in sorted(folder.glob("*_image.npy")):
        image = np.load(path).astype(np.float32) / 255.0  # uint8 R, G, B, NIR
        label = np.load(str(path).replace("_image", "_label"))
        valid = label > 0  # 0 = no data
        targets = {cat: np.isin(label, codes) & valid for cat, codes in CHESAPEAKE_CODES.items()}
        out.append(LabelledImage(folder.name, str(path), image, band_spec("chesapeake").names, valid, targets))
    return out


def _cloud38(folder: Path) -> list[LabelledImage]:
    from rsvlm.data.raster import read_mask
    from rsvlm.data.stack import read_stack

    order = ("red", "green", "blue", "nir")
    out = []
    for gt in sorted(folder.glob("gt_patch_*.TIF")):
        suffix = gt.name[len("gt_") :]
        stack = read_stack([folder / f"{b}_{suffix}" for b in order], list(order))
        cloud, cvalid = read_mask(gt, like=stack)
        valid = stack.valid & cvalid & (cloud == 0)
        out.append(LabelledImage(folder.name, str(folder / f"red_{suffix}"), stack.data, order, valid, {}))
    return out


def read_labelled(
    images: Sequence[str],
    masks: Sequence[str],
    category: str,
    bands: str | Sequence[str],
    positive: Sequence[int] = (1,),
) -> list[LabelledImage]:
    """Image/mask raster pairs: the mask's ``positive`` values are ``category``, its nodata invalid.

    Args:
        images, masks: raster paths, pairwise (same grid).
        category: the category the masks label.
        bands: the images' band spec (preset name or list of names).
        positive: mask values that are the category.
    """
    from rsvlm.data.raster import read_mask, read_raster

    if len(images) != len(masks):
        raise ValueError(f"--images gives {len(images)} file(s) but --masks gives {len(masks)}; they pair up")
    category = normalize_category(category)
    out = []
    for image_path, mask_path in zip(images, masks):
        raster = read_raster(image_path, bands=bands)
        labels, lvalid = read_mask(mask_path, like=raster)
        valid = raster.valid & lvalid
        target = np.isin(labels, list(positive)) & valid
        out.append(LabelledImage("images", str(image_path), raster.data, raster.bands.names, valid, {category: target}))
    return out
