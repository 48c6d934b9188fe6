"""Instruction records → samples and batches of the rsvlm batch contract, extended for instruction data.

One sample (shapes for a model side S, T_i targets, M_i visual prompts)::

    image            C×S×S float32   pixels / scale, then (x − mean) / std when given; pad and nodata 0 (with
                                     modality presets: the record's C_m bands normalised by its modality's
                                     preset, then zeros up to C)
    band_valid       C bool          only with modality presets: True on the record's C_m bands
    valid            1×S×S bool      False on the pad and on nodata
    mask             1×S×S float32   the union of the record's masks (zeros without masks)
    masks            T_i×S×S float32 one mask per target, in [SEG] order (0×S×S without masks)
    has_mask         bool            the record has masks
    boxes            T_i×4 float32   the record's boxes (x0, y0, x1, y1) on the square (0×4 without boxes)
    visual_prompts   list[VisualPrompt] on the square (slot k = "Region k")
    modality         int             rsvlm.data.modalities.MODALITY_IDS of the record's modality
    instruction      str             the last human turn, without its <image> placeholder
    response         str             the gpt turn answering it ("" when the record ends with a question)
    conversation     list[dict]      every turn as {"from": "human"|"gpt", "value": ...}, placeholders kept
    category         str             the record's labels joined by "; " ("" without labels)
    task, granularity, source  str
    meta             dict            id, split, records file, image path, original size, the resize info,
                                     labels, references, qtype, coord_convention and the record's meta

The collated batch stacks ``image``, ``valid``, ``mask``, ``has_mask`` (B bool), ``modality`` (B
long) and, with modality presets, ``band_valid`` (B×C; with ``image`` and ``modality`` the input of
:class:`rsvlm.encoders.modality_stem.MultiSourceStem`), collates ``visual_prompts`` with
:func:`rsvlm.data.visual_prompts.prompt_batch` (M = the most prompts of a sample, 0 when none) and keeps the rest as lists of B (``masks`` and ``boxes`` as lists of
T_i×S×S and T_i×4 tensors: targets differ in number). A text formatter with a ``conversations``
method (:class:`rsvlm.llm.chat.ChatFormatter`) formats the whole conversation, so multi-turn records
train on every gpt turn and ``prompt_ids`` end where the last answer starts; any other formatter gets
``(instruction, response)``, i.e. the last exchange alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rsvlm.data.base import CONTRACT_KEYS, TextFormatter
from rsvlm.data.modalities import MODALITY_IDS, Modality, ModalityError, modality_preset, to_model_input
from rsvlm.data.multitask.geometry import PadMode, move_boxes, resize_pad_square
from rsvlm.data.multitask.masks import decode_mask
from rsvlm.data.multitask.records import InstructRecord, InstructRecordError
from rsvlm.data.multitask.validate import IMAGE_TOKEN, SEG_TOKEN
from rsvlm.data.raster import RasterError, read_window
from rsvlm.data.recent import RecentlyRead
from rsvlm.data.transforms import normalize
from rsvlm.data.visual_prompts import prompt_batch, prompts_from_json, resize_pad_prompts

#: Sample keys collated as lists of B.
LIST_KEYS = (
    "masks",
    "boxes",
    "category",
    "instruction",
    "response",
    "conversation",
    "task",
    "granularity",
    "source",
    "meta",
)


@dataclass(frozen=True)
class Item:
    """One record of a dataset, the records file it came from (named in errors) and its pixel divisor."""

    record: InstructRecord
    origin: str
    scale: float


def _error(item: Item, field: str, what: str) -> InstructRecordError:
    return InstructRecordError(f"{item.origin}: record {item.record.id!r}: field {field!r}: {what}")


PixelReader = Callable[[str], tuple[np.ndarray, np.ndarray]]


def read_pixels(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(C×H×W float32, H×W bool valid)`` of a whole raster file (:func:`rsvlm.data.raster.read_window`)."""
    data, valid, *_ = read_window(path)
    return data, valid


