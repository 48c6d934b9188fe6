"""Sample transforms: per-band normalisation, aspect-preserving resize + pad, flips/rot90.

All functions take and return torch tensors: image ``C×H×W`` float32, mask ``1×H×W`` float32
(0/1), valid ``1×H×W`` bool. Order used by the datamodule: normalise → resize/pad →
augment.

Padding: the resized image sits in the **top-left** corner of the ``size``×``size`` canvas;
the bottom rows / right columns are padded with **0 after normalisation, i.e. the band mean**,
the mask with 0, and the padded pixels are marked invalid (``valid`` False), so losses and
metrics ignore them. Invalid input pixels are likewise set to 0 (the mean) by
:func:`normalize`, so NaN never reaches a model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def normalize(image: Tensor, valid: Tensor, mean: Tensor | np.ndarray, std: Tensor | np.ndarray) -> Tensor:
    """(image − mean) / std per band; invalid pixels → 0.

    Args:
        image: ``C×H×W`` float.
        valid: ``1×H×W`` or ``H×W`` bool.
        mean, std: ``(C,)`` per-band statistics (in the image's band order).

    Returns:
        ``C×H×W`` float32.
    """
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    if m.shape[0] != image.shape[0] or s.shape[0] != image.shape[0]:
        raise ValueError(
            f"normalize: image has {image.shape[0]} bands but statistics have {m.shape[0]} means / {s.shape[0]} stds"
        )
    out = (image.float() - m) / s
    v = valid.reshape(1, *image.shape[-2:]).bool()
    return torch.where(v, out, torch.zeros((), dtype=out.dtype))


def resize_pad(
    image: Tensor, mask: Tensor | None, valid: Tensor, size: int
) -> tuple[Tensor, Tensor | None, Tensor, dict[str, Any]]:
    """Resize so the longer side is ``size`` (aspect kept), then pad bottom/right to a square.

    The image is resized bilinearly (antialiased when shrinking); mask and validity by
    nearest neighbour so they stay binary.

    Args:
        image: ``C×H×W`` float (already normalised: the pad value 0 is the band mean).
        mask: ``1×H×W`` float mask or None.
        valid: ``1×H×W`` bool.
        size: output side S.

    Returns:
        ``(image C×S×S, mask 1×S×S | None, valid 1×S×S, info)`` where ``info`` has
        ``original_size`` (H, W), ``resized_size`` (h, w), ``scale`` (h/H) and ``pad``
        (top, left, bottom, right) in output pixels.
    """
    h0, w0 = int(image.shape[-2]), int(image.shape[-1])
    scale = size / max(h0, w0)
    h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    if (h, w) != (h0, w0):
        image = F.interpolate(
            image[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=scale < 1
        )[0]
        valid = F.interpolate(valid[None].float(), size=(h, w), mode="nearest-exact")[0] > 0.5
        if mask is not None:
            mask = F.interpolate(mask[None].float(), size=(h, w), mode="nearest-exact")[0]
    pad = (0, 0, size - h, size - w)
    if pad[2] or pad[3]:
        # F.pad order: (left, right, top, bottom) of the last two dims.
        spec = (0, pad[3], 0, pad[2])
        image = F.pad(image, spec, value=0.0)
        valid = F.pad(valid, spec, value=False)
        if mask is not None:
            mask = F.pad(mask, spec, value=0.0)
    info = {"original_size": [h0, w0], "resized_size": [h, w], "scale": h / h0, "pad": list(pad)}
    return image, mask, valid, info


def random_dihedral(
    image: Tensor, mask: Tensor | None, valid: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor | None, Tensor, dict[str, int]]:
    """One of the 8 flips/rotations, the same for image, mask and validity.

    ``k`` quarter turns counter-clockwise (``torch.rot90``), then a left-right flip when
    ``flip`` is 1; both drawn from ``generator``.

    Returns:
        ``(image, mask, valid, {"rot90": k, "flip": flip})``.
    """
    k = int(torch.randint(0, 4, (1,), generator=generator))
    flip = int(torch.randint(0, 2, (1,), generator=generator))

    def apply(x: Tensor) -> Tensor:
        x = torch.rot90(x, k, dims=(-2, -1)) if k else x
        return torch.flip(x, dims=(-1,)) if flip else x

    return (apply(image), None if mask is None else apply(mask), apply(valid), {"rot90": k, "flip": flip})
