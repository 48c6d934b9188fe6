"""The LLM's next-token cross-entropy, averaged over tokens or over samples."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from rsvlm.llm.chat import IGNORE_INDEX

#: ``token``: every target token weighs the same (LLaVA, LISA); ``sample``: each sample's tokens are
#: averaged first, so that a one-word answer weighs as much as a 30-token box list in a mixed batch.
LossAverage = Literal["token", "sample"]
LOSS_AVERAGES = ("token", "sample")


def check_loss_average(average: str, field: str = "loss_average") -> None:
    """A one-line ValueError naming ``field`` unless ``average`` is one of :data:`LOSS_AVERAGES`."""
    if average not in LOSS_AVERAGES:
        raise ValueError(f"{field}: must be one of {', '.join(LOSS_AVERAGES)}, got {average!r}")


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, average: LossAverage = "token") -> torch.Tensor:
    """Cross-entropy of position ``t`` predicting token ``t+1``.

    Args:
        logits: ``B×L×V``.
        labels: ``B×L`` target ids, :data:`IGNORE_INDEX` where no loss applies.
        average: ``token`` (sum over the batch's target tokens / their count) or ``sample`` (each
            sample's mean over its own target tokens, then the mean over samples that have any).

    Returns:
        A scalar (0 when no token has a target).
    """
    check_loss_average(average)
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    per_token = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none"
    )  # B×(L-1), 0 where ignored
    if average == "token":
        return per_token.sum() / valid.sum().clamp(min=1)
    counts = valid.sum(dim=1)
    has_target = counts > 0
    per_sample = per_token.sum(dim=1) / counts.clamp(min=1)
    return per_sample[has_target].sum() / has_target.sum().clamp(min=1)