class PixelCache:
    """:func:`read_pixels` through a memory of the last ``capacity`` files read
    (:class:`~rsvlm.data.recent.RecentlyRead`); each call gets its own copy."""

    def __init__(self, capacity: int) -> None:
        self.memory: RecentlyRead[tuple[np.ndarray, np.ndarray]] = RecentlyRead(capacity)

    def __call__(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        data, valid = self.memory(path, lambda: read_pixels(path))
        return data.copy(), valid.copy()


def read_image(
    item: Item, channels: int, keep_bands: bool = False, reader: PixelReader = read_pixels
) -> tuple[np.ndarray, np.ndarray]:
    """``(C×H×W float32, H×W bool valid)`` of the record's image with ``channels`` channels, its file
    read by ``reader`` (:func:`read_pixels`, or a :class:`PixelCache`).

    One band is repeated (grey SAR / IR chips, as ``PIL.convert("RGB")``); a fourth band of a
    three-channel read is dropped (RGBA's alpha, as ``convert("RGB")`` drops it). With
    ``keep_bands`` the file's own ``C_m <= channels`` bands come back as they are (the caller
    normalises them by modality and zero-pads them).
    """
    path = item.record.image
    try:
        data, valid = reader(path)
    except (FileNotFoundError, RasterError) as error:
        raise _error(item, "image", str(error)) from None
    count = data.shape[0]
    if keep_bands:
        if count > channels:
            raise _error(item, "image", f"{count} band(s) in {path}, more than the {channels} the datamodule reads")
    elif count == 1 and channels > 1:
        data = np.repeat(data, channels, axis=0)
    elif count == 4 and channels == 3:
        data = data[:3]
    elif count != channels:
        raise _error(item, "image", f"{count} band(s) in {path}, the datamodule reads {channels}")
    size = item.record.size
    if size is not None and list(size) != list(data.shape[-2:]):
        raise _error(item, "size", f"{list(size)} but {path} is {list(data.shape[-2:])} (H, W)")
    return data, valid


def _text(record: InstructRecord, seg_text: str | None) -> list[dict[str, str]]:
    """The conversation as LLaVA turns, ``[SEG]`` of gpt turns replaced by ``seg_text`` when given."""
    return [
        {"from": t.role, "value": t.text.replace(SEG_TOKEN, seg_text) if seg_text and t.role == "gpt" else t.text}
        for t in record.conversations
    ]


def last_exchange(conversation: Sequence[Mapping[str, str]]) -> tuple[str, str]:
    """``(instruction, response)``: the last human turn without ``<image>``, and the gpt turn after it."""
    last = max(i for i, t in enumerate(conversation) if t["from"] == "human")
    instruction = conversation[last]["value"].replace(IMAGE_TOKEN + "\n", "").replace(IMAGE_TOKEN, "").strip()
    response = conversation[last + 1]["value"] if last + 1 < len(conversation) else ""
    return instruction, response


class InstructDataset(Dataset):
    """Samples of instruction records on the model's square (keys in the module docstring).

    Args:
        items: the records with their origin and pixel divisor.
        image_size: side S of the square.
        pad: ``center`` or ``bottom_right`` (:mod:`rsvlm.data.multitask.geometry`).
        channels: C, the channels the model reads.
        mean, std: per-channel statistics applied after the divisor, or None (values stay pixels / scale).
        seg_text: what ``[SEG]`` becomes in gpt turns (GeoMag's codebook ``"[SEG0][SEG1][SEG2]"``), or None.
        modality_presets: modality name → :class:`rsvlm.data.modalities.Modality` or preset name, or None.
            When given, a record's image keeps its own bands, is normalised by its modality's preset
            (:func:`rsvlm.data.modalities.to_model_input`; ``scale``, ``mean`` and ``std`` are not used)
            and zero-padded to ``channels``, and samples carry ``band_valid``.
        cache_images: keep the last this many image files in memory (:class:`PixelCache`); 0 reads
            each sample's file again.
    """

    def __init__(
        self,
        items: Sequence[Item],
        image_size: int,
        pad: PadMode = "center",
        channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seg_text: str | None = None,
        modality_presets: Mapping[str, Modality | str] | None = None,
        cache_images: int = 0,
    ) -> None:
        self.items = list(items)
        self.read = PixelCache(cache_images) if cache_images > 0 else read_pixels
        self.image_size = image_size
        self.pad = pad
        self.channels = channels
        self.mean = np.zeros(channels, np.float32) if mean is None else np.asarray(mean, np.float32)
        self.std = np.ones(channels, np.float32) if std is None else np.asarray(std, np.float32)
        self.seg_text = seg_text
        self.presets = (
            None if modality_presets is None else {k: modality_preset(v) for k, v in modality_presets.items()}
        )

    def __len__(self) -> int:
        return len(self.items)

    def _targets(self, item: Item, size: tuple[int, int]) -> Tensor | None:
        """``T×H×W`` float of the record's masks, or None without masks."""
        masks = []
        for i, mask in enumerate(item.record.masks):
            try:
                masks.append(torch.from_numpy(decode_mask(mask, size, f"masks[{i}]")))
            except (ValueError, FileNotFoundError, RasterError) as error:
                raise _error(item, f"masks[{i}]", str(error).removeprefix(f"masks[{i}]: ")) from None
        return torch.stack(masks).float() if masks else None

    def _by_modality(self, item: Item) -> tuple[Tensor, Tensor, Tensor]:
        """``(C×H×W image, 1×H×W valid, C band_valid)``: the file's ``C_m`` bands normalised by the
        record's modality preset, zeros after them."""
        modality = item.record.modality
        if modality not in self.presets:
            raise _error(item, "modality", f"{modality!r} has no entry in modality_presets ({', '.join(self.presets)})")
        data, ok = read_image(item, self.channels, keep_bands=True, reader=self.read)
        try:
            x, ok = to_model_input(data, self.presets[modality], valid=ok, source=item.record.image)
        except ModalityError as error:
            raise _error(item, "image", str(error)) from None
        image = torch.zeros(self.channels, *x.shape[-2:])
        image[: len(x)] = torch.from_numpy(x)
        return image, torch.from_numpy(ok)[None], torch.arange(self.channels) < len(x)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        record = item.record
        band_valid = None
        if self.presets is None:
            data, ok = read_image(item, self.channels, reader=self.read)
            valid = torch.from_numpy(ok)[None]
            image = normalize(torch.from_numpy(data) / item.scale, valid, self.mean, self.std)
        else:
            image, valid, band_valid = self._by_modality(item)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        image, masks, valid, info = resize_pad_square(
            image, self._targets(item, size), valid, self.image_size, self.pad
        )
        square = (self.image_size, self.image_size)
        masks = torch.zeros(0, *square) if masks is None else masks
        boxes = move_boxes(torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4), info)
        try:
            prompts = resize_pad_prompts(prompts_from_json(record.visual_prompts, "visual_prompts"), info)
        except ValueError as error:
            raise _error(item, "visual_prompts", str(error)) from None
        conversation = _text(record, self.seg_text)
        instruction, response = last_exchange(conversation)
        meta = {
            "id": record.id,
            "split": record.split,
            "records_file": item.origin,
            "image": record.image,
            "original_size": list(size),
            "resize": info,
            "labels": list(record.labels),
            "references": record.references,
            "qtype": record.qtype,
            "coord_convention": record.coord_convention,
            "record_meta": dict(record.meta),
        }
        sample = {
            "image": image.contiguous(),
            "valid": valid.contiguous(),
            "mask": masks.amax(dim=0, keepdim=True) if len(masks) else torch.zeros(1, *square),
            "masks": masks.contiguous(),
            "has_mask": bool(record.masks),
            "boxes": boxes,
            "visual_prompts": prompts,
            "modality": MODALITY_IDS[record.modality],
            "instruction": instruction,
            "response": response,
            "conversation": conversation,
            "category": "; ".join(record.labels),
            "task": record.task,
            "granularity": record.granularity,
            "source": record.source,
            "meta": meta,
        }
        return sample if band_valid is None else {**sample, "band_valid": band_valid}


