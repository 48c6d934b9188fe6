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

#: Which positions the cross-entropy is computed over (the loss is the same either way):
#: ``targets`` gathers the rows of the positions that have a target into one contiguous ``N×V``
#: block; ``all`` scores every position, as Hugging Face's loss does, through the ``B×V×(L-1)``
#: transpose, and zeroes the ignored ones: it copies every position's logits to float32 and takes
#: torch's strided log-softmax, about 10x slower with 3x the extra memory at a 150k-word vocabulary
#: and a sixth of the positions with targets (``benchmarks/text_loss.py``). The two agree to float32
#: rounding, not bit for bit.
LossPositions = Literal["targets", "all"]
LOSS_POSITIONS = ("targets", "all")


def check_loss_average(average: str, field: str = "loss_average") -> None:
    """A one-line ValueError naming ``field`` unless ``average`` is one of :data:`LOSS_AVERAGES`."""
    if average not in LOSS_AVERAGES:
        raise ValueError(f"{field}: must be one of {', '.join(LOSS_AVERAGES)}, got {average!r}")


def check_loss_positions(positions: str, field: str = "loss_positions") -> None:
    """A one-line ValueError naming ``field`` unless ``positions`` is one of :data:`LOSS_POSITIONS`."""
    if positions not in LOSS_POSITIONS:
        raise ValueError(f"{field}: must be one of {', '.join(LOSS_POSITIONS)}, got {positions!r}")


def next_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    average: LossAverage = "token",
    positions: LossPositions = "targets",
) -> torch.Tensor:
    """Cross-entropy of position ``t`` predicting token ``t+1``, scored in float32.

    Args:
        logits: ``B×L×V`` (any float dtype).
        labels: ``B×L`` target ids, :data:`IGNORE_INDEX` where no loss applies.
        average: ``token`` (sum over the batch's target tokens / their count) or ``sample`` (each
            sample's mean over its own target tokens, then the mean over samples that have any).
        positions: ``targets`` (only the ``N`` positions with a target) or ``all`` (see
            :data:`LossPositions`).

    Returns:
        A scalar (0 when no token has a target).
    """
    check_loss_average(average)
    check_loss_positions(positions)
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX  # B×(L-1)
    if positions == "targets":
        rows = logits[:, :-1][valid].float()  # N×V
        per_target = F.cross_entropy(rows, target[valid], reduction="none")  # N
        per_token = torch.zeros(valid.shape, dtype=per_target.dtype, device=per_target.device)
        per_token = per_token.masked_scatter(valid, per_target)  # B×(L-1), 0 where ignored
    else:
        per_token = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none"
        )  # B×(L-1), 0 where ignored
    if average == "token":
        return per_token.sum() / valid.sum().clamp(min=1)
    counts = valid.sum(dim=1)
    has_target = counts > 0
    per_sample = per_token.sum(dim=1) / counts.clamp(min=1)
    return per_sample[has_target].sum() / has_target.sum().clamp(min=1)
