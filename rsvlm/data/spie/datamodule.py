"""SPIE records → batches: :class:`SpieDataset` and :class:`SpieDataModule`.

Batch contract (the models rely on it exactly)::

    image        B×C×H×W float32, normalised per band (0 = band mean), H = W = image_size
    mask         B×1×H×W float32 in {0, 1}
    valid        B×1×H×W bool (False: nodata, label "no data", or padding)
    category     list[str]
    instruction  list[str]
    response     list[str]
    meta         list[dict]: image, mask, index, source, split, tile, crs, transform,
                 original_size, resized_size, scale, pad (top, left, bottom, right), augment
    + the keys of the text formatter, when one is set (:meth:`SpieDataModule.set_text_formatter`)

Predict batches (``predict_paths``) hold ``image``, ``valid`` and ``meta`` (path, crs,
transform, sizes, pad) and, when ``categories`` is given, one sample per image and category
with ``category``, the APG ``instruction`` and an empty ``response`` (plus formatter keys).

Samples: read the image (:func:`rsvlm.data.raster.read_raster`) and mask, select the
datamodule's bands by name, normalise with the band statistics (:mod:`rsvlm.data.stats`),
resize keeping the aspect ratio and pad (:mod:`rsvlm.data.transforms`), and for training
apply a random flip/rot90 drawn from a per-sample seed given by :class:`SeededSampler`
(deterministic for ``seed``, different each epoch, independent of the number of workers).

Instructions: the ``spectral`` template uses each record's stored instruction, unless the
records' ``build.json`` says they were built with another APG style than ``apg_style``, in
which case the spectral prompt is recomputed from the image; ``plain`` rebuilds the
no-spectral-prompt instruction of the paper's ablation from the category.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from rsvlm.contracts import RsvlmError
from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.data.indices import normalize_category
from rsvlm.data.loaders import ResumableDataLoader, ResumableSampler, TrainPosition
from rsvlm.data.raster import RasterError, read_mask, read_raster
from rsvlm.data.spie.builder import EMPTY_TARGET_RATE, RECORDS_NAME, SpieRecord, read_records
from rsvlm.data.stats import load_stats, mean_std
from rsvlm.data.transforms import normalize, random_dihedral, resize_pad

DEFAULT_GENERATED_ROOT = "~/.cache/rsvlm/generated-spie"
CONTRACT_KEYS = ("image", "mask", "valid", "category", "instruction", "response", "meta")
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}
# Bump when generated data changes (2: responses open with the category; 3: empty answers
# open with words of their own), so old caches are not reused.
_GENERATED_VERSION = 3

TextFormatter = Callable[[list[str], list[str]], Mapping[str, Tensor]]


class SampleError(RsvlmError, ValueError):
    """A sample's files do not fit its record or the datamodule (names the file and field)."""


@dataclass
class GeneratedData:
    """Generated SPIE data (scenes from :mod:`rsvlm.data.scenes`) for demos and tests.

    Args:
        root: cache folder; the default is replaced by ``$RSVLM_CACHE/generated-spie`` when
            the ``RSVLM_CACHE`` environment variable is set.
        n_train, n_val, n_test: scenes per split.
        size: scene side in pixels.
        seed: generation seed.
        prompt_regions: regions listed by each spectral prompt (the paper lists up to 10;
            fewer keep the demo's sequences short).
        response_regions: regions described by each generated response.
        empty_rate: probability of an "empty target" record (a category absent from a scene,
            response "no ... regions can be seen ..."); see :func:`rsvlm.data.spie.builder.build_spie`.
    """

    root: str = DEFAULT_GENERATED_ROOT
    n_train: int = 240
    n_val: int = 40
    n_test: int = 60
    size: int = 64
    seed: int = 0
    prompt_regions: int = 10
    response_regions: int = 4
    empty_rate: float = EMPTY_TARGET_RATE

    def resolved_root(self) -> Path:
        if self.root == DEFAULT_GENERATED_ROOT and os.environ.get("RSVLM_CACHE"):
            return Path(os.environ["RSVLM_CACHE"]).expanduser() / "generated-spie"
        return Path(self.root).expanduser()


