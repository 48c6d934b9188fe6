"""Multi-class segmentation batches (MVPNet pre-training) from generated scenes or GeoTIFF folders.

Batch contract::

    image    B×C×H×W float32, normalised per band (0 = band mean); pixels that are nodata /
             NaN in some band, and padding, are 0; unlabelled pixels keep their values
    classes  B×H×W int64 class indices in [0, num_classes), 255 (:data:`IGNORE_INDEX`) where
             the pixel is invalid (nodata / NaN in any band, label "no data", unmapped label
             code, padding)
    valid    B×1×H×W bool, ``classes != 255``

Data:

* **generated** (``sources`` is None): ``n_train + n_val + n_test`` scenes of
  :func:`rsvlm.data.scenes.generate_scene` made in memory, scene ``i`` of split ``s`` from
  ``numpy.random.default_rng([seed, SPLIT_CODE[s], i])``; classes 0 bare soil, 1 vegetation,
  2 water, 3 building.
* **folders** (``sources``): each :class:`SegmentationSource` is a folder of image/label
  GeoTIFFs read with :func:`rsvlm.data.raster.read_raster` / :func:`~rsvlm.data.raster.read_mask`,
  the datamodule's bands picked **by name** from the source's bands, label codes turned into
  class indices by the source's ``label_map``. Several sources with different sensors and
  legends can feed one class list this way.

Normalisation: per-band mean and population standard deviation over the pixels of the
**train split** that are valid in every band (labelled or not) (:class:`rsvlm.data.stats.BandAccumulator`, float64), computed in
:meth:`SceneSegmentationDataModule.setup`; the same numbers normalise val and test, so no
statistic leaks from the evaluation splits. ``stats=`` names a ``stats.json``
(:mod:`rsvlm.data.stats` format): loaded when it exists, otherwise computed as above and
written there, so a large dataset is read for statistics once.

Augmentation (train only, ``augment``): a random left-right and a random up-down flip per
sample, drawn from a per-sample seed given by :class:`rsvlm.data.spie.datamodule.SeededSampler`
(reproducible for ``seed``, different every epoch, independent of the number of workers).
Rotations are left out so that non-square tiles keep their shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from rsvlm.contracts import RsvlmError
from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.data.spie.datamodule import SeededSampler
from rsvlm.data.stats import BandAccumulator
from rsvlm.data.transforms import normalize, resize_pad

IGNORE_INDEX = 255
SPLITS = ("train", "val", "test")
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}
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
class _Item:
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


def discover(source: SegmentationSource, index: int = 0) -> tuple[list[_Item], BandSpec]:
    """The image/label pairs of a source with their splits, and the source's band spec."""
    root = Path(source.root).expanduser()
    where = f"sources[{index}] ({root})"
    if not root.is_dir():
        raise SegmentationDataError(f"{where}: field 'root' is not a folder")
    forced = None if source.split is None else _SPLIT_ALIASES.get(source.split, source.split)
    if forced is not None and forced not in SPLITS:
        raise SegmentationDataError(f"{where}: field 'split' must be one of {SPLITS}, got {source.split!r}")
    manifest_bands = None
    found: list[tuple[str, str, str]] = []
    manifest = root / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        manifest_bands = data.get("bands")
        for scene in data.get("scenes", []):
            split = _SPLIT_ALIASES.get(scene.get("split"), scene.get("split"))
            found.append((str(root / scene["image"]), str(root / scene["label"]), split))
    elif any((root / s / "images").is_dir() for s in (*SPLITS, *_SPLIT_ALIASES)):
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            split = _SPLIT_ALIASES.get(sub.name, sub.name)
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
    items = [_Item(img, lab, forced or split, index) for img, lab, split in found]
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


def _flip(x: Tensor, lr: bool, ud: bool) -> Tensor:
    if lr:
        x = torch.flip(x, dims=(-1,))
    if ud:
        x = torch.flip(x, dims=(-2,))
    return x


