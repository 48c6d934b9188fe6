"""Training callbacks: stop at a non-finite loss, show throughput.

* :class:`NanGuard` stops training at the first NaN/inf loss *before* its backward pass and
  optimizer step, so the weights in memory and every checkpoint on disk are still good; the
  error names the global step, the epoch, the batch index and the batch's files.
* :class:`Throughput` shows samples per second in the progress bar and logs it.

In a recipe::

    trainer:
      callbacks:
        - class_path: rsvlm.training.callbacks.NanGuard
        - class_path: rsvlm.training.callbacks.Throughput
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from rsvlm.contracts import RsvlmError


class NonFiniteLossError(RsvlmError, RuntimeError):
    """The training loss became NaN or infinite (names the step, the batch and its files)."""


def sample_file(entry: Any) -> str | None:
    """The file of one sample's meta in the datamodule contract (``image``, else ``path``), or None."""
    if not isinstance(entry, Mapping):
        return None
    file = entry.get("image") or entry.get("path")
    return str(file) if file else None


def describe_batch(batch: Any, limit: int = 4) -> str:
    """The files of a batch in the datamodule contract (``meta[i]["image"]``), for messages."""
    meta = batch.get("meta") if isinstance(batch, dict) else None
    if not meta:
        return "no file information in the batch"
    paths = [file for file in map(sample_file, meta) if file]
    if not paths:
        return "no file information in the batch"
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return "files: " + ", ".join(paths[:limit]) + more


class NanGuard(Callback):
    """Raise :class:`NonFiniteLossError` at the first non-finite training loss.

    The check runs in ``on_before_backward``: the bad loss never reaches the gradients, the
    optimizer or a checkpoint, and the last checkpoint written stays the last good one (the
    message names it). Under DDP the ranks agree (any rank's bad loss stops all of them), so no
    rank is left waiting in a collective.
    """

    def __init__(self) -> None:
        self._batch_idx: int | None = None
        self._batch_info = ""

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx
        self._batch_info = describe_batch(batch)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        any_bad = trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if not any_bad:
            return
        what = f"{loss.detach().float().item()}" if not finite else "finite here, non-finite on another rank"
        callback = trainer.checkpoint_callback
        last = (
            (getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")) if callback else ""
        )
        raise NonFiniteLossError(
            f"training loss is not finite ({what}) at global step {trainer.global_step}, epoch {trainer.current_epoch}, "
            f"batch {self._batch_idx} on rank {trainer.global_rank} ({self._batch_info}). Training stopped before the "
            f"backward pass and optimizer step, so no checkpoint holds this state; last good checkpoint: "
            f"{last or 'none written yet'}. Check these samples for NaN/inf pixels, or lower the learning rate / "
            f"use bf16 instead of fp16."
        )


class Throughput(Callback):
    """Training samples per second over the last ``window`` batches, in the progress bar.

    Args:
        window: batches averaged over.
        batch_key: the batch entry whose first dimension is the batch size.

    Logged as ``train/samples_per_s`` (all ranks' samples: per-rank batch × world size).
    """

    def __init__(self, window: int = 20, batch_key: str = "image") -> None:
        if window < 1:
            raise ValueError(f"Throughput: window must be >= 1, got {window}")
        self.window = window
        self.batch_key = batch_key
        self._times: deque[float] = deque(maxlen=window + 1)
        self._samples: deque[int] = deque(maxlen=window)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Validation and epoch boundaries are not training time.
        self._times.clear()
        self._samples.clear()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._times:
            self._times.append(time.perf_counter())

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        size = _batch_size(batch, self.batch_key)
        if size is None:
            return
        self._times.append(time.perf_counter())
        self._samples.append(size * trainer.world_size)
        elapsed = self._times[-1] - self._times[0]
        if elapsed > 0:
            pl_module.log(
                "train/samples_per_s",
                sum(self._samples) / elapsed,
                prog_bar=True,
                on_step=True,
                on_epoch=False,
                batch_size=size,
            )


def _batch_size(batch: Any, key: str) -> int | None:
    if isinstance(batch, dict) and isinstance(batch.get(key), torch.Tensor):
        return int(batch[key].shape[0])
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    return None
