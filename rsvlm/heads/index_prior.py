"""Mask logits as a residual on the spectral-index prior: SPEX's APG coarse mask as a starting point.

SPEX's adaptive prompt generation (APG) describes where a category's spectral index exceeds
Otsu's threshold; the prompt is text, so the mask decoder can only learn to follow it. This head
adds that coarse mask to the wrapped decoder's logits instead,

    logits = decoder(map, prompts) + w_c · (2 · m_c − 1),

with ``m_c`` the image's coarse-mask channel of the sample's category (``ndwi_otsu`` for water,
:func:`rsvlm.data.transforms.with_index_channels`) and ``w_c`` a learned weight per category. An
untrained decoder (logits near 0) predicts exactly the index + Otsu baseline; training teaches the
decoder where to overrule it. A sample whose category has no channel gets the decoder's logits.

With ``softness`` τ > 0 the channel is the index's margin over Otsu's threshold instead
(``ndwi_margin``, index − threshold) and the prior ``w_c · tanh(margin / τ)``: as sure as the coarse
mask far from the cut, unsure near it, so a small residual moves the cut where the index is
ambiguous (a flood's muddy margin) and a large one is still needed to overrule a clear pixel. The
sign, hence the undecided decoder's prediction, is the baseline's either way.

Shapes: B batch, C image channels, H×W image size.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rsvlm.contracts import MaskDecoder
from rsvlm.data.indices import normalize_category


class IndexPriorHead(MaskDecoder):
    """A mask decoder whose logits are a residual on a coarse-mask channel of the input image.

    Args:
        decoder: the wrapped mask decoder (any :class:`~rsvlm.contracts.MaskDecoder`).
        channels: category → index of its coarse-mask channel in the model's input image
            (``{vegetation: 6, water: 7}`` for 4 bands, NDVI, NDWI, ``ndvi_otsu``, ``ndwi_otsu``), or
            of its margin channel (``ndwi_margin``) with ``softness``.
        weight: the starting value of every category's weight ``w_c`` (logit units: 2 gives the
            prior p = 0.88 where the decoder is undecided).
        learn_weight: train ``w_c`` (True) or keep it fixed.
        softness: 0 (the channels are coarse masks) or τ > 0, in index units (the channels are
            margins; the prior reaches 0.76 w at a margin of τ).
    """

    reads_batch: bool = True

    def __init__(
        self,
        decoder: MaskDecoder,
        channels: Mapping[str, int],
        weight: float = 2.0,
        learn_weight: bool = True,
        softness: float = 0.0,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("IndexPriorHead: channels is empty (give category → coarse-mask channel)")
        if not softness >= 0:
            raise ValueError(f"IndexPriorHead: softness must be ≥ 0 (field 'softness'), got {softness}")
        self.softness = float(softness)
        self.decoder = decoder
        self.categories = [normalize_category(c) for c in channels]
        self.register_buffer("channel_index", torch.tensor([int(i) for i in channels.values()]), persistent=False)
        self.weight = nn.Parameter(torch.full((len(channels),), float(weight)), requires_grad=learn_weight)
        self.in_channels, self.prompt_dim = decoder.in_channels, decoder.prompt_dim
        self.prior_on = True

    @contextmanager
    def without_prior(self) -> Iterator[None]:
        """Within it the head gives the wrapped decoder's logits alone, the residual the model learned
        on the index + Otsu prior (``rsvlm evaluate --without-prior``)."""
        previous, self.prior_on = self.prior_on, False
        try:
            yield
        finally:
            self.prior_on = previous

    @property
    def use_visual_prompts(self) -> bool:  # the wrapped decoder's switch, read and set through here
        return bool(getattr(self.decoder, "use_visual_prompts", False))

    @use_visual_prompts.setter
    def use_visual_prompts(self, value: bool) -> None:
        self.decoder.use_visual_prompts = value

    def prior(self, image: torch.Tensor, categories: Sequence[str | None]) -> torch.Tensor:
        """``B×1×H×W``: ``w_c · (2 m_c − 1)`` per sample, ``w_c · tanh(x_c / τ)`` with ``softness``
        (0 for a category without a channel).

        Args:
            image: ``B×C×H×W`` the model's input.
            categories: each sample's category (None or unknown: no prior).
        """
        if int(self.channel_index.max()) >= image.shape[1]:
            raise ValueError(
                f"IndexPriorHead: channel {int(self.channel_index.max())} asked for, but the image has "
                f"{image.shape[1]} channels (field 'channels')"
            )
        rows = [self.categories.index(c) if c in self.categories else -1 for c in map(_category, categories)]
        out = image.new_zeros(image.shape[0], 1, *image.shape[-2:])
        for b, k in enumerate(rows):
            if k >= 0:
                channel = image[b, self.channel_index[k]]
                sign = torch.tanh(channel / self.softness) if self.softness > 0 else 2.0 * channel - 1.0
                out[b, 0] = self.weight[k] * sign
        return out

    def forward(
        self,
        feature_map: torch.Tensor,
        prompts: torch.Tensor | Sequence[torch.Tensor],
        image_size: tuple[int, int],
        batch: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``B×1×H×W`` logits: the decoder's plus :meth:`prior` of ``batch["image"]`` and
        ``batch["category"]`` (the decoder's alone without them)."""
        logits = self.decoder(feature_map, prompts, image_size, **kwargs)
        if not self.prior_on or batch is None or "image" not in batch or "category" not in batch:
            return logits
        image = batch["image"]
        if tuple(image.shape[-2:]) != tuple(logits.shape[-2:]):
            raise ValueError(
                f"IndexPriorHead: image is {tuple(image.shape[-2:])} but the mask logits are {tuple(logits.shape[-2:])}"
            )
        return logits + self.prior(image, batch["category"]).to(logits.dtype)


def _category(name: str | None) -> str | None:
    try:
        return None if name is None else normalize_category(name)
    except (KeyError, ValueError):
        return None