class SegmentationDataset(Dataset):
    """Samples ``{"image": C×H×W, "classes": H×W int64, "valid": 1×H×W bool}``.

    Holds either in-memory arrays (generated scenes) or file pairs (folders).

    Args:
        arrays: ``[(image C×H×W float32, classes H×W uint8)]`` (all pixels valid), or None.
        items, specs, luts, ignore: file pairs, each source's band spec, label table and
            "no data" codes (folders), or None.
        bands: the bands fed to the model, picked by name.
        mean, std: ``(C,)`` statistics of ``bands``.
        num_classes: class indices must lie in ``[0, num_classes)``.
        image_size: resize (aspect kept) and pad to this side; None keeps the size.
        augment: random flips.
        seed: flip seed when an index comes without one.
    """

    def __init__(
        self,
        bands: BandSpec,
        mean: np.ndarray,
        std: np.ndarray,
        num_classes: int,
        arrays: list[tuple[np.ndarray, np.ndarray]] | None = None,
        items: list[_Item] | None = None,
        specs: Sequence[BandSpec] = (),
        luts: Sequence[np.ndarray] = (),
        ignore: Sequence[Sequence[int]] = (),
        scales: Sequence[float] = (),
        image_size: int | None = None,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.bands = bands
        self.mean, self.std = mean, std
        self.num_classes = num_classes
        self.arrays = arrays
        self.items = items or []
        self.specs, self.luts, self.ignore, self.scales = list(specs), list(luts), list(ignore), list(scales)
        self.image_size = image_size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.arrays) if self.arrays is not None else len(self.items)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image C×H×W float32 of ``bands``, classes H×W uint8 with 255 where the label is
        invalid, image validity H×W bool)."""
        if self.arrays is not None:
            image, classes = self.arrays[index]
            return image, classes, np.ones(classes.shape, dtype=bool)
        from rsvlm.data.raster import read_mask, read_raster

        item = self.items[index]
        spec = self.specs[item.source]
        raster = read_raster(item.image, bands=spec)
        missing = [b for b in self.bands.names if not spec.has(b)]
        if missing:
            raise BandError(
                f"{item.image}: band(s) {missing} requested by the datamodule are not among the "
                f"source's bands ({', '.join(spec.names)})",
                band=missing[0],
                path=item.image,
            )
        data = raster.data[[spec.index(b) for b in self.bands.names]]
        if self.scales[item.source] != 1.0:
            data = data * np.float32(self.scales[item.source])
        codes, label_valid = read_mask(item.label, like=raster, invalid_values=self.ignore[item.source])
        classes = self.luts[item.source][codes]
        labelled = label_valid & (classes != IGNORE_INDEX)
        bad = labelled & (classes >= self.num_classes)
        if bad.any():
            raise SegmentationDataError(
                f"{item.label}: label codes {sorted(np.unique(codes[bad]).tolist())[:10]} give class "
                f"indices ≥ num_classes={self.num_classes}; map them with the source's 'label_map'"
            )
        return data, np.where(labelled, classes, IGNORE_INDEX).astype(np.uint8), raster.valid

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Tensor]:
        index, flip_seed = item if isinstance(item, tuple) else (item, None)
        data, classes, image_valid = self.raw(index)
        v = torch.from_numpy(np.ascontiguousarray(image_valid))[None]
        # Unlabelled pixels keep their (normalised) values: the model still sees them as context.
        image = normalize(torch.from_numpy(np.ascontiguousarray(data)), v, self.mean, self.std)
        cls = torch.from_numpy(classes)
        # class index and "labelled" as a 2-channel map, so padding (0) marks pixels unlabelled
        labels = torch.stack([cls.float(), (cls != IGNORE_INDEX).float()])
        if self.image_size is not None and tuple(image.shape[-2:]) != (self.image_size,) * 2:
            image, labels, v, _ = resize_pad(image, labels, v, self.image_size)
        if self.augment:
            g = torch.Generator().manual_seed(flip_seed if flip_seed is not None else self.seed * 1_000_003 + index)
            lr, ud = (bool(b) for b in torch.randint(0, 2, (2,), generator=g))
            image, labels, v = _flip(image, lr, ud), _flip(labels, lr, ud), _flip(v, lr, ud)
        valid = v[0] & (labels[1] > 0.5)
        classes_t = torch.where(valid, labels[0].long(), torch.full_like(valid, IGNORE_INDEX, dtype=torch.long))
        return {"image": image.contiguous(), "classes": classes_t.contiguous(), "valid": valid[None].contiguous()}


def collate(samples: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack samples; tiles of different sizes are an error that says what to set."""
    sizes = {tuple(s["image"].shape) for s in samples}
    if len(sizes) > 1:
        raise SegmentationDataError(
            f"samples of one batch have different shapes {sorted(sizes)}; set the datamodule's "
            f"'image_size' to resize and pad them to one size"
        )
    return {key: torch.stack([s[key] for s in samples]) for key in ("image", "classes", "valid")}


