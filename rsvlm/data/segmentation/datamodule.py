"""The datamodule of multi-class segmentation (contract and data in :mod:`rsvlm.data.segmentation`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader

from rsvlm.data.base import SPLITS, RsvlmDataModule
from rsvlm.data.segmentation.dataset import SegmentationDataset, collate
from rsvlm.data.segmentation.sources import IGNORE_INDEX, SegmentationSource, discover, label_lut
from rsvlm.data.stats import BandAccumulator, load_stats, mean_std, save_stats, stats_table

#: Code of each split in the seed of a generated scene.
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


class SceneSegmentationDataModule(RsvlmDataModule):
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
        super().__init__(bands=bands, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, seed=seed)
        from rsvlm.data.scenes import CLASS_NAMES

        self.sources = [SegmentationSource(**s) if isinstance(s, Mapping) else s for s in sources or []] or None
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
        self.image_size = image_size
        self.stats = stats
        self.augment = augment
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    def collate_fn(self) -> Callable[[Sequence[Mapping[str, Tensor]]], dict[str, Tensor]]:
        return collate

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
        if path is not None:
            save_stats(stats_table(self._spec, acc, len(train)), path)
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
    def train_dataloader(self) -> DataLoader:
        n = len(self.datasets["train"]) if "train" in self.datasets else 0
        # UperNet's 1×1 pyramid-pooling BatchNorm cannot train on a batch of one image, so a
        # last batch of one is dropped.
        return self._train_loader(drop_last=n > self.batch_size and n % self.batch_size == 1)
