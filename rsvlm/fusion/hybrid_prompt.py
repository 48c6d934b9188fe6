"""EarthGPT-X's hybrid signal mutual understanding: image tokens ⊗ dense prompt tokens → image tokens.

One block (pre-norm; the paper's equations with the residuals made explicit, a documented choice):

    V_sa = V + MHSA(LN1(V))                                # "Self-attention(V_img)"
    E_ff = E + FFN(LN2(E))                                 # "Feed-forward(E_prompt)"
    H_ca = V_sa + MHCA(Q=LN3(V_sa), K=V=LN4(E_ff))         # "Cross-attention(V_sa, E_ff)"
    Z    = H_ca + tanh(α)·E_ff                             # "+ E_ff", Flamingo's tanh gate, α₀ = gate_init
    Out  = Z + MHSA(LN5(Z));  Out = Out + FFN(LN6(Out))    # "Self-attention(H_ca + E_ff)" (+ FFN)

The cross-attention's output projection starts at zero and α at ``gate_init`` (0), so an untrained
block is the image-only transformer layer V → self-attention → self-attention + FFN: adding the
block to a model does not disturb its image path at the start (Flamingo's gated cross-attention).

A sample with no prompt (``prompt_valid`` False) skips the cross-attention and gate terms
(H_ca = V_sa, Z = H_ca), so it sees exactly the image-only path whatever the weights have learned.
``depth`` > 1 stacks blocks; block i+1 reads block i's ``Out`` as V and its ``E_ff`` as E.

Shapes: B batch, N tokens (the image's token grid; the prompt tokens share it), D = ``dim``.
"""

from __future__ import annotations

import torch
from torch import nn


def ffn(dim: int, mlp_ratio: float) -> nn.Sequential:
    """``Linear(D → r·D)``, GELU, ``Linear(r·D → D)``: the transformer MLP."""
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def attend(attention: nn.MultiheadAttention, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``attention(query, context, context)`` without the weights: ``B×N_q×D``."""
    return attention(query, context, context, need_weights=False)[0]


class HybridPromptBlock(nn.Module):
    """One hybrid block: ``(V, E)`` both ``B×N×D`` → ``(Out, E_ff)`` both ``B×N×D`` (module docstring).

    Args:
        dim: D, the token width.
        heads: attention heads of the three attentions; ``dim`` must be a multiple.
        mlp_ratio: hidden width of both FFNs, as a multiple of D.
        gate_init: α at the start; 0 closes the ``tanh(α)·E_ff`` path.
    """

    def __init__(self, dim: int, heads: int = 16, mlp_ratio: float = 4.0, gate_init: float = 0.0) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(6))  # LN1 … LN6 of the equations
        self.image_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.prompt_ffn = ffn(dim, mlp_ratio)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.hybrid_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out_ffn = ffn(dim, mlp_ratio)
        # zero output projection: an untrained block adds nothing from the prompts (image-only start)
        nn.init.zeros_(self.cross_attn.out_proj.weight)
        nn.init.zeros_(self.cross_attn.out_proj.bias)

    def forward(
        self, image: torch.Tensor, prompt: torch.Tensor, prompt_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` V and ``prompt`` E ``B×N×D``, ``prompt_valid`` ``B`` bool → (Out, E_ff), ``B×N×D`` each."""
        ln1, ln2, ln3, ln4, ln5, ln6 = self.norms
        image_sa = image + attend(self.image_attn, ln1(image), ln1(image))
        prompt_ff = prompt + self.prompt_ffn(ln2(prompt))
        cross = attend(self.cross_attn, ln3(image_sa), ln4(prompt_ff))
        mixed = image_sa + cross + torch.tanh(self.gate) * prompt_ff
        # where, not a product with 0: an unprompted sample gets V_sa bit for bit, NaN-proof
        mixed = torch.where(prompt_valid[:, None, None], mixed, image_sa)
        out = mixed + attend(self.hybrid_attn, ln5(mixed), ln5(mixed))
        return out + self.out_ffn(ln6(out)), prompt_ff


class HybridPromptFusion(nn.Module):
    """Image tokens V and dense prompt tokens E, both ``B×N×D`` → fused image tokens ``B×N×D``.

    E comes from :class:`~rsvlm.prompts.spatial.SpatialAwarePromptEncoder` on the same token grid
    as V (token i of both is the same patch); the output replaces V before the projector.

    Args:
        dim: D, the width of V and E (the fusion's ``out_channels`` = the SAE's ``out_dim``).
        heads: attention heads; ``dim`` must be a multiple.
        mlp_ratio: FFN hidden width as a multiple of D.
        depth: stacked blocks (>= 1).
        gate_init: α of each block at the start (0: the ``tanh(α)·E_ff`` term starts closed).
    """

    #: The fusion adds no tokens to the image's (dense mode: the output has V's N tokens).
    extra_tokens: int = 0

    def __init__(
        self, dim: int, heads: int = 16, mlp_ratio: float = 4.0, depth: int = 1, gate_init: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"HybridPromptFusion: depth must be >= 1, got {depth}")
        if heads < 1 or dim % heads:
            raise ValueError(f"HybridPromptFusion: dim={dim} must be a multiple of heads, got heads={heads}")
        if mlp_ratio <= 0:
            raise ValueError(f"HybridPromptFusion: mlp_ratio must be > 0, got {mlp_ratio}")
        self.dim = dim
        self.blocks = nn.ModuleList(HybridPromptBlock(dim, heads, mlp_ratio, gate_init) for _ in range(depth))

    def forward(
        self, image: torch.Tensor, prompt: torch.Tensor, prompt_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fuse the prompt tokens into the image tokens.

        Args:
            image: V, ``B×N×D`` image tokens.
            prompt: E, ``B×N×D`` prompt tokens on the same grid.
            prompt_valid: ``B`` bool, the samples that have a prompt (e.g. ``prompts.valid.any(1)``);
                the others take the image-only path. None: every sample has one.

        Returns:
            ``B×N×D`` fused image tokens.
        """
        check_inputs(self.dim, image, prompt)
        if prompt_valid is None:
            prompt_valid = torch.ones(image.shape[0], dtype=torch.bool, device=image.device)
        elif tuple(prompt_valid.shape) != (image.shape[0],):
            raise ValueError(
                f"HybridPromptFusion: prompt_valid must have shape ({image.shape[0]},), got {tuple(prompt_valid.shape)}"
            )
        prompt_valid = prompt_valid.to(device=image.device, dtype=torch.bool)
        for block in self.blocks:
            image, prompt = block(image, prompt, prompt_valid)
        return image


def check_inputs(dim: int, image: torch.Tensor, prompt: torch.Tensor) -> None:
    """Raise a one-line ValueError naming the field unless V is ``B×N×dim`` and E has V's shape."""
    if image.ndim != 3 or image.shape[2] != dim:
        raise ValueError(f"HybridPromptFusion: image must be B×N×{dim} (dim={dim}), got shape {tuple(image.shape)}")
    if prompt.shape != image.shape:
        raise ValueError(
            f"HybridPromptFusion: prompt must have the image's shape {tuple(image.shape)} (the same token grid), "
            f"got {tuple(prompt.shape)}"
        )
