"""Projector from visual tokens to the LLM width.

LLaVA's ``mlp2x_gelu`` projector: ``Linear → GELU → Linear``, applied token by token, optionally
after adding a fixed 2-D sin-cos position embedding to the tokens (as Qwen-VL's connector adds 2-D
absolute positions), for encoders whose features carry little of where they lie.
"""

from __future__ import annotations

import torch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import nn


class MLPProjector(nn.Module):
    """Visual tokens ``B×N×D`` → LLM-width tokens ``B×N×D_llm``.

    Args:
        in_dim: D, the width of the visual tokens (a fusion module's ``out_channels``).
        out_dim: D_llm, the LLM's hidden size.
        hidden_dim: width between the two layers; ``None`` uses ``out_dim`` as LLaVA does.
        checkpoint: a weight file of the projector (``rsvlm convert llava`` writes one).
        freeze: no gradients into the projector.
        position_grid: ``[h, w]`` of the token grid (row-major, ``N = h·w``): adds timm's fixed 2-D
            sin-cos embedding (MAE's; ``in_dim`` divisible by 4) to the tokens before the MLP, so the
            LLM can read each token's place on the image (a box written as text needs it). Not
            for token counts that change (views, crops).

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
        position_grid: list[int] | None = None,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0 or (hidden_dim is not None and hidden_dim <= 0):
            raise ValueError(
                f"MLPProjector: in_dim, out_dim and hidden_dim must be positive, got "
                f"in_dim={in_dim}, out_dim={out_dim}, hidden_dim={hidden_dim}"
            )
        if position_grid is not None and (len(position_grid) != 2 or min(position_grid) <= 0 or in_dim % 4):
            raise ValueError(
                f"MLPProjector.position_grid must be [h, w] of positive sizes with in_dim divisible by 4, "
                f"got position_grid={position_grid}, in_dim={in_dim}"
            )
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.position_grid = None if position_grid is None else [int(n) for n in position_grid]
        # A buffer rebuilt from the arguments, never saved: checkpoints stay LLaVA's layout.
        position = None if position_grid is None else build_sincos2d_pos_embed(self.position_grid, dim=in_dim)
        self.register_buffer("position", position, persistent=False)
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
        """Project ``tokens`` (``B×N×in_dim``, or any ``…×in_dim``; ``B×N×in_dim`` with ``N = h·w``
        under ``position_grid``) to ``B×N×out_dim``."""
        if tokens.shape[-1] != self.in_dim:
            raise ValueError(
                f"MLPProjector: tokens have width {tokens.shape[-1]} (shape {tuple(tokens.shape)}), "
                f"expected in_dim={self.in_dim}"
            )
        if self.position is not None:
            if tokens.shape[-2] != self.position.shape[0]:
                raise ValueError(
                    f"MLPProjector: {tokens.shape[-2]} tokens, but position_grid={self.position_grid} "
                    f"has {self.position.shape[0]}"
                )
            tokens = tokens + self.position.to(tokens.dtype)
        return self.proj(tokens)
