"""Splicing visual tokens into a token-embedding sequence at an image placeholder.

Each sample holds exactly one placeholder token. It is replaced by the N visual tokens, so every
sample grows by the same N-1 positions and a right-padded (or left-padded) batch stays padded on
the same side and aligned, without re-padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import repeat

IGNORE_INDEX = -100


@dataclass
class Spliced:
    """A spliced batch; L' = L + N - 1.

    Attributes:
        embeds: ``B×L'×D`` input embeddings.
        attention_mask: ``B×L'`` (1 on the visual tokens).
        labels: ``B×L'`` (-100 on the visual tokens) or None.
        response_mask: ``B×L'`` bool (False on the visual tokens) or None.
        image_positions: ``B`` index of the first visual token in each sample.
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    response_mask: torch.Tensor | None
    image_positions: torch.Tensor


def image_token_positions(
    input_ids: torch.Tensor, image_token_id: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Index of the single image token of each sample (``B×L`` → ``B``).

    Raises:
        ValueError: naming the samples that hold no or several image tokens, or whose image token
            is masked out as padding.
    """
    is_image = input_ids == image_token_id
    counts = is_image.sum(dim=1)
    bad = torch.nonzero(counts != 1).flatten().tolist()
    if bad:
        detail = ", ".join(f"sample {i} has {int(counts[i])}" for i in bad)
        raise ValueError(f"each sample needs exactly one image token (id {image_token_id}): {detail}")
    positions = is_image.int().argmax(dim=1)
    if attention_mask is not None:
        masked = torch.nonzero(attention_mask.gather(1, positions[:, None]).flatten() == 0).flatten().tolist()
        if masked:
            raise ValueError(f"the image token of sample(s) {masked} lies in the padding (attention_mask 0)")
    return positions


def splice_visual_tokens(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    image_token_id: int,
    visual_tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
) -> Spliced:
    """Replace each sample's image token by its visual tokens.

    Args:
        embeds: ``B×L×D`` token embeddings of ``input_ids``.
        input_ids: ``B×L`` token ids, exactly one ``image_token_id`` per sample.
        image_token_id: the placeholder id.
        visual_tokens: ``B×N×D`` visual tokens (cast to ``embeds.dtype``).
        attention_mask: ``B×L``.
        labels: ``B×L`` or None.
        response_mask: ``B×L`` bool or None.

    Returns:
        :class:`Spliced` with sequences of length ``L + N - 1``.
    """
    b, length, d = embeds.shape
    if visual_tokens.dim() != 3 or visual_tokens.shape[0] != b or visual_tokens.shape[2] != d:
        raise ValueError(f"visual_tokens must be B×N×D = {b}×N×{d} (the LLM width), got {tuple(visual_tokens.shape)}")
    n = visual_tokens.shape[1]
    pos = image_token_positions(input_ids, image_token_id, attention_mask)[:, None]  # B×1
    j = torch.arange(length + n - 1, device=embeds.device)[None, :]  # 1×L'
    is_visual = (j >= pos) & (j < pos + n)  # B×L'
    # Text position feeding output slot j: before the image j itself, after it shifted back by N-1.
    text_index = torch.where(j < pos, j, j - (n - 1)).clamp(0, length - 1)
    visual_index = (j - pos).clamp(0, n - 1)

    def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x.gather(1, repeat(index, "b l -> b l d", d=x.shape[-1]))

    out = torch.where(
        is_visual[..., None],
        take(visual_tokens.to(embeds.dtype), visual_index),
        take(embeds, text_index),
    )
    mask = torch.where(is_visual, torch.ones_like(attention_mask[:, :1]), attention_mask.gather(1, text_index))
    new_labels = None
    if labels is not None:
        new_labels = torch.where(is_visual, torch.full_like(labels[:, :1], IGNORE_INDEX), labels.gather(1, text_index))
    new_response = None
    if response_mask is not None:
        new_response = response_mask.gather(1, text_index) & ~is_visual
    return Spliced(out, mask, new_labels, new_response, pos.flatten())
