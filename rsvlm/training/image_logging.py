"""Pictures logged during training: mask overlays on a colour composite of the input."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from rsvlm.io.pictures import composite_or_stretch, overlay


def overlay_grid(batch: dict[str, Any], logits: torch.Tensor, band_names: list[str] | None, limit: int) -> np.ndarray:
    """Rows of [image | prediction overlay | target overlay] for the first ``limit`` samples.

    ``batch["image"]`` is ``B×C×H×W``, ``batch["mask"]`` and ``logits`` are ``B×1×H×W``. The
    image is drawn by :func:`rsvlm.io.pictures.composite_or_stretch` (true colour, else false
    colour, else the first band in grey). Returns an ``(rows·H)×(3·W)×3`` uint8 array.
    Prediction in red, target in green.
    """
    images = batch["image"][:limit].detach().float().cpu().numpy()
    preds = (logits[:limit].detach().float().cpu() > 0).numpy()[:, 0]
    targets = batch["mask"][:limit].detach().cpu().numpy()[:, 0] > 0.5
    rows = []
    for image, pred, target in zip(images, preds, targets):
        rgb = composite_or_stretch(image, band_names)
        rows.append(np.concatenate([rgb, overlay(rgb, pred, (255, 0, 0)), overlay(rgb, target, (0, 255, 0))], axis=1))
    return np.concatenate(rows, axis=0)


def log_mask_overlays(
    module: L.LightningModule, batch: dict[str, Any], logits: torch.Tensor, limit: int, tag: str
) -> None:
    """Send an overlay grid (:func:`overlay_grid`) to the loggers, from the main process, outside sanity checks."""
    if module.trainer is None or module.trainer.sanity_checking or not module.trainer.is_global_zero:
        return
    datamodule = getattr(module.trainer, "datamodule", None)
    band_names = list(getattr(datamodule, "band_names", []) or []) or None
    try:
        grid = overlay_grid(batch, logits, band_names, limit)
    except (KeyError, ValueError):
        grid = overlay_grid(batch, logits, None, limit)
    send_picture(module, tag, grid)


def send_picture(module: L.LightningModule, tag: str, picture: np.ndarray) -> None:
    """Send an ``H×W×3`` uint8 picture to every logger that takes images (TensorBoard); skip the others."""
    for logger in module.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(tag, picture, module.global_step, dataformats="HWC")
