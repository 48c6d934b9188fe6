"""SPEX's multi-scale aggregation module (MSAM).

Every pyramid level is resized to one grid (1/16 of the input by default), the levels are
concatenated along channels and fused into a single map; the map flattened row-major gives
the visual tokens.

Two forms are selectable:

* ``"paper"`` — as the SPEX paper describes it: bilinear resize (``align_corners=False``),
  concatenation in pyramid order, ``3×3 conv → ReLU → 1×1 conv → ReLU``.
* ``"released"`` — as the released SPEX code (``FeatureAggregator`` in
  ``llava/model/multimodal_encoder/modeling_clip.py`` of MiliLab/SPEX) does it: bilinear
  resize with ``align_corners=True``, the target level (1/16) concatenated *first*, then the
  other levels in pyramid order (1/4, 1/8, 1/32), ``1×1 conv → GroupNorm(16) → GELU →
  Dropout(0.5)``.

In both forms the fusing layers are an ``nn.Sequential`` named ``fuse_all``, the attribute
name of the released code, so the released weights (keys ``…feat_aggregator.fuse_all.*``
under the released ``vision_tower.vision_tower.vision_model``) load after stripping the
prefix up to ``feat_aggregator.``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rsvlm.contracts import FusedFeatures, Fusion, check_pyramid, check_token_pool


class MSAM(Fusion):
    """Pyramid maps ``[B×D_i×H/r_i×W/r_i]`` → :class:`FusedFeatures` with
    ``map: B×out_channels×h×w`` and ``tokens: B×(h·w)×out_channels`` (``h×w`` = the input
    size / ``target_reduction``; ``⌈h/p⌉·⌈w/p⌉`` tokens with ``token_pool=p``).

    Args:
        in_channels: D_i of each pyramid level, in pyramid order (an encoder's ``channels``).
        in_reductions: r_i of each level (an encoder's ``reductions``), increasing.
        out_channels: D of the fused map and tokens (1024 in SPEX).
        form: ``"paper"`` or ``"released"`` (see the module docstring).
        target_reduction: stride of the fused grid w.r.t. the image (16 in SPEX). The grid is
            the size of the level with that reduction, or, when none has it, level 0's size
            × r_0 / target_reduction (rounded down, at least 1). ``"released"`` needs a level
            with that reduction, since that level goes first.
        dropout: dropout probability after GELU (``"released"`` only; the paper form has none).
        num_groups: GroupNorm groups (``"released"`` only); must divide ``out_channels``.
        token_pool: visual tokens are the map average-pooled by this factor (1, the paper:
            one token per map cell; 2 keeps the decoder's map and gives the LLM a quarter of
            the tokens).
    """

    def __init__(
        self,
        in_channels: list[int],
        in_reductions: list[int] = [4, 8, 16, 32],
        out_channels: int = 1024,
        form: Literal["paper", "released"] = "paper",
        target_reduction: int = 16,
        dropout: float = 0.5,
        num_groups: int = 16,
        token_pool: int = 1,
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        in_reductions = list(in_reductions)
        if len(in_channels) != len(in_reductions):
            raise ValueError(
                f"MSAM: in_channels has {len(in_channels)} levels ({in_channels}) but in_reductions has "
                f"{len(in_reductions)} ({in_reductions}); give one reduction per level"
            )
        if not in_channels:
            raise ValueError("MSAM: in_channels is empty; give the channel count of every pyramid level")
        if form not in ("paper", "released"):
            raise ValueError(f"MSAM: form must be 'paper' or 'released', got {form!r}")
        self.in_channels = in_channels
        self.in_reductions = in_reductions
        self.out_channels = out_channels
        self.out_reduction = target_reduction
        self.form = form
        self.token_pool = check_token_pool("MSAM", token_pool)
        # The level already on the target grid, if any; "released" concatenates it first.
        self.target_level = in_reductions.index(target_reduction) if target_reduction in in_reductions else None

        total = sum(in_channels)
        if form == "paper":
            self.concat_order = list(range(len(in_channels)))
            self.fuse_all = nn.Sequential(
                nn.Conv2d(total, out_channels, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(out_channels, out_channels, kernel_size=1),
                nn.ReLU(),
            )
        else:
            if self.target_level is None:
                raise ValueError(
                    f"MSAM(form='released'): no level has reduction {target_reduction} "
                    f"(in_reductions={in_reductions}); the released form concatenates that level first"
                )
            if out_channels % num_groups:
                raise ValueError(f"MSAM: num_groups={num_groups} must divide out_channels={out_channels} for GroupNorm")
            rest = [i for i in range(len(in_channels)) if i != self.target_level]
            self.concat_order = [self.target_level, *rest]
            self.fuse_all = nn.Sequential(
                nn.Conv2d(total, out_channels, kernel_size=1),
                nn.GroupNorm(num_groups, out_channels),
                nn.GELU(),
                nn.Dropout(dropout),
            )

    def target_size(self, features: list[torch.Tensor]) -> tuple[int, int]:
        """``(h, w)`` of the fused grid for these pyramid maps."""
        if self.target_level is not None:
            h, w = features[self.target_level].shape[-2:]
            return int(h), int(w)
        h0, w0 = features[0].shape[-2:]
        scale = self.in_reductions[0]
        return (
            max(1, int(h0) * scale // self.out_reduction),
            max(1, int(w0) * scale // self.out_reduction),
        )

    def forward(self, features: list[torch.Tensor]) -> FusedFeatures:
        """Fuse ``features`` (level i: ``B×in_channels[i]×h_i×w_i``) into ``B×out_channels×h×w``
        and its tokens ``B×N×out_channels``."""
        features = list(features)
        check_pyramid("MSAM", features, self.in_channels)
        size = self.target_size(features)
        align_corners = self.form == "released"
        resized = [
            feat
            if tuple(feat.shape[-2:]) == size
            else F.interpolate(feat, size=size, mode="bilinear", align_corners=align_corners)
            for feat in features
        ]
        fused = self.fuse_all(torch.cat([resized[i] for i in self.concat_order], dim=1))
        return FusedFeatures.from_map(fused, self.token_pool)
