"""The ``[SEG]``-token bridge of LISA-style models.

The hidden states at the ``[SEG]`` positions (exactly K per sample, chosen by the caller) go
through Linear → ReLU → Linear to the decoder width, as LISA's ``text_hidden_fcs``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from rsvlm.contracts import Bridge


class SegTokenBridge(Bridge):
    """Hidden states at ``[SEG]`` positions → decoder prompts.

    Args:
        in_dim: D_llm, width of the LLM hidden states.
        out_dim: D_dec, width of the decoder prompts.
        num_tokens: K, ``[SEG]`` positions per sample.
        hidden_dim: width of the hidden layer; default ``in_dim`` (as LISA).
    """

    def __init__(self, in_dim: int, out_dim: int = 256, num_tokens: int = 1, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_tokens = num_tokens
        hidden = hidden_dim or in_dim
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def checked_positions(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``positions`` as bool, or a ``ValueError`` naming the bridge when they are not ``B×L`` of the states."""
        if hidden_states.shape[:2] != positions.shape:
            raise ValueError(
                f"{type(self).__name__}: positions {tuple(positions.shape)} do not match hidden states "
                f"{tuple(hidden_states.shape[:2])} (B×L)"
            )
        return positions.bool()

    def forward(self, hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``B×L×D_llm`` hidden states and ``B×L`` bool positions (K per sample) → ``B×K×out_dim``.

        The K tokens keep the order of their positions in the sequence.
        """
        positions = self.checked_positions(hidden_states, positions)
        counts = positions.sum(dim=1)
        bad = torch.nonzero(counts != self.num_tokens).flatten().tolist()
        if bad:
            detail = ", ".join(f"sample {i} has {int(counts[i])}" for i in bad)
            raise ValueError(f"SegTokenBridge: expected {self.num_tokens} [SEG] position(s) per sample: {detail}")
        # Boolean indexing walks samples in order and positions left to right.
        selected = rearrange(hidden_states[positions], "(b k) d -> b k d", k=self.num_tokens)
        return self.proj(selected)
