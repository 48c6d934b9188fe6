"""What every encoder does with bands and frozen weights, in one place.

* **Bands.** An encoder takes ``in_bands`` input bands and names, in ``rgb_bands``, the three
  that hold R, G, B (``None`` when none does). When RGB weights are loaded, its stem kernel
  ``O×3×k×k`` becomes ``O×in_bands×k×k`` by :func:`expand_stem_weight`: the R, G, B filters are
  copied bit for bit, every other band gets ``extra_band_init``. timm's ``adapt_input_conv`` is
  not used because it rescales the RGB filters.
* **Freezing.** :class:`FreezableEncoder` freezes its pretrained part (the whole backbone, or
  the ViT of a pyramid whose new resampling layers keep training) and keeps that part in eval
  mode (frozen BatchNorm statistics, no dropout or drop path) whatever ``train()`` is called with.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from rsvlm.contracts import Encoder

ExtraBandInit = Literal["mean", "zeros"]
#: ``rgb_bands`` of an ordinary RGB image: nothing to widen.
PLAIN_RGB = [0, 1, 2]


def check_band_arguments(
    owner: str, in_bands: int, rgb_bands: list[int] | None, extra_band_init: ExtraBandInit = "mean"
) -> list[int] | None:
    """``rgb_bands`` as a list (or ``None``) once ``in_bands``, ``rgb_bands`` and
    ``extra_band_init`` are valid; otherwise a ``ValueError`` naming ``owner`` and the field."""
    if in_bands < 1:
        raise ValueError(f"{owner}: in_bands must be >= 1, got {in_bands}")
    if extra_band_init not in ("mean", "zeros"):
        raise ValueError(f"{owner}: extra_band_init must be 'mean' or 'zeros', got {extra_band_init!r}")
    if rgb_bands is None:
        return None
    bands = list(rgb_bands)
    if len(bands) != 3 or len(set(bands)) != 3 or not all(0 <= b < in_bands for b in bands):
        raise ValueError(
            f"{owner}: rgb_bands={bands} must be three distinct input-band indices in [0, {in_bands}) "
            f"giving the bands that hold R, G, B (in_bands={in_bands}); use rgb_bands=None when no band does"
        )
    return bands


def needs_widening(in_bands: int, rgb_bands: list[int] | None) -> bool:
    """Whether an RGB stem must be rebuilt: anything but three bands in R, G, B order."""
    return in_bands != 3 or rgb_bands != PLAIN_RGB


def expand_stem_weight(
    rgb_weight: torch.Tensor,
    in_bands: int,
    rgb_bands: list[int] | None,
    extra_band_init: ExtraBandInit = "mean",
) -> torch.Tensor:
    """Turn an RGB stem kernel ``O×3×k×k`` into a ``O×in_bands×k×k`` kernel.

    ``rgb_bands[j]`` is the input band that receives pretrained filter ``j`` (R, G, B in
    that order), copied bit-identically. Every other band gets:

    * ``"mean"`` — the mean of the R, G and B filters, unscaled. Each extra band then adds to
      the stem exactly what an average visible band adds, so for a flat image of value ``v``
      on all C bands the stem's pre-bias response is ``C/3`` times the RGB model's response
      to a flat RGB image of value ``v``, and a band that carries a grey copy of the visible
      bands looks to the network like one more visible band.
    * ``"zeros"`` — zero, so the extra bands start with no influence: the output equals the
      RGB model's output on the ``rgb_bands`` channels, whatever the extra bands hold.

    With ``rgb_bands=None`` (no band holds R, G, B) every band gets the mean filter;
    ``"zeros"`` is then refused since the stem would ignore the whole input.
    """
    if rgb_weight.ndim != 4 or rgb_weight.shape[1] != 3:
        raise ValueError(f"expand_stem_weight: expected an O×3×k×k RGB kernel, got shape {tuple(rgb_weight.shape)}")
    if extra_band_init not in ("mean", "zeros"):
        raise ValueError(f"extra_band_init must be 'mean' or 'zeros', got {extra_band_init!r}")
    if rgb_bands is None and extra_band_init == "zeros":
        raise ValueError(
            "extra_band_init='zeros' with rgb_bands=None would zero every band's stem filter; "
            "use extra_band_init='mean' or name the R, G, B bands in rgb_bands"
        )
    out_ch, _, kh, kw = rgb_weight.shape
    if extra_band_init == "mean":
        fill = rgb_weight.mean(dim=1, keepdim=True)
    else:
        fill = torch.zeros_like(rgb_weight[:, :1])
    weight = fill.expand(out_ch, in_bands, kh, kw).clone()
    for rgb_index, band in enumerate(rgb_bands or []):
        weight[:, band] = rgb_weight[:, rgb_index]
    return weight


@torch.no_grad()
def widen_stem_conv(
    conv: nn.Conv2d, in_bands: int, rgb_bands: list[int] | None, extra_band_init: ExtraBandInit = "mean"
) -> None:
    """Rebuild an RGB convolution in place for ``in_bands`` bands (:func:`expand_stem_weight`);
    its ``requires_grad`` stays as it was."""
    weight = expand_stem_weight(conv.weight.detach(), in_bands, rgb_bands, extra_band_init)
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    conv.in_channels = in_bands


class FreezableEncoder(Encoder):
    """An :class:`Encoder` whose pretrained part can be frozen: no gradients, and eval mode
    whatever ``train()`` is called with.

    Subclasses call :meth:`freeze_part` at the end of ``__init__`` with the attribute name of
    that part (``""`` for the whole encoder); ``frozen_part`` then holds that name.
    """

    frozen_part: str | None = None

    def freeze_part(self, name: str = "") -> None:
        """Freeze submodule ``name`` (``""``: the whole encoder) and put it in eval mode."""
        self.get_submodule(name).requires_grad_(False)
        self.frozen_part = name
        self.train(self.training)

    def train(self, mode: bool = True) -> FreezableEncoder:
        """Set train/eval mode; the frozen part stays in eval mode."""
        super().train(mode)
        if self.frozen_part is not None:
            # nn.Module's own train: the part may be this encoder, whose train() would recurse
            nn.Module.train(self.get_submodule(self.frozen_part), False)
        return self
