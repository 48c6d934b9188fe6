"""Views of a large input (SPHINX / EarthGPT-X): one global view plus an n×n grid of tiles.

A ``B×C×S×S`` input with ``layout="1+2x2"`` and ``view_size=s`` (S = 2s) becomes V = 5 views of
``s×s`` per sample: view 0 is the whole input shrunk to s×s, views 1…n² are the tiles in
row-major order (view 1 + i·n + j is the tile in row i, column j). The views of sample b are rows
``b·V … b·V+V−1`` of the ``(V·B)`` batch (``(b v)`` order), so each sample's views stay together
and :meth:`ViewTiler.merge` undoes :meth:`ViewTiler.split` with one reshape.

The global view of an image is shrunk by area averaging (or antialiased bicubic, as PIL resizes
SPHINX's views); that of a prompt canvas by adaptive **max** pooling, so that a 1-pixel stroke or
point survives the shrink at full strength instead of being averaged towards 0.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from rsvlm.contracts import ContractError

Layout = Literal["1", "1+2x2", "1+3x3"]
#: tiles per side of each layout (0: the global view only)
TILES: dict[str, int] = {"1": 0, "1+2x2": 2, "1+3x3": 3}


class ViewTiler(nn.Module):
    """Split inputs into views and merge the views' tokens back per sample.

    Args:
        layout: ``"1"`` (the global view only), ``"1+2x2"`` or ``"1+3x3"``.
        view_size: s, the side of every view; the input side S must be n·s for an n×n layout
            (any S for ``"1"``).
        view_tags: wrap each view's tokens in a learnable start and end token of its own
            (SPHINX-V's ``start_img``/``end_img``, one pair per view here), 2V extra tokens.
        dim: D, the token width (needed for the tags).
        global_resize: how an image's global view is shrunk: ``"area"`` (mean over each cell)
            or ``"bicubic"`` (antialiased). Prompt canvases always use max pooling.
    """

    def __init__(
        self,
        layout: Layout = "1+2x2",
        view_size: int = 224,
        view_tags: bool = False,
        dim: int | None = None,
        global_resize: Literal["area", "bicubic"] = "area",
    ) -> None:
        super().__init__()
        if layout not in TILES:
            raise ValueError(f"ViewTiler: layout must be one of {list(TILES)}, got {layout!r}")
        if view_size < 1:
            raise ValueError(f"ViewTiler: view_size must be >= 1, got {view_size}")
        if global_resize not in ("area", "bicubic"):
            raise ValueError(f"ViewTiler: global_resize must be 'area' or 'bicubic', got {global_resize!r}")
        if view_tags and (dim is None or dim < 1):
            raise ValueError(f"ViewTiler: view_tags=True needs the token width dim >= 1, got dim={dim}")
        self.layout = layout
        self.tiles = TILES[layout]
        self.num_views = 1 + self.tiles**2
        self.view_size = view_size
        self.view_tags = view_tags
        self.dim = dim
        self.global_resize = global_resize
        #: tokens merge adds per sample (the tags)
        self.extra_tokens = 2 * self.num_views if view_tags else 0
        self.parameter_free = not view_tags
        if view_tags:
            # small random start: distinct per view, so the LLM can tell the views apart from step 0
            self.start_tags = nn.Parameter(torch.randn(self.num_views, dim) * 0.02)
            self.end_tags = nn.Parameter(torch.randn(self.num_views, dim) * 0.02)

    @property
    def input_size(self) -> int:
        """The input side S that the tiles cover exactly (``view_size`` for ``"1"``)."""
        return self.view_size * max(self.tiles, 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ContractError(f"ViewTiler expects square inputs B×C×S×S, got shape {tuple(x.shape)}")
        if self.tiles and x.shape[-1] != self.input_size:
            raise ContractError(
                f"ViewTiler: layout {self.layout!r} with view_size={self.view_size} needs "
                f"{self.input_size}×{self.input_size} inputs, got {x.shape[-2]}×{x.shape[-1]}"
            )

    def global_view(self, x: torch.Tensor, canvas: bool = False) -> torch.Tensor:
        """``x`` ``B×C×S×S`` shrunk to ``B×C×s×s`` (max pooling for a prompt ``canvas``)."""
        s = self.view_size
        if x.shape[-1] == s:
            return x
        if canvas:
            return F.adaptive_max_pool2d(x, s)
        if self.global_resize == "area":
            return F.interpolate(x, size=(s, s), mode="area")
        return F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)

    def split(self, x: torch.Tensor, canvas: bool = False) -> torch.Tensor:
        """``x`` ``B×C×S×S`` → views ``(V·B)×C×s×s``, row ``b·V + v`` = view v of sample b."""
        self._check_input(x)
        views = [rearrange(self.global_view(x, canvas), "b c h w -> b 1 c h w")]
        if self.tiles:
            n = self.tiles
            views.append(rearrange(x, "b c (i h) (j w) -> b (i j) c h w", i=n, j=n))
        return rearrange(torch.cat(views, dim=1), "b v c h w -> (b v) c h w")

    def merge(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(V·B)×N×D`` of the views → ``B×(V·N [+2V])×D``: per sample, view 0's tokens
        then view 1's …, each view as ``[start_v, tokens…, end_v]`` when ``view_tags``."""
        if tokens.ndim != 3 or tokens.shape[0] % self.num_views:
            raise ContractError(
                f"ViewTiler.merge expects (V·B)×N×D tokens with V={self.num_views} views, got {tuple(tokens.shape)}"
            )
        if self.view_tags and tokens.shape[-1] != self.dim:
            raise ContractError(f"ViewTiler.merge: tokens are {tokens.shape[-1]} wide but the view tags dim={self.dim}")
        per_view = rearrange(tokens, "(b v) n d -> b v n d", v=self.num_views)
        if self.view_tags:
            batch = per_view.shape[0]
            start = self.start_tags.to(tokens.dtype).expand(batch, -1, -1).unsqueeze(2)
            end = self.end_tags.to(tokens.dtype).expand(batch, -1, -1).unsqueeze(2)
            per_view = torch.cat([start, per_view, end], dim=2)
        return rearrange(per_view, "b v n d -> b (v n) d")
