"""Prompt-guided cropping's heat map (GeoMag Eq. 4): gradient-weighted attention of the VLM.

    H = (1/N) Σ_heads ReLU(∂ℓ/∂A) ⊙ A

over the attention ``A`` of one LLM layer (the paper: the last), read at the query row(s) and the
image-token columns, averaged over heads and laid out on the visual token grid. ℓ is the
log-likelihood of the token the model would say next (``grad_sign="vicrop"``: ``−CE(z, argmax z)``,
ViCrop's tested sign, keeping the attention that raises the model's confidence) or the literal
cross-entropy of the paper's text (``"literal"``).

Implementation facts:

* attention weights exist only with eager attention, so the pass switches the LLM to it
  (``set_attn_implementation("eager")``) and back;
* gradients flow even under Lightning's ``inference_mode`` at validation / test
  (``torch.inference_mode(False)`` + ``enable_grad``), and only ``A`` is differentiated
  (``torch.autograd.grad``): no parameter receives a gradient;
* the image columns are where the spliced ``input_ids`` hold the image token, never an offset.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Run ``model`` (a transformers ``PreTrainedModel``) with eager attention inside the block."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


class GradAttentionMap:
    """Eq. 4's heat map (see the module docstring).

    Args:
        layer: the LLM layer whose attention is read (−1: the last, as the paper).
        query: ``"last"`` (the last prompt position, which predicts the answer) or ``"prompt_mean"``
            (the mean over the prompt's text rows).
        grad_sign: ``"vicrop"`` (ℓ = −CE) or ``"literal"`` (ℓ = CE).
    """

    def __init__(
        self,
        layer: int = -1,
        query: Literal["last", "prompt_mean"] = "last",
        grad_sign: Literal["vicrop", "literal"] = "vicrop",
    ) -> None:
        if query not in ("last", "prompt_mean") or grad_sign not in ("vicrop", "literal"):
            raise ValueError(
                f"GradAttentionMap: query last|prompt_mean, grad_sign vicrop|literal; got {query}, {grad_sign}"
            )
        self.layer, self.query, self.grad_sign = layer, query, grad_sign

    def __call__(
        self,
        llm: Any,
        prompt_ids: torch.Tensor,
        prompt_attention_mask: torch.Tensor,
        visual_tokens: torch.Tensor,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``B×g_h×g_w`` heat map over the visual tokens (``grid`` default: the square of N).

        Args:
            llm: a :class:`rsvlm.llm.causal_lm.CausalLM`.
            prompt_ids, prompt_attention_mask: ``B×P`` left-padded prompts (one image token each).
            visual_tokens: ``B×N×D_llm`` (the projector's output).
        """
        count = visual_tokens.shape[1]
        if grid is None:
            side = math.isqrt(count)
            if side * side != count:
                raise ValueError(f"GradAttentionMap: {count} visual tokens are not a square grid; pass grid=(h, w)")
            grid = (side, side)
        if grid[0] * grid[1] != count:
            raise ValueError(f"GradAttentionMap: grid {grid} does not hold {count} visual tokens")
        model = llm.model
        with torch.inference_mode(False), torch.enable_grad(), eager_attention(llm.base_model):
            spliced = llm.spliced_prompt(prompt_ids, prompt_attention_mask, visual_tokens.detach().clone())
            embeds = spliced.embeds.detach().requires_grad_(True)  # so A carries a graph
            out = model(
                inputs_embeds=embeds,
                attention_mask=spliced.attention_mask,
                output_attentions=True,
                use_cache=False,
                return_dict=True,
            )
            attention = out.attentions[self.layer]  # B×heads×L'×L'
            logits = out.logits[:, -1].float()  # left padding: the last column predicts the answer
            ce = F.cross_entropy(logits, logits.argmax(dim=-1), reduction="sum")
            (grad,) = torch.autograd.grad(-ce if self.grad_sign == "vicrop" else ce, attention)
        weighted = (grad.relu() * attention).detach()
        image = spliced.input_ids == llm.image_token_id  # B×L'
        if self.query == "last":
            rows = weighted[:, :, -1]  # B×heads×L'
        else:
            text = spliced.attention_mask.bool() & ~image
            rows = (weighted * text[:, None, :, None]).sum(2) / text.sum(1).clamp_min(1)[:, None, None]
        heat = rows.mean(dim=1)[image]  # heads averaged; boolean indexing keeps samples, then columns, in order
        return heat.view(prompt_ids.shape[0], *grid)