class InstructCollate:
    """Samples → one batch (see the module docstring); picklable as long as the formatter is."""

    def __init__(self, formatter: TextFormatter | None = None) -> None:
        self.formatter = formatter

    def _text_fields(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        conversations = getattr(self.formatter, "conversations", None)
        if not callable(conversations):
            return dict(self.formatter(batch["instruction"], batch["response"]))
        token = getattr(self.formatter, "image_token", IMAGE_TOKEN)
        # The records write LLaVA's <image>; a formatter built with another placeholder reads its own.
        turns = [[{**t, "value": t["value"].replace(IMAGE_TOKEN, token)} for t in c] for c in batch["conversation"]]
        return dict(conversations(turns))

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {key: torch.stack([s[key] for s in samples]) for key in ("image", "valid", "mask")}
        batch["has_mask"] = torch.tensor([s["has_mask"] for s in samples], dtype=torch.bool)
        batch["modality"] = torch.tensor([s["modality"] for s in samples], dtype=torch.long)
        if "band_valid" in samples[0]:
            batch["band_valid"] = torch.stack([s["band_valid"] for s in samples])
        batch.update({key: [s[key] for s in samples] for key in LIST_KEYS})
        batch["visual_prompts"] = prompt_batch(
            [s["visual_prompts"] for s in samples], image_size=tuple(batch["image"].shape[-2:])
        )
        if self.formatter is not None:
            extra = self._text_fields(batch)
            clash = sorted(set(extra) & (set(CONTRACT_KEYS) | set(batch)))
            if clash:
                raise KeyError(f"text formatter returned key(s) {clash} that the batch already uses")
            batch.update(extra)
        return batch
