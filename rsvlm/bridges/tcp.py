"""Token Compression Projector (TCP), SPEX's bridge from the LLM to the mask decoder.

Per sample, the last-layer hidden states at the selected positions (the response tokens: no
prompt, no padding) form a variable-length sequence. It is average-pooled to K tokens with the
bins of ``F.adaptive_avg_pool1d`` and projected to the decoder width, either by one linear layer
(the paper) or by an MLP (the released code: 1536 → 2048 → 512 → 256 with ReLU, its
``LLAMANECK.text_mlp``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from rsvlm.contracts import Bridge


def adaptive_pool_weights(positions: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Averaging weights that pool each sample's selected positions into ``num_tokens`` bins.

    Bin k of a sequence of n selected items spans items ``floor(k·n/K)`` to ``ceil((k+1)·n/K)``
    (exclusive), the bins of ``F.adaptive_avg_pool1d``; when n < K bins overlap and repeat items.

    Args:
        positions: ``B×L`` bool, the positions to pool.
        num_tokens: K.

    Returns:
        ``B×K×L`` float weights; each row sums to 1.

    Raises:
        ValueError: naming the batch indices that select no position.
    """
    positions = positions.bool()
    n = positions.sum(dim=1)  # B
    empty = torch.nonzero(n == 0).flatten().tolist()
    if empty:
        raise ValueError(f"TokenCompressionProjector: sample(s) {empty} have no positions to pool (empty response)")
    rank = positions.long().cumsum(dim=1) - 1  # B×L: index of each selected item in its sequence
    k = torch.arange(num_tokens, device=positions.device)
    start = (k[None, :] * n[:, None]) // num_tokens  # B×K
    end = ((k[None, :] + 1) * n[:, None] + num_tokens - 1) // num_tokens
    inside = (rank[:, None, :] >= start[..., None]) & (rank[:, None, :] < end[..., None]) & positions[:, None, :]
    weights = inside.float()
    return weights / weights.sum(dim=-1, keepdim=True)


class TokenCompressionProjector(Bridge):
    """Pool response hidden states to K tokens and project them to the decoder width.

    Args:
        in_dim: D_llm, width of the LLM hidden states.
        out_dim: D_dec, width of the decoder prompts (256 for SAM).
        num_tokens: K, prompt tokens per sample (4 in the paper; 1..8 tested).
        hidden_dims: widths of the MLP's hidden layers; ``[]`` is one linear layer (the paper),
            ``[2048, 512]`` with in_dim 1536 and out_dim 256 is the released code's MLP.
        activation: non-linearity between MLP layers (the released code uses ReLU).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 256,
        num_tokens: int = 4,
        hidden_dims: list[int] = [],
        activation: Literal["relu", "gelu"] = "relu",
    ) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"TokenCompressionProjector: num_tokens must be >= 1, got {num_tokens}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_tokens = num_tokens
        widths = [in_dim, *hidden_dims, out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(nn.ReLU() if activation == "relu" else nn.GELU())
            layers.append(nn.Linear(a, b))
        self.proj = nn.Sequential(*layers)

    def pool(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``B×L×D`` hidden states, ``B×L`` bool positions → ``B×K×D`` pooled tokens."""
        if hidden_states.shape[:2] != positions.shape:
            raise ValueError(
                f"TokenCompressionProjector: positions {tuple(positions.shape)} do not match hidden states "
                f"{tuple(hidden_states.shape[:2])} (B×L)"
            )
        weights = adaptive_pool_weights(positions, self.num_tokens)
        # Unselected positions get weight 0, but 0·NaN would still leak: zero them explicitly.
        # Averaging in float32 keeps bf16/fp16 hidden states from losing precision in the sum.
        masked = hidden_states.float().masked_fill(~positions.bool()[..., None], 0)
        return torch.einsum("bkl,bld->bkd", weights, masked)

    def forward(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``B×L×D_llm`` hidden states and ``B×L`` bool positions → ``B×K×out_dim`` prompts."""
        if hidden_states.shape[-1] != self.in_dim:
            raise ValueError(
                f"TokenCompressionProjector: hidden width {hidden_states.shape[-1]} != in_dim {self.in_dim}"
            )
        pooled = self.pool(hidden_states, positions)
        return self.proj(pooled.to(self.proj[0].weight.dtype))
