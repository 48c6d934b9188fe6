"""SPIE records → samples of the batch contract (:mod:`rsvlm.data.base`): :class:`SpieDataset`,
and :class:`SpieCollate`, which stacks them into batches.

Samples: read the image (:func:`rsvlm.data.raster.read_raster`) and mask, select the
datamodule's bands by name, normalise with the band statistics (:mod:`rsvlm.data.stats`),
resize keeping the aspect ratio and pad (:mod:`rsvlm.data.transforms`), and for training
apply a random flip/rot90 drawn from a per-sample seed given by
:class:`rsvlm.data.loaders.SeededSampler` (deterministic for ``seed``, different each epoch,
independent of the number of workers).

``meta`` of a sample: image, mask, index, source, split, tile, crs, transform, original_size,
resized_size, scale, pad (top, left, bottom, right), augment.

Instructions: the ``spectral`` template uses each record's stored instruction, unless the
datamodule asks to recompute the spectral prompt from the image (the records were built with
another APG style); ``plain`` rebuilds the no-spectral-prompt instruction of the paper's
ablation from the category.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from rsvlm.contracts import RsvlmError
from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.data.base import CONTRACT_KEYS, TextFormatter
from rsvlm.data.raster import RasterError, georef_meta, read_mask, read_raster
from rsvlm.data.recent import RecentlyRead
from rsvlm.data.spie.records import SpieRecord
from rsvlm.data.transforms import (
    Normalization,
    check_threshold_jitter,
    index_of_channel,
    needs_threshold,
    normalize_as,
    random_dihedral,
    resize_pad,
    with_index_channels,
)
from rsvlm.data.visual_prompts import prompt_batch

#: What :meth:`SpieDataset.load` gives: image C×H×W, mask H×W, valid H×W, the raster, the instruction.
Loaded = tuple[np.ndarray, np.ndarray, np.ndarray, Any, str]


class SampleError(RsvlmError, ValueError):
    """A sample's files do not fit its record or the datamodule (names the file and field)."""


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
        normalization: ``dataset`` (``mean``/``std``), ``image`` or ``robust_image`` (each
            image's own statistics; see :func:`rsvlm.data.transforms.normalize_as`).
        index_channels: spectral indices (``ndvi``, ``ndwi``, ``ndbi``) appended as channels,
            computed from the bands before normalisation
            (:func:`rsvlm.data.transforms.with_index_channels`).
        cache_images: keep what :meth:`load` read for the last this many records in memory
            (:class:`~rsvlm.data.recent.RecentlyRead`); 0 reads the files for every sample.
        threshold_jitter: ``j`` ≥ 0 in index units: each training sample's coarse-mask / margin
            channels (``ndwi_otsu``, ``ndwi_margin``) are cut at Otsu's threshold plus a uniform draw
            in ``[−j, j]`` per index (a new draw each epoch, from the sampler's seed), so a model that
            reads them learns to add water the cut missed as well as to remove what it took. Only
            samples that come with a sampler seed (training) are moved; the instruction keeps the
            record's prompt.
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
        normalization: Normalization = "dataset",
        index_channels: Sequence[str] = (),
        cache_images: int = 0,
        threshold_jitter: float = 0.0,
    ) -> None:
        self.threshold_jitter = check_threshold_jitter(threshold_jitter, "SpieDataset.threshold_jitter")
        self.records = list(records)
        self.memory: RecentlyRead[Loaded] | None = RecentlyRead(cache_images) if cache_images > 0 else None
        self.index_channels = tuple(index_channels)
        self.normalization = normalization
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

    def load(self, index: int) -> Loaded:
        """Read and check one record → (image C×H×W, mask H×W, valid H×W, raster, instruction);
        the arrays are the caller's own."""
        if self.memory is None:
            return self._read(index)
        data, mask, valid, raster, text = self.memory(index, lambda: self._read(index))
        return data.copy(), mask.copy(), valid.copy(), raster, text

    def _read(self, index: int) -> Loaded:
        rec = self.records[index]
        raster = read_raster(rec.image)
        try:
            BandSpec(tuple(rec.bands)).check_count(
                raster.count, path=rec.image, declared_by=f"field 'bands' of {self._where(index, rec)}"
            )
        except BandError as exc:
            raise SampleError(str(exc)) from exc
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

    def _cut_offsets(self, aug_seed: int | None) -> dict[str, float] | None:
        """Index → a uniform draw in ``±threshold_jitter`` to add to its Otsu cut, for each index a
        channel is cut from; None (the cut itself) without jitter or sampler seed."""
        if self.threshold_jitter == 0 or aug_seed is None:
            return None
        # Its own stream, so turning jitter on leaves the flip/rot90 draws of the same seed alone.
        rng = np.random.default_rng([aug_seed, 1])
        indices = dict.fromkeys(index_of_channel(n) for n in self.index_channels if needs_threshold(n))
        return {name: float(rng.uniform(-self.threshold_jitter, self.threshold_jitter)) for name in indices}

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = item if isinstance(item, tuple) else (item, None)
        rec = self.records[index]
        data, mask_values, valid, raster, text = self.load(index)
        v = torch.from_numpy(valid)[None]
        raw = torch.from_numpy(np.ascontiguousarray(data))
        image = normalize_as(raw, v, self.normalization, self.mean, self.std)
        image = with_index_channels(image, raw, v, self.bands, self.index_channels, offsets=self._cut_offsets(aug_seed))
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
            **georef_meta(raster.crs, raster.transform),
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
        for key in ("category", "instruction", "response", "meta", "task"):
            if key in first:
                batch[key] = [s[key] for s in samples]
        if "visual_prompts" in first:
            batch["visual_prompts"] = prompt_batch(
                [s["visual_prompts"] for s in samples], image_size=tuple(batch["image"].shape[-2:])
            )
        if self.formatter is not None and "instruction" in batch:
            extra = dict(self.formatter(batch["instruction"], batch["response"]))
            clash = sorted(set(extra) & set(CONTRACT_KEYS))
            if clash:
                raise KeyError(f"text formatter returned key(s) {clash} that the batch contract already uses")
            batch.update(extra)
        return batch
