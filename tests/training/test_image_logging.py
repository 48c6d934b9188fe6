"""Pictures logged during training: rows of [image | prediction | target] built from the batch."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from rsvlm.training.image_logging import overlay_grid, send_picture


def _stretch(bands: np.ndarray) -> np.ndarray:
    """Brute-force 2–98 % stretch of each band to uint8, bands last (one band repeated to grey)."""
    channels = []
    for band in bands.astype(np.float64):
        lo, hi = np.percentile(band, [2, 98])
        channels.append(np.rint(np.clip((band - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))
    return np.stack(channels * 3 if len(channels) == 1 else channels, axis=-1)


def _blend(rgb: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    mixed = np.rint(0.55 * rgb.astype(np.float64) + 0.45 * np.asarray(color, dtype=np.float64)).astype(np.uint8)
    return np.where(mask[..., None], mixed, rgb)


def test_overlay_grid_rows_match_a_hand_built_reference():
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(3, 4, 8, 6, generator=g), "mask": (torch.rand(3, 1, 8, 6, generator=g) > 0.5).float()}
    logits = torch.randn(3, 1, 8, 6, generator=g)
    names = ["blue", "green", "red", "nir"]
    grid = overlay_grid(batch, logits, names, limit=2)
    assert grid.shape == (2 * 8, 3 * 6, 3) and grid.dtype == np.uint8
    for i in range(2):
        image = batch["image"][i].numpy()
        rgb = _stretch(image[[2, 1, 0]])
        expected = np.concatenate(
            [
                rgb,
                _blend(rgb, logits[i, 0].numpy() > 0, (255, 0, 0)),
                _blend(rgb, batch["mask"][i, 0].numpy() > 0.5, (0, 255, 0)),
            ],
            axis=1,
        )
        np.testing.assert_array_equal(grid[8 * i : 8 * (i + 1)], expected)
    # Unknown bands: the first band in grey.
    grey = overlay_grid(batch, logits, None, limit=1)[:, :6]
    np.testing.assert_array_equal(grey, _stretch(batch["image"][0, :1].numpy()))


def test_pictures_go_only_to_loggers_that_take_images():
    class ImageLogger:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def add_image(self, *args, **kwargs) -> None:
            self.calls.append((args, kwargs))

    takes_images = ImageLogger()
    module = SimpleNamespace(
        loggers=[SimpleNamespace(experiment=takes_images), SimpleNamespace(experiment=object())], global_step=7
    )
    picture = np.zeros((4, 5, 3), dtype=np.uint8)
    send_picture(module, "val/x", picture)
    assert takes_images.calls == [(("val/x", picture, 7), {"dataformats": "HWC"})]
