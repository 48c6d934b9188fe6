"""Pictures logged during training: mask overlays on a colour composite of the input."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch


def overlay_grid(batch: dict[str, Any], logits: torch.Tensor, band_names: list[str] | None, limit: int) -> np.ndarray:
    """Rows of [image | prediction overlay | target overlay] for the first ``limit`` samples.

    Returns an ``(rows·H)×(3·W)×3`` uint8 array. Prediction in red, target in green.
    """
    from rsvlm.io.pictures import composite, overlay, stretch

    images = batch["image"][:limit].detach().float().cpu().numpy()
    preds = (logits[:limit].detach().float().cpu() > 0).numpy()[:, 0]
    targets = batch["mask"][:limit].detach().cpu().numpy()[:, 0] > 0.5
    rows = []
    for image, pred, target in zip(images, preds, targets):
        rgb = composite(image, band_names) if band_names else stretch(image[:3])
        rows.append(np.concatenate([rgb, overlay(rgb, pred, (255, 0, 0)), overlay(rgb, target, (0, 255, 0))], axis=1))
    return np.concatenate(rows, axis=0)


def log_mask_overlays(
    module: L.LightningModule, batch: dict[str, Any], logits: torch.Tensor, limit: int, tag: str
) -> None:
    """Send an overlay grid to every logger that takes images (TensorBoard); others are skipped."""
    if module.trainer is None or module.trainer.sanity_checking or not module.trainer.is_global_zero:
        return
    datamodule = getattr(module.trainer, "datamodule", None)
    band_names = list(getattr(datamodule, "band_names", []) or []) or None
    try:
        grid = overlay_grid(batch, logits, band_names, limit)
    except (KeyError, ValueError):
        grid = overlay_grid(batch, logits, None, limit)
    for logger in module.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(tag, grid, module.global_step, dataformats="HWC")
