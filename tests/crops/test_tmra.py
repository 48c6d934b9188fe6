"""TMRA's image operations against PIL and hand-written references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rsvlm.crops.tmra import compose_pixel, compose_region, crop, degrade, paste, resize_to


def _pil_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each channel resized by PIL (mode F, bilinear: antialiased when shrinking); size (H, W)."""
    channels = [np.asarray(Image.fromarray(c.numpy()).resize(size[::-1], Image.BILINEAR)) for c in x]
    return torch.from_numpy(np.stack(channels))


def test_degrade_is_pil_down_then_bilinear_up():
    torch.manual_seed(0)
    x = torch.rand(3, 64, 48)
    small = _pil_resize(x, (16, 12))
    up = torch.nn.functional.interpolate(small[None], size=(64, 48), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(degrade(x), up, atol=2e-3, rtol=0)
    torch.testing.assert_close(resize_to(x), _pil_resize(x, (100, 100)), atol=2e-3, rtol=0)
    assert degrade(x).shape == x.shape


def test_region_and_pixel_composites_keep_the_geometry_and_the_finest_crop_wins():
    torch.manual_seed(1)
    x = torch.rand(3, 80, 60)
    b1, b2 = (10, 20, 50, 70), (5, 10, 25, 30)
    region = compose_region(x, b1)
    torch.testing.assert_close(region[:, 20:70, 10:50], x[:, 20:70, 10:50])
    outside = torch.ones(80, 60, dtype=torch.bool)
    outside[20:70, 10:50] = False
    torch.testing.assert_close(region[:, outside], degrade(x)[:, outside])
    pixel = compose_pixel(x, b1, b2)
    assert pixel.shape == x.shape
    torch.testing.assert_close(pixel[:, 30:50, 15:35], x[:, 30:50, 15:35])  # b2 in image coordinates
    first = x[:, 20:70, 10:50]
    ring = torch.ones(50, 40, dtype=torch.bool)
    ring[10:30, 5:25] = False
    torch.testing.assert_close(pixel[:, 20:70, 10:50][:, ring], degrade(first)[:, ring])
    torch.testing.assert_close(pixel[:, outside], degrade(degrade(x))[:, outside])


def test_box_errors_name_the_box():
    x = torch.zeros(1, 10, 10)
    with pytest.raises(ValueError, match=r"box \(5, 5, 5, 8\) is empty"):
        crop(x, (5, 5, 5, 8))
    with pytest.raises(ValueError, match="outside the 10×10"):
        paste(x, torch.zeros(1, 2, 2), (9, 9, 11, 11))
    with pytest.raises(ValueError, match="does not fit"):
        paste(x, torch.zeros(1, 3, 3), (0, 0, 2, 2))
