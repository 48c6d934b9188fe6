"""Projector from visual tokens to the LLM width.

LLaVA's ``mlp2x_gelu`` projector: ``Linear → GELU → Linear``, applied token by token.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Module):
    """Visual tokens ``B×N×D`` → LLM-width tokens ``B×N×D_llm``.

    Args:
        in_dim: D, the width of the visual tokens (a fusion module's ``out_channels``).
        out_dim: D_llm, the LLM's hidden size.
        hidden_dim: width between the two layers; ``None`` uses ``out_dim`` as LLaVA does.
        checkpoint: a weight file of the projector (``rsvlm convert llava`` writes one).
        freeze: no gradients into the projector.

    The submodule is an ``nn.Sequential`` named ``proj`` (``proj.0`` and ``proj.2`` are the
    linear layers), the same layout as LLaVA's ``mm_projector`` so its weights map by
    stripping the prefix.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int | None = None,
        checkpoint: str | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0 or (hidden_dim is not None and hidden_dim <= 0):
            raise ValueError(
                f"MLPProjector: in_dim, out_dim and hidden_dim must be positive, got "
                f"in_dim={in_dim}, out_dim={out_dim}, hidden_dim={hidden_dim}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.hidden_dim = out_dim if hidden_dim is None else hidden_dim
        self.proj = nn.Sequential(
            nn.Linear(in_dim, self.hidden_dim),
            nn.GELU(),
            nn.Linear(self.hidden_dim, out_dim),
        )
        if checkpoint is not None:
            self.load_projector(checkpoint)
        if freeze:
            self.requires_grad_(False)

    def load_projector(self, path: str) -> None:
        """Load ``proj.{0,2}.*`` from a weight file; LLaVA's names (``multi_modal_projector.linear_{1,2}``
        of llava-hf, ``mm_projector.{0,2}`` of the original repository) are mapped."""
        from rsvlm.io.state_dicts import check_state_dict, read_state_dict

        renames = {
            "multi_modal_projector.linear_1.": "proj.0.",
            "multi_modal_projector.linear_2.": "proj.2.",
            "model.mm_projector.": "proj.",
            "mm_projector.": "proj.",
        }
        state = {}
        for key, value in read_state_dict(path, "MLPProjector.checkpoint").items():
            for old, new in renames.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            state[key] = value
        check_state_dict(self.state_dict(), state, f"MLPProjector.checkpoint ({path})", "MLPProjector")
        self.load_state_dict(state)
        self.weights_source = str(path)  # trained-only checkpoints leave these out when frozen

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Project ``tokens`` (``B×N×in_dim``, or any ``…×in_dim``) to ``B×N×out_dim``."""
        if tokens.shape[-1] != self.in_dim:
            raise ValueError(
                f"MLPProjector: tokens have width {tokens.shape[-1]} (shape {tuple(tokens.shape)}), "
                f"expected in_dim={self.in_dim}"
            )
        return self.proj(tokens)
