"""GeoMag's Text Projection with β: N ``[SEG]`` states per target, projected and fused to one prompt.

Eq. 1 of GeoMag decodes a target from ``Σ_n β_n h_seg^n``; the Text Projection is a two-layer MLP
from the LLM width (4096) to SAM 2's (256). Here each of the N states is projected, then fused
(project-then-fuse, as PixelLM; the projection is non-linear, so the order is a documented choice):

    p_{t,n} = W₂·ReLU(W₁·h_{t,n} + b₁) + b₂,      fused_t = Σ_n β_n · p_{t,n}

β ∈ R^N is a parameter initialised at 1/N (``beta="learned"``, unconstrained, PixelLM's init) or
the constant 1/N (``"fixed"``). With N = 1 and β fixed it is :class:`~rsvlm.bridges.seg_token.SegTokenBridge`.

:meth:`SegCodebookBridge.forward` serves one target per sample (the batch contract of the
vision-language model: ``B×1×out_dim``); :meth:`SegCodebookBridge.targets` reads any number of
targets per sample, N consecutive positions each, for multi-target decoding
(:meth:`rsvlm.heads.sam2_pixel_decoder.Sam2PixelDecoder.decode_targets`).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import einsum, rearrange
from torch import nn

from rsvlm.bridges.seg_token import SegTokenBridge


class SegCodebookBridge(SegTokenBridge):
    """N ``[SEG]`` states per target → one fused prompt token (see the module docstring).

    Args:
        in_dim: D_llm.
        out_dim: D_dec (256 for SAM 2).
        num_tokens: N, ``[SEG]`` positions per target.
        hidden_dim: width of the hidden layer; default ``in_dim`` (as LISA).
        beta: ``"learned"`` or ``"fixed"`` (1/N).
        dropout: after the projection (GeoPixel's ``Dropout(0)``).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 256,
        num_tokens: int = 3,
        hidden_dim: int | None = None,
        beta: Literal["learned", "fixed"] = "learned",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dim, out_dim, num_tokens, hidden_dim)
        if beta not in ("learned", "fixed"):
            raise ValueError(f"SegCodebookBridge.beta must be 'learned' or 'fixed', got {beta!r}")
        if dropout:
            self.proj.append(nn.Dropout(dropout))
        self.out_tokens = 1  # N positions read, one fused prompt token per target
        init = torch.full((num_tokens,), 1.0 / num_tokens)
        if beta == "learned":
            self.beta = nn.Parameter(init)
        else:
            self.register_buffer("beta", init)

    def fuse(self, grouped: torch.Tensor) -> torch.Tensor:
        """``T×N×D_llm`` states → ``T×1×out_dim``: project each, sum with β."""
        return einsum(self.beta, self.proj(grouped), "n, t n d -> t d")[:, None]

    def forward(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``B×L×D_llm`` and ``B×L`` bool (N per sample) → ``B×1×out_dim``."""
        tokens, _ = self.targets(hidden_states, positions)
        if tokens.shape[0] != hidden_states.shape[0]:
            raise ValueError(
                f"SegCodebookBridge: expected one target ({self.num_tokens} [SEG] positions) per sample, "
                f"got {tokens.shape[0]} targets in {hidden_states.shape[0]} samples; use targets() for several"
            )
        return tokens

    def targets(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every target of every sample.

        Args:
            hidden_states: ``B×L×D_llm``.
            positions: ``B×L`` bool, N·M_b positions in sample b (its M_b targets, N each, in order).

        Returns:
            ``(tokens T×1×out_dim, image_index T)`` with T = Σ_b M_b, samples in order.

        Raises:
            ValueError: a sample's count is not a multiple of N (names the sample).
        """
        positions = self.checked_positions(hidden_states, positions)
        counts = positions.sum(dim=1)
        bad = torch.nonzero(counts % self.num_tokens).flatten().tolist()
        if bad:
            detail = ", ".join(f"sample {i} has {int(counts[i])}" for i in bad)
            raise ValueError(f"SegCodebookBridge: [SEG] positions must come in groups of {self.num_tokens}: {detail}")
        grouped = rearrange(hidden_states[positions], "(t n) d -> t n d", n=self.num_tokens)
        image_index = torch.repeat_interleave(
            torch.arange(len(counts), device=counts.device), torch.div(counts, self.num_tokens, rounding_mode="floor")
        )
        return self.fuse(grouped), image_index
