"""MagCrop's training boxes found once (the GeoMag spec's ``boxes: cache``, ViCrop's training-free use).

Online PSC costs two extra attention passes (with gradients) per region or pixel sample. The spec's
training default computes each training sample's boxes once, with the model as it is when training
starts (the pretrained VLM in the paper), and reuses them every epoch; validation, test and predict
stay online with the model being trained.

:class:`MagCropBoxCache` is that writer, as a Lightning callback: at the start of ``fit`` it runs
:meth:`MagCrop.find_boxes <rsvlm.crops.magcrop.MagCrop.find_boxes>` over the train split in order,
writes ``{record id: [[x1, y1, x2, y2], ...]}`` to a JSON file (atomically; an existing file is read
instead, so a resumed run keeps its boxes), and hands the cropper a :class:`BoxCache` that it reads
whenever the model trains. In a multi-device run each process finds the boxes of every
``world_size``-th record (its shard) and the shards are gathered, so every process holds them all;
the first one writes the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from rsvlm.contracts import ContractError
from rsvlm.io.atomic import atomic_write_text

CACHE_NAME = "magcrop_boxes.json"


def record_ids(batch: Mapping[str, Any], source: str = "the box cache") -> list[str]:
    """Each sample's record id: ``batch["meta"][i]["id"]`` (:class:`~rsvlm.data.multitask.dataset.InstructDataset`)."""
    meta = batch.get("meta")
    if meta is None or any(not isinstance(m, Mapping) or "id" not in m for m in meta):
        raise ContractError(f"MagCrop's {source} is keyed by record id, and the batch's 'meta' has no 'id'")
    return [str(m["id"]) for m in meta]


class BoxCache:
    """Boxes per record id (``[b₁]`` region, ``[b₁, b₂]`` pixel, absent for image-level samples)."""

    def __init__(self, boxes: Mapping[str, list[list[int]]], source: str = "the box cache") -> None:
        self.boxes, self.source = dict(boxes), source

    def lookup(self, batch: Mapping[str, Any]) -> list[list[list[int]] | None]:
        """The cached boxes of each sample of ``batch`` (by :func:`record_ids`), in MagCrop's
        ``magcrop_boxes`` form; a sample without an entry gets None (MagCrop then says which
        sample lacks the boxes its level needs)."""
        return [self.boxes.get(i) for i in record_ids(batch, self.source)]

    def __len__(self) -> int:
        return len(self.boxes)


class MagCropBoxCache(Callback):
    """Find MagCrop's PSC boxes of every training sample once, when ``fit`` starts (see the module docstring).

    Args:
        path: the JSON file; default ``<trainer.log_dir>/magcrop_boxes.json``. Read when it exists.
        batch_size: images per attention pass; default the datamodule's ``batch_size``.
        progress: show a progress bar over the train split.
    """

    def __init__(self, path: str | None = None, batch_size: int | None = None, progress: bool = True) -> None:
        self.path, self.batch_size, self.progress = path, batch_size, progress

    def cache_path(self, trainer: L.Trainer) -> Path:
        return Path(self.path) if self.path else Path(trainer.log_dir or trainer.default_root_dir) / CACHE_NAME

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cropper = getattr(pl_module, "cropper", None)
        if cropper is None or not cropper.enabled or cropper.boxes == "given":
            return  # no MagCrop (e.g. Table 7's "w/o" cell), nothing cropped, or boxes from the data
        if not hasattr(cropper, "find_boxes"):
            raise ContractError(f"MagCropBoxCache: the model's cropper {type(cropper).__name__} is not MagCrop")
        path = self.cache_path(trainer)
        if path.is_file():
            cropper.box_cache = BoxCache(json.loads(path.read_text(encoding="utf-8")), str(path))
            return
        boxes = self.find_all(trainer, pl_module, cropper)
        if trainer.is_global_zero:
            atomic_write_text(path, json.dumps(boxes))
        cropper.box_cache = BoxCache(boxes, str(path))

    def find_all(self, trainer: L.Trainer, pl_module: L.LightningModule, cropper: Any) -> dict[str, list[list[int]]]:
        """``{record id: boxes}`` over the train split, in order, with the model as it is now."""
        datamodule = trainer.datamodule
        dataset = datamodule.datasets["train"]
        world, rank = getattr(trainer, "world_size", 1), getattr(trainer, "global_rank", 0)
        loader = DataLoader(
            Subset(dataset, range(rank, len(dataset), world)),  # this process's shard
            batch_size=self.batch_size or datamodule.batch_size,
            shuffle=False,
            collate_fn=datamodule.collate_fn(),
        )
        found: dict[str, list[list[int]]] = {}
        disable = not (self.progress and trainer.is_global_zero)
        was_training = pl_module.training
        pl_module.train()  # training's routing (gold granularity); find_boxes runs its passes in eval mode
        try:
            for batch in tqdm(loader, desc="MagCrop boxes (once)", unit="batch", disable=disable):
                batch = {k: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                levels = cropper.levels(batch, batch["image"].shape[0])
                for record_id, boxes in zip(record_ids(batch), cropper.find_boxes(batch["image"], batch, levels)):
                    if boxes is not None:
                        found[record_id] = [[int(v) for v in box] for box in boxes]
        finally:
            pl_module.train(was_training)
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            shards: list[Any] = [None] * world
            torch.distributed.all_gather_object(shards, found)
            found = {key: boxes for shard in shards for key, boxes in shard.items()}
        return found
