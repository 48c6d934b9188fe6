"""The contracts between rsvlm's kinds of component.

Every component is an ``nn.Module`` whose constructor takes plain typed arguments, so that
jsonargparse can build it from ``class_path``/``init_args``. The base classes here declare
what each kind promises to its neighbours (widths, strides) so that a model can check the
wiring once, at assembly, and name both components when they disagree.

Shapes: B batch, C bands, H×W pixels, D widths, L text tokens, K prompt tokens, M visual-prompt
slots, P vertices of a free-form stroke.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class RsvlmError(Exception):
    """Base of rsvlm's own errors: bad input or configuration that a user can fix.

    Its message names the file and the field and says what was expected; the ``rsvlm`` command
    prints it as one line (no traceback) and exits with status 2.
    """


class MissingFileError(RsvlmError, FileNotFoundError):
    """A file or folder rsvlm was told to read is not there (the message names it and, where it
    helps, what to put there)."""


class OutputExistsError(RsvlmError, FileExistsError):
    """An output rsvlm would write is already there (or is an input): nothing is replaced unless
    asked (the message names the file and how to ask)."""


class ContractError(RsvlmError, ValueError):
    """Two neighbouring components disagree on a width, stride or band count."""


@dataclass
class FusedFeatures:
    """Output of a fusion module.

    Attributes:
        map: ``B×D×h×w`` fused feature map (fed to a mask decoder).
        tokens: ``B×N×D`` visual tokens, the map flattened row-major (N = h·w), or the map
            average-pooled by ``p`` first (N = ⌈h/p⌉·⌈w/p⌉), fed to a projector and then the LLM.
    """

    map: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def from_map(cls, fused: torch.Tensor, token_pool: int = 1) -> FusedFeatures:
        """The map ``B×D×h×w`` and its tokens ``B×N×D``, one per ``token_pool``×``token_pool``
        block of cells (``ceil_mode``: a partial block at the edge is a token of its own)."""
        pooled = fused if token_pool == 1 else F.avg_pool2d(fused, token_pool, ceil_mode=True)
        return cls(map=fused, tokens=rearrange(pooled, "b d h w -> b (h w) d"))


def check_token_pool(owner: str, token_pool: int) -> int:
    """``token_pool`` if it is a valid pooling factor for :meth:`FusedFeatures.from_map`."""
    if token_pool < 1:
        raise ValueError(f"{owner}: token_pool must be >= 1, got {token_pool}")
    return token_pool


#: Kinds of visual prompt, as stored in :attr:`VisualPromptBatch.kind`.
PROMPT_KINDS: dict[str, int] = {"empty": 0, "point": 1, "box": 2, "scribble": 3, "mask": 4}


@dataclass
class VisualPromptBatch:
    """Points, boxes and free-form prompts drawn on a batch of images, M slots per sample.

    Slot k of a sample is "Region k+1" in its text. Coordinates are pixels ``(x, y)`` of the
    model input (after resizing, padding and augmentation), x to the right, y down, with pixel
    centres at integer + 0.5 (SAM's convention: pixel (i, j) covers [j, j+1) × [i, i+1)).

    Attributes:
        kind: ``B×M`` int64, :data:`PROMPT_KINDS` (0 = empty slot).
        points: ``B×M×P×2`` float: one vertex for a point, the stroke's vertices for a scribble
            (``npoints`` of them, the rest zero), zero for boxes and masks.
        npoints: ``B×M`` int64, vertices used in ``points``.
        boxes: ``B×M×4`` float ``(x0, y0, x1, y1)``; for scribbles and masks their bounding box,
            for points the point repeated.
        labels: ``B×M`` int64, 1 for a foreground prompt and 0 for a background one (SAM's labels).
        masks: ``B×M×H×W`` bool for free-form masks (kind 4), or None when no slot is a mask.
        image_size: ``(H, W)`` of the frame the coordinates are in.
    """

    kind: torch.Tensor
    points: torch.Tensor
    npoints: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    image_size: tuple[int, int]
    masks: torch.Tensor | None = None

    @property
    def valid(self) -> torch.Tensor:
        """``B×M`` bool, the slots that hold a prompt."""
        return self.kind > 0

    @property
    def batch_size(self) -> int:
        return int(self.kind.shape[0])

    @property
    def slots(self) -> int:
        return int(self.kind.shape[1])

    def rows(self, index: torch.Tensor) -> VisualPromptBatch:
        """The prompts of samples ``index`` (``T`` int64, repeats allowed), in that order: one row
        per decoded target of a batch with several targets per sample."""
        picked = {k: getattr(self, k)[index] for k in ("kind", "points", "npoints", "boxes", "labels")}
        return replace(self, **picked, masks=None if self.masks is None else self.masks[index])

    def to(self, device: torch.device | str) -> VisualPromptBatch:
        """The same prompts on ``device``."""
        moved = {k: getattr(self, k).to(device) for k in ("kind", "points", "npoints", "boxes", "labels")}
        return replace(self, **moved, masks=None if self.masks is None else self.masks.to(device))


class PromptEncoder(nn.Module):
    """A :class:`VisualPromptBatch` (and the image's fused features) → embeddings for the LLM.

    Subclasses set ``out_dim`` (the LLM width), ``max_prompts`` (slots M they read), ``mode`` and
    ``placeholder`` (the token their embeddings replace):

    * ``"tokens"``: one group of embeddings per sample, spliced at a single ``placeholder``;
    * ``"inline"``: one group per prompt, spliced at the sample's k-th ``placeholder`` for slot k;
    * ``"dense"``: one embedding per visual token ``B×N×D_v``, merged into the image's tokens by a
      prompt fusion (:class:`rsvlm.fusion.hybrid_prompt.HybridPromptFusion`); no placeholder.
    """

    out_dim: int
    max_prompts: int
    mode: ClassVar[Literal["tokens", "inline", "dense"]]
    placeholder: str

    def forward(
        self, prompts: VisualPromptBatch, visual: FusedFeatures | None = None
    ) -> torch.Tensor | list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class Encoder(nn.Module):
    """Image ``B×C×H×W`` → list of maps ``B×D_i×H/r_i×W/r_i``.

    Subclasses set ``in_bands`` (C), ``channels`` (D_i per level) and ``reductions``
    (r_i per level, increasing).
    """

    in_bands: int
    channels: list[int]
    reductions: list[int]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class Fusion(nn.Module):
    """List of encoder maps → :class:`FusedFeatures`.

    Subclasses set ``in_channels`` (what they expect from the encoder), ``out_channels`` (D of
    the fused map and tokens) and ``out_reduction`` (stride of the fused map w.r.t. the image).
    """

    in_channels: list[int]
    out_channels: int
    out_reduction: int

    def forward(self, features: list[torch.Tensor]) -> FusedFeatures:  # pragma: no cover
        raise NotImplementedError


class Bridge(nn.Module):
    """LLM hidden states ``B×L×D_llm`` + a ``B×L`` bool mask of positions to use → prompt
    embeddings ``B×K×D_dec``.

    Subclasses set ``in_dim`` (D_llm), ``out_dim`` (D_dec) and ``num_tokens`` (K).
    """

    in_dim: int
    out_dim: int
    num_tokens: int

    def forward(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class MaskDecoder(nn.Module):
    """Feature map ``B×D_in×h×w`` + prompt embeddings ``B×K×D_dec`` → mask logits
    ``B×1×H×W`` at the requested image size.

    Subclasses set ``in_channels`` (D_in, the fused map's width) and ``prompt_dim`` (D_dec). One
    that also reads the user's visual prompts sets ``use_visual_prompts`` and takes them as
    ``forward(..., visual_prompts=VisualPromptBatch)``; one that reads the batch itself (the input
    image, the category: :class:`rsvlm.heads.index_prior.IndexPriorHead`) sets ``reads_batch`` and
    takes ``forward(..., batch=batch)``.
    """

    in_channels: int
    prompt_dim: int
    use_visual_prompts: bool = False
    reads_batch: bool = False

    def forward(
        self, feature_map: torch.Tensor, prompts: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def check_image_bands(owner: str, image: torch.Tensor, in_bands: int) -> None:
    """Raise :class:`ContractError` unless ``image`` is ``B×in_bands×H×W``; the message names
    ``owner`` and its ``in_bands`` field."""
    if image.ndim != 4 or image.shape[1] != in_bands:
        raise ContractError(
            f"{owner} expects images B×{in_bands}×H×W (in_bands={in_bands}), got shape {tuple(image.shape)}"
        )


def check_pyramid(owner: str, features: list[torch.Tensor], in_channels: list[int]) -> None:
    """Raise :class:`ContractError` unless ``features`` are ``len(in_channels)`` maps
    ``B×in_channels[i]×h_i×w_i``; the message names ``owner``, the level and its ``in_channels``."""
    expected = list(in_channels)
    hint = f"(in_channels={expected}; set {owner}.in_channels to the encoder's channels)"
    if len(features) != len(expected):
        raise ContractError(f"{owner} got {len(features)} feature maps, expected {len(expected)} {hint}")
    for level, (feature, width) in enumerate(zip(features, expected, strict=True)):
        if feature.ndim != 4:
            raise ContractError(f"{owner} level {level}: expected a B×D×h×w map, got shape {tuple(feature.shape)}")
        if feature.shape[1] != width:
            raise ContractError(f"{owner} level {level}: got {feature.shape[1]} channels, expected {width} {hint}")


def check_link(producer: nn.Module, produced: object, consumer: nn.Module, expected: object, what: str) -> None:
    """Raise :class:`ContractError` naming both components when ``produced != expected``."""
    a = list(produced) if isinstance(produced, (list, tuple)) else produced
    b = list(expected) if isinstance(expected, (list, tuple)) else expected
    if a != b:
        raise ContractError(
            f"{type(producer).__name__} gives {what}={a}, but {type(consumer).__name__} expects {what}={b}. "
            f"Set the {type(consumer).__name__} argument to {a} in the recipe."
        )
