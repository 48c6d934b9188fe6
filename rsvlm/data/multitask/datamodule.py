"""The datamodule of instruction records: one or more JSON-lines files mixed into one training stream.

``InstructDataModule(sources=[...jsonl])`` reads every file (:func:`rsvlm.data.multitask.read_records`),
routes each record to ``train`` / ``val`` / ``test`` by its ``split`` field
(:func:`rsvlm.data.base.canonical_split`, or a file's own ``splits`` mapping; other splits are left
out), and builds samples with :class:`rsvlm.data.multitask.dataset.InstructDataset` (batch keys there).

Training draws from (source, task) groups — ``source`` the records' ``source`` field, so two files of
one dataset and task form one group — with :class:`rsvlm.data.mixing.MixtureSampler`:
``p_g ∝ m_g · n_g^α``, ``α = 0.5`` by default (LISA's ``sample_rates`` ∝ √size, the GeoMag spec's
choice), ``m_g`` the file's ``multiplier`` times ``task_multipliers[task]``. The train set lists the
groups back to back in order of first appearance, which is the sampler's flat layout. The sampler is
seeded, DDP-sharded and resumes mid-epoch (the datamodule saves its position). Validation and test
read each record once, in file order, sharded by :func:`rsvlm.data.loaders.evaluation_sampler`.

Records of several modalities (optical, SAR, infrared) with their own units and band counts read
with ``modality_presets``: each image is normalised by its modality's preset
(:data:`rsvlm.data.modalities.MODALITIES`) and zero-padded to the ``bands`` count ``C_max``; batches
then carry ``band_valid`` (B×C_max) beside ``modality`` (EarthGPT-X spec §3.3).

``split_modalities`` keeps only some modalities in a split (``{train: [sar]}``: train on SAR, validate
and test on every modality). ``overlay`` draws each sample's visual prompts onto its image
(:class:`rsvlm.prompts.overlay.OverlayPrompts` through :class:`rsvlm.data.overlaid.OverlaidSamples`, ViP-LLaVA's
route: the model then takes no prompt encoder), at the model's resolution after the normalisation; the
samples keep their ``visual_prompts``, so a SAM decoder still reads them.

Coordinates written in a record's text are normalised on the square of its ``coord_convention``; a file
whose records do that with another placement than ``pad`` is warned about (text and image frames
then differ by the pad offset).

Prediction (``rsvlm predict``) reads no records: ``predict_paths`` are whole images, each asked
``question`` at ``granularity``, prepared as the Python API prepares them
(:class:`rsvlm.data.multitask.predict.WholeImagePredictDataset`; with
:class:`rsvlm.inference.writer.PredictionWriter` the same files as ``Prediction.save``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from rsvlm.contracts import MissingFileError
from rsvlm.data.base import SPLITS, RsvlmDataModule, canonical_split
from rsvlm.data.loaders import ResumableDataLoader
from rsvlm.data.mixing import GroupKey, MixtureSampler, MixtureSpec
from rsvlm.data.modalities import Modality, ModalityError, modality_preset
from rsvlm.data.multitask.dataset import InstructCollate, InstructDataset, Item
from rsvlm.data.multitask.generated import GeneratedInstructData
from rsvlm.data.multitask.geometry import check_pad
from rsvlm.data.multitask.jsonl import read_records
from rsvlm.data.multitask.predict import (
    PredictCollate,
    WholeImagePredictDataset,
    check_granularity,
    check_question,
)
from rsvlm.data.multitask.records import InstructRecord, InstructRecordError
from rsvlm.data.multitask.source_options import (
    InstructGenerator,
    SourceOptions,
    check_split_modalities,
    has_text_coordinates,
)
from rsvlm.data.overlaid import OverlaidSamples
from rsvlm.data.recent import check_memory_size
from rsvlm.prompts.overlay import OverlayPrompts


class InstructDataModule(RsvlmDataModule):
    """Batches of instruction records (see the module docstring and :mod:`rsvlm.data.multitask.dataset`).

    Args:
        sources: JSON-lines records files (:mod:`rsvlm.data.multitask.jsonl`).
        generate: generated scenes built in ``prepare_data`` and read as one more source (the demos;
            offline): a plain mapping of settings is :class:`rsvlm.data.multitask.generated.GeneratedInstructData`
            (GeoMag); another generator is given by ``class_path``, e.g.
            :class:`rsvlm.data.multitask.generated_multisource.GeneratedMultisourceData` (EarthGPT-X).
        source_options: one :class:`SourceOptions` (or dict) per file, or None for the defaults.
        image_size: side S of the model's square input.
        pad: where the resized image sits on the square: ``center`` (LLaVA, EarthGPT-X) or ``bottom_right``.
        bands: channel names the model reads (``rgb``: 3; grey images are repeated, RGBA's alpha dropped).
        scale: pixel divisor (255: 8-bit chips to [0, 1]).
        mean, std: per-channel statistics applied after ``scale`` (e.g. CLIP's), or None for raw values.
        modality_presets: record modality → its normalisation (a :data:`rsvlm.data.modalities.MODALITIES`
            preset name or a :class:`~rsvlm.data.modalities.Modality`), e.g. ``{optical: optical_dn8, sar:
            sentinel1_db, infrared: infrared_kelvin}``; images then keep their own bands (at most the
            ``bands`` count), are normalised by their modality's preset instead of ``scale`` / ``mean`` /
            ``std``, zero-padded to the ``bands`` count, and batches carry ``band_valid``. None: one
            normalisation for every record.
        alpha: size exponent of the group weights (``p_g ∝ m_g n_g^α``).
        task_multipliers: factors per task on the group weights.
        epoch_size: training samples per epoch (default: all train records).
        split_modalities: split → the record modalities it keeps (``optical``, ``sar``, ``infrared``);
            splits not named keep every record. None: no filter.
        overlay: draw the visual prompts on every split's images (:class:`OverlayPrompts`; its ``white``,
            ``mean`` and ``std`` must describe the images as normalised here), or None.
        seg_text: what ``[SEG]`` becomes in gpt turns (GeoMag's codebook ``"[SEG0][SEG1][SEG2]"``), or None.
        check_files: check that images and mask files exist when reading the records.
        cache_images: each split keeps the last this many image files in memory
            (:class:`~rsvlm.data.multitask.dataset.PixelCache`: for small data read many times, such as
            the generated demo scenes, each an image of three records); 0 reads every sample's file.
        batch_size, num_workers, pin_memory, seed: DataLoader settings and the sampling seed.
        predict_paths: images for ``predict_dataloader`` (GeoTIFF, PNG, JPEG), whole (no tiling); prediction
            alone needs no ``sources`` and builds no ``generate`` data.
        question: the free-text question asked about every predict image (required to predict).
        granularity: what ``question`` asks about: ``image``, ``region`` or ``pixel`` (MagCrop routes by it).
        modality: the predict images' modality, ``optical``, ``sar`` or ``infrared`` (with
            ``modality_presets``, its preset normalises them, as in training).
    """

    def __init__(
        self,
        sources: list[str] | None = None,
        # The protocol comes first: jsonargparse then keeps a ``class_path`` generator through command-line
        # overrides, and still reads a plain mapping as GeneratedInstructData.
        generate: InstructGenerator | GeneratedInstructData | None = None,
        source_options: list[SourceOptions] | None = None,
        image_size: int = 336,
        pad: str = "center",
        bands: list[str] | str = "rgb",
        scale: float = 255.0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        modality_presets: dict[str, Modality | str] | None = None,
        alpha: float = 0.5,
        task_multipliers: dict[str, float] | None = None,
        epoch_size: int | None = None,
        split_modalities: dict[str, list[str]] | None = None,
        overlay: OverlayPrompts | None = None,
        seg_text: str | None = None,
        check_files: bool = True,
        cache_images: int = 0,
        batch_size: int = 2,
        num_workers: int = 0,
        pin_memory: bool = True,
        seed: int = 0,
        predict_paths: list[str] | None = None,
        question: str | None = None,
        granularity: str = "pixel",
        modality: str = "optical",
    ) -> None:
        super().__init__(bands=bands, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, seed=seed)
        name = type(self).__name__
        sources = list(sources or [])
        if not sources and generate is None and not predict_paths:
            raise ValueError(f"{name}.sources: give at least one records file (or generate=, or predict_paths=)")
        options = [SourceOptions() for _ in sources] if source_options is None else list(source_options)
        if len(options) != len(sources):
            raise ValueError(f"{name}.source_options: {len(options)} entries for {len(sources)} sources")
        self.source_options = [SourceOptions(**o) if isinstance(o, Mapping) else o for o in options]
        for i, option in enumerate(self.source_options):
            option.check(f"{name}.source_options[{i}]")
        if image_size < 1:
            raise ValueError(f"{name}.image_size: must be a positive integer, got {image_size}")
        for field, stats in (("mean", mean), ("std", std)):
            if stats is not None and len(stats) != self.num_bands:
                raise ValueError(f"{name}.{field}: {len(stats)} values for {self.num_bands} channels")
        if std is not None and any(not s > 0 for s in std):
            raise ValueError(f"{name}.std: must be positive, got {std}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{name}.scale: must be a positive number, got {scale}")
        self.modality_presets = None if modality_presets is None else self._presets(modality_presets, mean, std)
        self.sources = [os.fspath(s) for s in sources]
        self.generate = generate
        if generate is not None:  # its records file is known before it is built (a cache key)
            self.sources.append(os.fspath(generate.records_path()))
            self.source_options.append(SourceOptions())
        self.image_size = image_size
        self.pad = check_pad(pad, f"{name}.pad")
        self.scale, self.mean, self.std = scale, mean, std
        self.alpha, self.task_multipliers, self.epoch_size = alpha, task_multipliers, epoch_size
        self.split_modalities = check_split_modalities(split_modalities, f"{name}.split_modalities")
        self.overlay = overlay
        self.seg_text = seg_text
        self.check_files = check_files
        self.cache_images = check_memory_size(cache_images, f"{name}.cache_images")
        self.mixture: MixtureSpec | None = None
        self.predict_paths = [os.fspath(p) for p in predict_paths or []]
        self.question = question
        self.granularity = check_granularity(granularity, f"{name}.granularity")
        self.modality = modality

    def _presets(
        self, presets: dict[str, Modality | str], mean: list[float] | None, std: list[float] | None
    ) -> dict[str, Modality]:
        """The presets, checked: known names, each modality's bands fit ``bands``, no ``mean`` / ``std`` beside."""
        name = f"{type(self).__name__}.modality_presets"
        if mean is not None or std is not None:
            raise ValueError(f"{name}: each preset normalises its modality; drop mean and std")
        out = {}
        for modality, preset in presets.items():
            try:
                out[modality] = modality_preset(preset)
            except ModalityError as error:
                raise ValueError(f"{name}[{modality!r}]: {error}") from None
            if out[modality].name != modality:
                raise ValueError(f"{name}[{modality!r}]: preset {preset!r} is for {out[modality].name!r} images")
            if out[modality].min_channels > self.num_bands:
                raise ValueError(
                    f"{name}[{modality!r}]: {out[modality].min_channels} band(s) or more, more than the "
                    f"{self.num_bands} of bands"
                )
        return out

    def _predicting(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return trainer is not None and bool(trainer.predicting)

    def prepare_data(self) -> None:
        if self.generate is not None and not self._predicting():  # prediction reads no records
            self.generate.prepare()

    def collate_fn(self) -> InstructCollate:
        return InstructCollate(self._formatter)

    # ------------------------------------------------------------------ setup
    def _read(self, index: int) -> list[InstructRecord]:
        path = self.sources[index]
        if not Path(path).is_file():
            raise MissingFileError(
                f"{type(self).__name__}.sources[{index}]: instruction records file not found: {path}"
            )
        records = read_records(path, check_files=self.check_files)
        mismatched = [r for r in records if r.coord_convention not in ("pixel", self.pad) and has_text_coordinates(r)]
        if mismatched:
            warnings.warn(
                f"{path}: {len(mismatched)} record(s) (first {mismatched[0].id!r}) write coordinates normalised on the "
                f"{mismatched[0].coord_convention}-padded square, but {type(self).__name__}.pad is {self.pad!r}",
                stacklevel=3,
            )
        return records

    def _split_of(self, record: InstructRecord, option: SourceOptions) -> str | None:
        split = option.splits.get(record.split) if option.splits is not None else canonical_split(record.split)
        return split if split in SPLITS else None

    def _items(self) -> tuple[dict[str, list[Item]], dict[GroupKey, tuple[float, str]]]:
        """Records by datamodule split, and each train group's multiplier with the file that set it."""
        items: dict[str, list[Item]] = {split: [] for split in SPLITS}
        multipliers: dict[GroupKey, tuple[float, str]] = {}
        for i, (path, option) in enumerate(zip(self.sources, self.source_options)):
            for record in self._read(i):
                split = self._split_of(record, option)
                if split is None or (option.tasks is not None and record.task not in option.tasks):
                    continue
                kept = (self.split_modalities or {}).get(split)  # None: every modality
                if kept is not None and record.modality not in kept:
                    continue
                if len(record.images) != 1:
                    raise InstructRecordError(
                        f"{path}: record {record.id!r}: field 'image': {len(record.images)} images; "
                        f"{type(self).__name__} reads one image per record"
                    )
                items[split].append(Item(record, path, option.scale or self.scale))
                key = (record.source, record.task)
                if split == "train":
                    earlier = multipliers.setdefault(key, (option.multiplier, path))
                    if earlier[0] != option.multiplier:
                        raise ValueError(
                            f"{type(self).__name__}.source_options: group {key} has multiplier {earlier[0]} in "
                            f"{earlier[1]} and {option.multiplier} in {path}"
                        )
        return items, multipliers

    def setup(self, stage: str | None = None) -> None:
        """Read the sources, split the records and build the train mixture (``predict``: the predict images only)."""
        if stage == "predict":
            self._setup_predict()
            return
        if any(split in self.datasets for split in SPLITS):
            return
        items, multipliers = self._items()
        groups: dict[GroupKey, list[Item]] = {}
        for item in items["train"]:
            groups.setdefault((item.record.source, item.record.task), []).append(item)
        if groups:
            self.mixture = MixtureSpec.from_groups(
                {key: len(members) for key, members in groups.items()},
                alpha=self.alpha,
                multipliers=tuple(multipliers[key][0] for key in groups),
                task_multipliers=self.task_multipliers,
                epoch_size=self.epoch_size,
            )
        elif stage == "fit":
            raise ValueError(f"{type(self).__name__}: no train records in {', '.join(self.sources)}")
        ordered = {**items, "train": [item for members in groups.values() for item in members]}
        self.datasets |= {
            split: self._overlaid(
                InstructDataset(
                    ordered[split],
                    self.image_size,
                    self.pad,  # type: ignore[arg-type]
                    self.num_bands,
                    self.mean,
                    self.std,
                    self.seg_text,
                    self.modality_presets,
                    self.cache_images,
                )
            )
            for split in SPLITS
        }

    def _overlaid(self, dataset: Dataset) -> Dataset:
        """``dataset`` with the prompts drawn on its images when ``overlay`` is set, else itself."""
        return dataset if self.overlay is None else OverlaidSamples(dataset, self.overlay)

    def group_sizes(self) -> dict[GroupKey, int]:
        """Train records per (source, task) group, in the sampler's order (after :meth:`setup`)."""
        if self.mixture is None:
            return {}
        return dict(zip(self.mixture.groups, self.mixture.sizes))

    # ------------------------------------------------------------------ loaders
    def train_sampler(self) -> MixtureSampler:
        """The mixture sampler of the train split (after :meth:`setup`)."""
        if self.mixture is None:
            raise RuntimeError(f"{type(self).__name__}: call setup('fit') before the train sampler")
        return MixtureSampler.from_spec(self.mixture, seed=self.seed)

    def train_dataloader(self) -> DataLoader:
        return self._position.attach(self._loader("train", self.train_sampler(), ResumableDataLoader))

    # ------------------------------------------------------------------ predict
    def _setup_predict(self) -> None:
        """The predict images with the question (:class:`WholeImagePredictDataset`); errors name the field or file."""
        name = type(self).__name__
        question = check_question(self.question, f"{name}.question")
        self.datasets["predict"] = self._overlaid(
            WholeImagePredictDataset.of_datamodule(
                self,
                self.predict_paths,
                question,
                self.granularity,
                where=f"{name}.predict_paths",
                modality=self.modality,
            )
        )

    def predict_dataloader(self) -> DataLoader:
        """Batches of whole images (``image`` ``B×C×S×S``, ``valid`` ``B×1×S×S``, ``meta``, the text fields),
        without reference ``masks`` (:class:`rsvlm.data.multitask.predict.PredictCollate`)."""
        if "predict" not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup('predict') before the predict dataloader")
        return DataLoader(
            self.datasets["predict"],
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=PredictCollate(self._formatter),
        )