class SeededSampler(Sampler):
    """Yields ``(index, augmentation seed)`` pairs, shuffled or in order.

    Each epoch draws a permutation and per-sample seeds from ``seed`` and the epoch, so
    training is reproducible whatever the number of workers (the sampler runs in the main
    process). Lightning calls :meth:`set_epoch`; without it the epoch advances per pass.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
        seeds = torch.randint(0, 2**31 - 1, (self.length,), generator=g)
        yield from zip(order.tolist(), seeds.tolist())


def _georef_meta(raster: Any) -> dict[str, Any]:
    return {
        "crs": None if raster.crs is None else raster.crs.to_string(),
        "transform": None if raster.transform is None else list(raster.transform)[:6],
    }


class SpieDataset(Dataset):
    """SPIE records → samples in the batch contract (one sample per record).

    Args:
        records: the records.
        bands: the bands to feed the model, selected by name from each record's bands.
        mean, std: ``(C,)`` statistics of ``bands``.
        image_size: output side.
        augment: random flip/rot90 per sample.
        template: ``spectral`` or ``plain`` instruction.
        apg_style: APG style used when the prompt is recomputed.
        recompute_prompt: recompute the spectral prompt from the image (style mismatch).
        seed: augmentation seed used when an index comes without one.
    """

    def __init__(
        self,
        records: Sequence[SpieRecord],
        bands: BandSpec | str | Sequence[str],
        mean: np.ndarray,
        std: np.ndarray,
        image_size: int = 512,
        augment: bool = False,
        template: Literal["spectral", "plain"] = "spectral",
        apg_style: Literal["paper", "released"] = "paper",
        recompute_prompt: bool = False,
        seed: int = 0,
    ) -> None:
        self.records = list(records)
        self.bands = band_spec(bands)
        self.mean, self.std = mean, std
        self.image_size = image_size
        self.augment = augment
        self.template = template
        self.apg_style = apg_style
        self.recompute_prompt = recompute_prompt
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def _where(self, index: int, rec: SpieRecord) -> str:
        return f"record {index} ({rec.image})"

    def _instruction(self, rec: SpieRecord, data: np.ndarray, valid: np.ndarray) -> str:
        from rsvlm.data.spie.apg import instruction, spectral_prompt

        if self.template == "plain":
            return instruction(rec.category, None, template="plain")
        if self.recompute_prompt:
            prompt = spectral_prompt(
                np.where(valid[None], data, 0),
                rec.category,
                BandSpec(tuple(rec.bands)),
                style=self.apg_style,
                valid=valid,
            )
            return instruction(rec.category, prompt, template="spectral")
        return rec.instruction

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any, str]:
        """Read and check one record → (image C×H×W, mask H×W, valid H×W, raster, instruction)."""
        rec = self.records[index]
        raster = read_raster(rec.image)
        if raster.count != len(rec.bands):
            raise SampleError(
                f"{rec.image}: has {raster.count} bands but field 'bands' of "
                f"{self._where(index, rec)} lists {len(rec.bands)} "
                f"({', '.join(rec.bands)})"
            )
        missing = [b for b in self.bands.names if b not in rec.bands]
        if missing:
            raise BandError(
                f"{rec.image}: band(s) {missing} requested by the datamodule are not "
                f"in field 'bands' of {self._where(index, rec)} "
                f"({', '.join(rec.bands)})",
                band=missing[0],
                path=rec.image,
            )
        select = [rec.bands.index(b) for b in self.bands.names]
        try:
            mask_values, mask_valid = read_mask(rec.mask, like=raster)
        except RasterError as exc:
            raise SampleError(f"field 'mask' of {self._where(index, rec)}: {exc}") from exc
        labels = mask_values[mask_valid]
        if labels.size and labels.max() > 1:
            bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
            raise SampleError(
                f"{rec.mask}: field 'mask' of {self._where(index, rec)} must be "
                f"a binary 0/1 mask, found values {bad[:10]}"
            )
        valid = raster.valid & mask_valid
        if not valid.any():
            raise SampleError(
                f"{rec.image}: every pixel is invalid (nodata / NaN / label "
                f"no-data) in {self._where(index, rec)}; drop the record or fix "
                f"the file"
            )
        text = self._instruction(rec, raster.data, valid)
        return raster.data[select], mask_values, valid, raster, text

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = item if isinstance(item, tuple) else (item, None)
        rec = self.records[index]
        data, mask_values, valid, raster, text = self.load(index)
        v = torch.from_numpy(valid)[None]
        image = normalize(torch.from_numpy(np.ascontiguousarray(data)), v, self.mean, self.std)
        mask = torch.from_numpy((mask_values > 0).astype(np.float32))[None]
        image, mask, v, info = resize_pad(image, mask, v, self.image_size)
        aug: dict[str, int] | None = None
        if self.augment:
            g = torch.Generator().manual_seed(aug_seed if aug_seed is not None else self.seed * 1_000_003 + index)
            image, mask, v, aug = random_dihedral(image, mask, v, g)
        meta = {
            "image": rec.image,
            "mask": rec.mask,
            "index": index,
            "source": rec.source,
            "split": rec.split,
            "tile": rec.tile,
            **_georef_meta(raster),
            **info,
            "augment": aug,
        }
        return {
            "image": image.contiguous(),
            "mask": mask.contiguous(),
            "valid": v.contiguous(),
            "category": rec.category,
            "instruction": text,
            "response": rec.response,
            "meta": meta,
        }


class SpieCollate:
    """Stack tensors, keep strings and meta as lists, then add the text formatter's tensors.

    Picklable as long as the formatter is (DataLoader workers receive a copy).
    """

    def __init__(self, formatter: TextFormatter | None = None) -> None:
        self.formatter = formatter

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        first = samples[0]
        batch: dict[str, Any] = {}
        for key in ("image", "mask", "valid"):
            if key in first:
                batch[key] = torch.stack([s[key] for s in samples])
        for key in ("category", "instruction", "response", "meta"):
            if key in first:
                batch[key] = [s[key] for s in samples]
        if self.formatter is not None and "instruction" in batch:
            extra = dict(self.formatter(batch["instruction"], batch["response"]))
            clash = sorted(set(extra) & set(CONTRACT_KEYS))
            if clash:
                raise KeyError(f"text formatter returned key(s) {clash} that the batch contract already uses")
            batch.update(extra)
        return batch


def _hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


class SpieDataModule(L.LightningDataModule):
    """SPIE batches for training, validation, test and prediction.

    Args:
        records: a SPIE records file (``rsvlm data build-spie``); its ``split`` field selects
            train / val / test records.
        stats: the band statistics file (``rsvlm data stats``); default ``stats.json`` beside
            ``records`` (or the generated build's). Missing statistics are an error. With
            ``predict_paths`` and no records, only this is needed.
        generate: build generated data in ``prepare_data`` when ``records`` is None.
        image_size: output side; images are resized keeping the aspect ratio and padded.
        bands: bands fed to the model (preset name or list), selected by name from records.
        categories: keep only these categories (e.g. ``[water]`` for a per-category stage).
        batch_size, num_workers, pin_memory: DataLoader settings (pinned memory only with CUDA;
            persistent workers when ``num_workers > 0``).
        augment: random flips/rot90 on training samples. Off by default: a flip moves the
            regions but not the words, so the spectral prompt's and the response's locations
            ("top-left", centroids, boxes) would contradict the flipped image. Turn it on only
            for text without locations (e.g. ``template: plain`` with location-free responses).
        template: ``spectral`` (instruction with APG prompt) or ``plain`` (ablation).
        apg_style: ``paper`` or ``released`` APG format.
        predict_paths: GeoTIFFs for ``predict_dataloader``, of any size: cut into
            ``image_size`` tiles overlapping by ``predict_overlap`` pixels (see
            :class:`rsvlm.data.spie.predict_dataset.TiledPredictDataset`; :class:`rsvlm.inference.predict.PredictionWriter`
            stitches them back).
        predict_overlap: pixels shared by neighbouring prediction tiles.
        seed: shuffling and augmentation seed.
    """

    def __init__(
        self,
        records: str | None = None,
        stats: str | None = None,
        generate: GeneratedData | None = None,
        image_size: int = 512,
        bands: list[str] | str = "demo",
        categories: list[str] | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        pin_memory: bool = True,
        augment: bool = False,
        template: Literal["spectral", "plain"] = "spectral",
        apg_style: Literal["paper", "released"] = "paper",
        predict_paths: list[str] | None = None,
        seed: int = 0,
        predict_overlap: int = 64,
    ) -> None:
        super().__init__()
        if records is None and generate is None and stats is None:
            raise ValueError(
                "SpieDataModule: give records= (a SPIE records file made by "
                "`rsvlm data build-spie`) or generate= (generated demo data); "
                "prediction alone needs only stats= and predict_paths="
            )
        if template not in ("spectral", "plain"):
            raise ValueError(f"SpieDataModule.template must be 'spectral' or 'plain', got {template!r}")
        if apg_style not in ("paper", "released"):
            raise ValueError(f"SpieDataModule.apg_style must be 'paper' or 'released', got {apg_style!r}")
        self.records = records
        self.stats = stats
        self.generate = generate
        self.image_size = image_size
        self.bands = bands
        self._spec = band_spec(bands)
        self.categories = None if categories is None else [normalize_category(c) for c in categories]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = augment
        self.template = template
        self.apg_style = apg_style
        self.predict_paths = predict_paths
        self.predict_overlap = predict_overlap
        # The training loader's position goes into checkpoints, so a killed run resumes
        # mid-epoch at the next unseen batch.
        self._position = TrainPosition()
        self.seed = seed
        self._formatter: TextFormatter | None = None
        self.datasets: dict[str, Dataset] = {}
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None

    # ------------------------------------------------------------------ properties
    @property
    def num_bands(self) -> int:
        return len(self._spec)

    @property
    def band_names(self) -> list[str]:
        return list(self._spec.names)

    def set_text_formatter(self, formatter: TextFormatter | None) -> None:
        """Tokenise in the collate function: ``formatter(instructions, responses) -> tensors``.

        Called by the LightningModule in its ``setup``; dataloaders made afterwards add the
        formatter's outputs to every batch. It must be picklable when ``num_workers > 0``.
        """
        self._formatter = formatter

    # ------------------------------------------------------------------ generated data
    def generated_dir(self) -> Path:
        """Folder of the generated build for these parameters (keyed by their hash)."""
        assert self.generate is not None
        g = self.generate
        params = {
            "version": _GENERATED_VERSION,
            "n_train": g.n_train,
            "n_val": g.n_val,
            "n_test": g.n_test,
            "size": g.size,
            "seed": g.seed,
            "prompt_regions": g.prompt_regions,
            "response_regions": g.response_regions,
            "empty_rate": g.empty_rate,
            "bands": list(self._spec.names),
            "apg_style": self.apg_style,
        }
        return g.resolved_root() / _hash(params)

    def prepare_data(self) -> None:
        """Write generated scenes, build their SPIE records and statistics (once per parameters)."""
        if self.records is not None or self.generate is None:
            return
        from rsvlm.data.scenes import write_scene_folder
        from rsvlm.data.spie.builder import SourceSpec, build_spie
        from rsvlm.data.spie.describe import AttributeDescriber
        from rsvlm.data.stats import compute_band_stats, save_stats

        out = self.generated_dir()
        marker = out / "complete.json"
        if marker.exists():
            return
        g = self.generate
        scenes = out / "scenes"
        if not (scenes / "manifest.json").exists():
            write_scene_folder(
                scenes,
                g.n_train + g.n_val + g.n_test,
                g.size,
                self._spec,
                seed=g.seed,
                split_fractions={"train": g.n_train, "val": g.n_val, "test": g.n_test},
            )
        summary = build_spie(
            [SourceSpec("generated", str(scenes), bands=list(self._spec.names), name="generated")],
            out / "spie",
            tile=max(512, g.size),
            workers=0,
            style=self.apg_style,
            progress=False,
            max_regions=g.prompt_regions,
            empty_rate=g.empty_rate,
            describer=AttributeDescriber(max_regions=g.response_regions),
        )
        records = read_records(summary.records_path)
        train = [r for r in records if r.split == "train"] or records
        save_stats(compute_band_stats(train, self._spec), out / "spie" / "stats.json")
        from rsvlm.data.spie.builder import _atomic_write_text

        _atomic_write_text(
            marker,
            json.dumps(
                {
                    **asdict(g),
                    "bands": list(self._spec.names),
                    "apg_style": self.apg_style,
                    "records": summary.records_total,
                },
                indent=1,
            ),
        )

    def _paths(self) -> tuple[Path | None, Path]:
        if self.records is None and self.generate is None:
            return None, Path(self.stats).expanduser()  # type: ignore[arg-type]
        if self.records is not None:
            records = Path(self.records).expanduser()
        else:
            out = self.generated_dir()
            if not (out / "complete.json").exists():
                self.prepare_data()
            records = out / "spie" / RECORDS_NAME
        stats = Path(self.stats).expanduser() if self.stats else records.parent / "stats.json"
        return records, stats

    # ------------------------------------------------------------------ setup
    def _recompute_prompt(self, records_path: Path) -> bool:
        build = records_path.parent / "build.json"
        if self.template != "spectral" or not build.exists():
            return False
        try:
            style = json.loads(build.read_text()).get("style")
        except json.JSONDecodeError:
            return False
        return style is not None and style != self.apg_style

    def setup(self, stage: str | None = None) -> None:
        records_path, stats_path = self._paths()
        stats = load_stats(stats_path, records=records_path)
        self._mean, self._std = mean_std(stats, self._spec, where=str(stats_path))
        if stage == "predict":
            if not self.predict_paths:
                raise ValueError("SpieDataModule: predict needs predict_paths= (GeoTIFFs)")
            from rsvlm.data.spie.predict_dataset import TiledPredictDataset

            self.datasets["predict"] = TiledPredictDataset(
                self.predict_paths,
                list(self._spec.names),
                self._mean,
                self._std,
                tile=self.image_size,
                # A tile never overlaps its neighbour by half or more of itself.
                overlap=min(self.predict_overlap, self.image_size // 2),
                categories=self.categories,
                template=self.template,
                apg_style=self.apg_style,
            )
            return
        if records_path is None:
            raise ValueError(f"SpieDataModule: stage {stage!r} needs records= or generate=")
        records = read_records(records_path)
        if self.categories is not None:
            records = [r for r in records if normalize_category(r.category) in self.categories]
        recompute = self._recompute_prompt(records_path)
        by_split: dict[str, list[SpieRecord]] = {"train": [], "val": [], "test": []}
        for r in records:
            by_split.setdefault(_SPLIT_ALIASES.get(r.split, r.split), []).append(r)
        for split in ("train", "val", "test"):
            self.datasets[split] = SpieDataset(
                by_split[split],
                self._spec,
                self._mean,
                self._std,
                self.image_size,
                augment=self.augment and split == "train",
                template=self.template,
                apg_style=self.apg_style,
                recompute_prompt=recompute,
                seed=self.seed,
            )
        if stage in ("fit", None) and not by_split["train"]:
            raise ValueError(
                f"{records_path}: no training records"
                + (f" for categories {self.categories}" if self.categories else "")
            )

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, sampler: Sampler | None = None, loader_class: type = DataLoader) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"SpieDataModule: call setup() before the {split} dataloader")
        return loader_class(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=SpieCollate(self._formatter),
        )

    def train_dataloader(self) -> DataLoader:
        n = len(self.datasets["train"]) if "train" in self.datasets else 0
        sampler = ResumableSampler(inner=SeededSampler(n, seed=self.seed, shuffle=True))
        return self._position.attach(self._loader("train", sampler, ResumableDataLoader))

    def state_dict(self) -> dict[str, Any]:
        return self._position.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._position.load_state_dict(state_dict)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