class SceneSegmentationDataModule(L.LightningDataModule):
    """Multi-class segmentation batches (see the module docstring for the contract).

    Args:
        sources: folders of image/label GeoTIFFs; None generates scenes in memory.
        bands: bands fed to the model, by name (preset or list); picked from each source.
        class_names: names of the class indices (the legend after each source's
            ``label_map``); required for folders, generated scenes use
            ``[bare soil, vegetation, water, building]``.
        n_train, n_val, n_test: generated scenes per split.
        size: side of generated scenes in pixels.
        seed: generation, shuffling and flip seed.
        image_size: resize (aspect kept, bilinear image / nearest labels) and pad every sample
            to this side; padding is invalid. None keeps each file's size.
        stats: a ``stats.json`` with per-band statistics: loaded when it exists, else computed
            from the train split and written there. None computes them in every ``setup``.
        batch_size, num_workers, pin_memory: DataLoader settings (pinned memory only with CUDA).
        augment: random flips of training samples.
    """

    def __init__(
        self,
        sources: list[SegmentationSource] | None = None,
        bands: list[str] | str = "demo",
        class_names: list[str] | None = None,
        n_train: int = 64,
        n_val: int = 16,
        n_test: int = 16,
        size: int = 64,
        seed: int = 0,
        image_size: int | None = None,
        stats: str | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool = True,
        augment: bool = True,
    ) -> None:
        super().__init__()
        from rsvlm.data.scenes import CLASS_NAMES

        self.sources = [SegmentationSource(**s) if isinstance(s, Mapping) else s for s in sources or []] or None
        self._spec = band_spec(bands)
        if self.sources is None:
            if class_names is not None and len(class_names) != len(CLASS_NAMES):
                raise ValueError(
                    f"SceneSegmentationDataModule.class_names: generated scenes have {len(CLASS_NAMES)} "
                    f"classes ({', '.join(CLASS_NAMES.values())}), got {list(class_names)}"
                )
            class_names = list(class_names or CLASS_NAMES.values())
            if min(n_train, n_val, n_test) < 0 or n_train == 0:
                raise ValueError(
                    f"SceneSegmentationDataModule: n_train must be > 0 and n_val, n_test >= 0, "
                    f"got {n_train}, {n_val}, {n_test}"
                )
        elif not class_names:
            raise ValueError(
                "SceneSegmentationDataModule.class_names: folder sources need the list of class "
                "names (the legend their label_map maps to)"
            )
        if len(class_names) > IGNORE_INDEX:
            raise ValueError(f"SceneSegmentationDataModule.class_names: at most {IGNORE_INDEX} classes")
        self.class_names = list(class_names)
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.size = size
        self.seed = seed
        self.image_size = image_size
        self.stats = stats
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = augment
        self.datasets: dict[str, SegmentationDataset] = {}
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    # ------------------------------------------------------------------ properties
    @property
    def num_bands(self) -> int:
        return len(self._spec)

    @property
    def band_names(self) -> list[str]:
        return list(self._spec.names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ------------------------------------------------------------------ setup
    def _generated(self) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        from rsvlm.data.scenes import generate_scene

        counts = {"train": self.n_train, "val": self.n_val, "test": self.n_test}
        return {
            split: [
                generate_scene(self.size, self._spec, np.random.default_rng([self.seed, SPLIT_CODE[split], i]))
                for i in range(n)
            ]
            for split, n in counts.items()
        }

    def _statistics(self, train: SegmentationDataset) -> tuple[np.ndarray, np.ndarray]:
        from rsvlm.data.stats import load_stats, mean_std, save_stats

        path = Path(self.stats).expanduser() if self.stats else None
        if path is not None and path.exists():
            return mean_std(load_stats(path), self._spec, where=str(path))
        if len(train) == 0:
            raise ValueError(
                "SceneSegmentationDataModule: no training samples to compute band statistics from; "
                "give stats= (a stats.json of these bands)"
            )
        acc = BandAccumulator(self.num_bands)
        for i in range(len(train)):
            data, _, valid = train.raw(i)
            acc.update(data, valid)
        empty = [n for n, c in zip(self._spec.names, acc.count) if c == 0]
        std = acc.std
        flat = [n for n, s in zip(self._spec.names, std) if not s > 0]
        if empty or flat:
            raise ValueError(
                f"SceneSegmentationDataModule: band statistics of the train split are unusable: "
                f"bands without valid pixels {empty}, constant bands {flat}"
            )
        stats = {
            "bands": {
                n: {"mean": float(m), "std": float(s), "count": int(c)}
                for n, m, s, c in zip(self._spec.names, acc.mean, std, acc.count)
            },
            "images": len(train),
        }
        if path is not None:
            save_stats(stats, path)
        return acc.mean.astype(np.float32), std.astype(np.float32)

    def setup(self, stage: str | None = None) -> None:
        """Build the three splits and compute (or load) the band statistics from train."""
        if self.datasets:
            return
        common = dict(
            bands=self._spec,
            mean=np.zeros(self.num_bands, np.float32),
            std=np.ones(self.num_bands, np.float32),
            num_classes=self.num_classes,
            image_size=self.image_size,
            seed=self.seed,
        )
        if self.sources is None:
            scenes = self._generated()
            datasets = {s: SegmentationDataset(arrays=scenes[s], **common) for s in SPLITS}
        else:
            items, specs, luts, ignore, scales = [], [], [], [], []
            for i, src in enumerate(self.sources):
                found, spec = discover(src, i)
                items += found
                specs.append(spec)
                luts.append(label_lut(src.label_map, self.num_classes, f"sources[{i}] ({src.root})"))
                ignore.append(list(src.ignore_values))
                scales.append(float(src.scale))
            datasets = {
                s: SegmentationDataset(
                    items=[it for it in items if it.split == s],
                    specs=specs,
                    luts=luts,
                    ignore=ignore,
                    scales=scales,
                    **common,
                )
                for s in SPLITS
            }
        self.mean, self.std = self._statistics(datasets["train"])
        for split, ds in datasets.items():
            ds.mean, ds.std = self.mean, self.std
            ds.augment = self.augment and split == "train"
        if stage in ("fit", None) and len(datasets["train"]) == 0:
            raise ValueError("SceneSegmentationDataModule: the train split is empty")
        self.datasets = datasets

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, sampler: Sampler | None = None, drop_last: bool = False) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"SceneSegmentationDataModule: call setup() before the {split} dataloader")
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
            drop_last=drop_last,
        )

    def train_dataloader(self) -> DataLoader:
        n = len(self.datasets["train"]) if "train" in self.datasets else 0
        # UperNet's 1×1 pyramid-pooling BatchNorm cannot train on a batch of one image, so a
        # last batch of one is dropped.
        drop = n > self.batch_size and n % self.batch_size == 1
        return self._loader("train", SeededSampler(n, seed=self.seed, shuffle=True), drop_last=drop)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
