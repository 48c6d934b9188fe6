"""What :class:`~rsvlm.llm.causal_lm.CausalLM` returns: a teacher-forced pass and a generation."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LMOutput:
    """Result of :meth:`CausalLM.forward`; L' is the spliced length (L + N - 1 with one placeholder
    per sample replaced by N embeddings; the longest sample's length with several kinds and counts).

    Attributes:
        loss: mean cross-entropy of the next-token predictions on labelled positions (response
            tokens and the closing token); None without labels.
        logits: ``B×L'×V``; ``B×K×V`` at the positions ``logit_positions`` when that is set.
        hidden_states: ``B×L'×D`` last-layer hidden states.
        attention_mask: ``B×L'``.
        response_mask: ``B×L'`` bool, True on response tokens (None when not given).
        input_ids: ``B×L'`` token ids in spliced coordinates: each spliced embedding holds the id of
            the placeholder it replaced, so special tokens such as ``[SEG]`` are found with
            ``input_ids == seg_id`` at the positions of ``hidden_states``.
        labels: ``B×L'`` labels in spliced coordinates (-100 at spliced positions); None without labels.
        logit_positions: ``K`` positions (ascending) that ``logits`` cover, or None for all ``L'``.
            A pass with labels and ``CausalLM(loss_positions="targets")`` (the default) computes
            logits only where the next token has a target in some sample
            (:func:`rsvlm.llm.text_loss.predicting_positions`); ``loss_positions="all"`` keeps every one.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor | None
    input_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    logit_positions: torch.Tensor | None = None


@dataclass
class Generation:
    """Result of :meth:`CausalLM.generate`; T is the number of generated steps.

    Attributes:
        sequences: ``B×T`` new token ids (padding after a sample's end token).
        texts: decoded responses, without special tokens.
        hidden_states: ``B×T×D`` last-layer hidden states at the generated tokens' positions.
        mask: ``B×T`` bool, True up to and including the end token, False after.
        response_mask: ``B×T`` bool, ``mask`` without the end token (the response tokens, as in training).
    """

    sequences: torch.Tensor
    texts: list[str]
    hidden_states: torch.Tensor
    mask: torch.Tensor
    response_mask: torch.Tensor


def generation_masks(sequences: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which generated tokens count: ``B×T`` ids → (``mask``, ``response_mask``), both ``B×T`` bool.

    ``mask`` is True up to and including each row's first stop token and False after it (the
    padding generate() appends); ``response_mask`` is ``mask`` without the stop token.
    """
    is_stop = torch.isin(sequences, torch.tensor(stop_ids, device=sequences.device))
    after_stop = (is_stop.long().cumsum(dim=1) - is_stop.long()) > 0
    mask = ~after_stop
    return mask, mask & ~is_stop
