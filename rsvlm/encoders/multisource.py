"""EarthGPT-X's input path as one encoder: per-modality stems, then (optionally) the 1 global + n×n
views, then the shared encoder (spec §1.2 row 1, §1.3, §3.3).

    image B×C_max×S×S ─ MultiSourceStem(modality) ─> B×C'×S×S ─ [ViewTiler.split] ─> (V·B)×C'×s×s
        ─ encoder ─> level i: (V·B)×D_i×h_i×w_i ─ [stack the views] ─> B×D_i×(V·h_i)×w_i

**Stems.** Sample b goes through the stem of ``batch["modality"][b]``
(:data:`rsvlm.data.modalities.MODALITY_IDS`), with ``batch["band_valid"]`` checked when the batch
has it. A batch without ``modality`` (a plain image tensor, ``rsvlm summarize`` on the meta device,
the component tests) is read as all ``optical`` when the stem has that modality, else as all its
first modality. The stems are per-pixel maps without batch statistics, so a mixed batch gives what
each sample gives alone (as long as the encoder has no batch statistics either, e.g. frozen or in
eval mode).

**Views.** With ``views`` (a :class:`~rsvlm.fusion.views.ViewTiler`), the stem's output
``B×C'×S×S`` (S = n·s) is split into V = 1 + n² views ``s×s`` (global view first, then the tiles
row-major), all V·B views go through the encoder as one batch, and each level's maps of the V
views of a sample are stacked **top to bottom**: ``B×D_i×(V·h_i)×w_i``. Flattened row-major (as
:meth:`rsvlm.contracts.FusedFeatures.from_map` does), this map gives view 0's tokens, then view 1's,
…, each view row-major: exactly :meth:`ViewTiler.merge` of the per-view tokens. So the model's
fusion, projector and LLM see one token grid of V·h·w tokens per sample with nothing changed in
:class:`rsvlm.models.vlm.VisionLanguageModel`. What that asks of the rest of the model:

* the fusion must work cell by cell (e.g. :class:`~rsvlm.fusion.single_scale.SingleScaleFusion` at
  the level's own stride: a 1×1 conv, no resize, ``token_pool`` 1 or a divisor of h): a spatial
  kernel, a resize or a pooling window that spans two views mixes the bottom row of one view with
  the top row of the next;
* the fused map is no image-shaped map, so the mask decoder must read a ``mask_encoder`` of the
  image (EarthGPT-X's SAM), not the fusion map;
* view tags (``view_tags=True``) are tokens, not map cells, and are refused here;
* a dense prompt encoder (:class:`~rsvlm.prompts.spatial.SpatialAwarePromptEncoder` with
  :class:`~rsvlm.fusion.hybrid_prompt.HybridPromptFusion`) must give V·h·w tokens in the same order:
  the prompts drawn on an ``S×S`` canvas, ``ViewTiler.split(canvas, canvas=True)`` (max pooling
  for the global view, so thin strokes survive), ``encode_canvas`` per view and
  ``ViewTiler.merge``. The SAE does not do this yet (it draws one ``canvas_size`` canvas): until it
  does, a model with views and a dense prompt encoder fails in the hybrid fusion's shape check
  (``prompt must have the image's shape``).

The declared ``reductions`` are the encoder's, per view (stride w.r.t. the s×s view).

Shapes: B batch, C_max the most bands of any modality, C' the stem's ``out_bands`` (the encoder's
``in_bands``), S input side, s view side, V views, D_i / h_i×w_i width / size of level i per view.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange
from torch import nn

from rsvlm.contracts import ContractError, Encoder, check_image_bands
from rsvlm.data.modalities import MODALITY_IDS
from rsvlm.encoders.modality_stem import MultiSourceStem
from rsvlm.fusion.views import ViewTiler

#: Attributes copied from the encoder when it has them (a map encoder's width / stride).
OPTIONAL_ATTRIBUTES = ("out_channels", "reduction")


class MultiSourceEncoder(Encoder):
    """Mixed-modality image ``B×C_max×S×S`` + the batch's ``modality`` → the encoder's maps.

    Args:
        stem: the per-modality stems; its ``out_bands`` must be the encoder's ``in_bands``.
        encoder: the shared encoder, with ``in_bands``, ``channels`` and ``reductions`` (e.g.
            :class:`~rsvlm.encoders.mixed.MixedExpertEncoder`), or a mask encoder of one map with
            ``in_bands``, ``out_channels`` and ``reduction`` (e.g. a SAM ViT, so that it reads each
            sample's stem; no views then).
        views: split the input into views before the encoder (module docstring); ``None``: the
            encoder reads the whole input.

    Attributes:
        reads_batch: True: the model calls ``forward(image, batch)``.
        in_bands: ``stem.in_bands`` (C_max).
        channels, reductions: the encoder's (per view); also ``out_channels`` / ``reduction``
            when the encoder declares them.
        num_views: V (1 without views).
        image_size: the input side S the encoder (and views) need, when the encoder declares its
            ``image_size`` (``views.input_size`` with views); absent otherwise.
    """

    reads_batch = True

    def __init__(self, stem: MultiSourceStem, encoder: nn.Module, views: ViewTiler | None = None) -> None:
        super().__init__()
        # a mask encoder declares its one map (out_channels, reduction) instead of channels / reductions
        one_map = not hasattr(encoder, "channels") and all(hasattr(encoder, name) for name in OPTIONAL_ATTRIBUTES)
        required = ("in_bands",) if one_map else ("in_bands", "channels", "reductions")
        missing = [name for name in required if not hasattr(encoder, name)]
        if missing:
            raise ContractError(
                f"MultiSourceEncoder: field 'encoder' ({type(encoder).__name__}) declares no {missing}; "
                "it must be an rsvlm Encoder (or a mask encoder with out_channels and reduction)"
            )
        if one_map and views is not None:
            raise ContractError(
                f"MultiSourceEncoder: field 'views' is set, but {type(encoder).__name__} gives one map "
                "(a mask encoder); set views: null"
            )
        if stem.out_bands != encoder.in_bands:
            raise ContractError(
                f"MultiSourceEncoder: MultiSourceStem gives out_bands={stem.out_bands}, but "
                f"{type(encoder).__name__} expects in_bands={encoder.in_bands}. Set the stem's out_bands to "
                f"{encoder.in_bands} in the recipe."
            )
        self.stem = stem
        self.encoder = encoder
        self.views = views
        self.in_bands = stem.in_bands
        self.channels = [encoder.out_channels] if one_map else list(encoder.channels)
        self.reductions = [encoder.reduction] if one_map else list(encoder.reductions)
        for name in OPTIONAL_ATTRIBUTES:
            if hasattr(encoder, name):
                setattr(self, name, getattr(encoder, name))
        self.num_views = 1 if views is None else views.num_views
        inner_size = getattr(encoder, "image_size", None)
        if views is not None:
            self._check_views(views, inner_size)
        if inner_size is not None:
            self.image_size = inner_size if views is None else views.input_size
        names = list(stem.specs)
        #: the modality of every sample of a batch without ``modality``
        self.default_modality = "optical" if "optical" in names else names[0]

    def _check_views(self, views: ViewTiler, inner_size: int | None) -> None:
        if views.view_tags:
            raise ContractError(
                "MultiSourceEncoder: field 'views' has view_tags=True, but view tags are tokens that a feature "
                "map cannot hold; set view_tags: false"
            )
        if inner_size is not None and inner_size != views.view_size:
            raise ContractError(
                f"MultiSourceEncoder: ViewTiler gives {views.view_size}×{views.view_size} views (view_size), but "
                f"{type(self.encoder).__name__} expects image_size={inner_size}. Set view_size to {inner_size}."
            )

    def modality(self, image: torch.Tensor, batch: Mapping[str, Any] | None) -> torch.Tensor | None:
        """``batch["modality"]`` (``B`` long) on the image's device, or None without it."""
        modality = None if batch is None else batch.get("modality")
        if modality is None:
            return None
        modality = torch.as_tensor(modality, dtype=torch.long, device=image.device)
        if modality.shape != image.shape[:1]:
            raise ContractError(
                f"MultiSourceEncoder: batch field 'modality' must be B={image.shape[0]} ids, got shape "
                f"{tuple(modality.shape)}"
            )
        return modality

    def apply_stem(self, image: torch.Tensor, batch: Mapping[str, Any] | None = None) -> torch.Tensor:
        """``image`` ``B×C_max×S×S`` → ``B×out_bands×S×S``, each sample by its modality (module docstring)."""
        check_image_bands("MultiSourceEncoder", image, self.in_bands)
        modality = self.modality(image, batch)
        band_valid = None if batch is None else batch.get("band_valid")
        if modality is None and band_valid is None:
            # one modality for all: its map directly (no data-dependent grouping, so it runs on meta)
            name = self.default_modality
            return self.stem.maps[name](image[:, : len(self.stem.specs[name].bands)])
        if modality is None:
            modality = torch.full(image.shape[:1], MODALITY_IDS[self.default_modality], device=image.device)
        return self.stem(image, modality, band_valid)

    def forward(self, image: torch.Tensor, batch: Mapping[str, Any] | None = None) -> list[torch.Tensor]:
        """Stems, views, encoder.

        Args:
            image: ``B×C_max×S×S``, each sample's bands first, zero padding after.
            batch: the collated batch; reads ``modality`` (``B`` long) and ``band_valid``
                (``B×C_max`` bool) when present.

        Returns:
            The encoder's maps: level i ``B×D_i×h_i×w_i``, or with V views ``B×D_i×(V·h_i)×w_i``
            (the views stacked top to bottom, global view first).
        """
        x = self.apply_stem(image, batch)
        if self.views is None:
            return self.encoder(x)
        maps = self.encoder(self.views.split(x))
        return [rearrange(m, "(b v) d h w -> b d (v h) w", v=self.num_views) for m in maps]

    def extra_repr(self) -> str:
        return f"in_bands={self.in_bands}, num_views={self.num_views}, default_modality={self.default_modality!r}"
