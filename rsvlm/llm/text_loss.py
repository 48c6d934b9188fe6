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
#: torch's strided log-softmax, about 11x slower with 3x the extra memory at a 150k-word vocabulary
#: and a sixth of the positions with targets (``benchmarks/text_loss.py``). The two agree to float32
#: rounding, not bit for bit. :class:`~rsvlm.llm.causal_lm.CausalLM` with ``targets`` also runs its
#: LM head only at :func:`predicting_positions`.
LossPositions = Literal["targets", "all"]
LOSS_POSITIONS = ("targets", "all")


def check_loss_settings(average: str, positions: str, owner: str = "") -> None:
    """A one-line ValueError naming the field (``owner.loss_average``, ``owner.loss_positions``)
    unless ``average`` is one of :data:`LOSS_AVERAGES` and ``positions`` one of :data:`LOSS_POSITIONS`."""
    prefix = f"{owner}." if owner else ""
    for field, value, choices in (
        ("loss_average", average, LOSS_AVERAGES),
        ("loss_positions", positions, LOSS_POSITIONS),
    ):
        if value not in choices:
            raise ValueError(f"{prefix}{field}: must be one of {', '.join(choices)}, got {value!r}")


def token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    average: LossAverage = "token",
    positions: LossPositions = "targets",
) -> torch.Tensor:
    """Cross-entropy of each position's logits against its own target, scored in float32.

    Args:
        logits: ``B×K×V`` (any float dtype).
        targets: ``B×K`` ids, :data:`IGNORE_INDEX` where no loss applies.
        average: ``token`` (sum over the batch's target tokens / their count) or ``sample`` (each
            sample's mean over its own target tokens, then the mean over samples that have any).
        positions: ``targets`` (only the ``N`` positions with a target) or ``all`` (see
            :data:`LossPositions`).

    Returns:
        A scalar (0 when no token has a target).
    """
    check_loss_settings(average, positions)
    valid = targets != IGNORE_INDEX  # B×K
    if positions == "targets":
        rows = logits[valid].float()  # N×V
        per_target = F.cross_entropy(rows, targets[valid], reduction="none")  # N
        per_token = torch.zeros(valid.shape, dtype=per_target.dtype, device=per_target.device)
        per_token = per_token.masked_scatter(valid, per_target)  # B×K, 0 where ignored
    else:
        per_token = F.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )  # B×K, 0 where ignored
    if average == "token":
        return per_token.sum() / valid.sum().clamp(min=1)
    counts = valid.sum(dim=1)
    has_target = counts > 0
    per_sample = per_token.sum(dim=1) / counts.clamp(min=1)
    return per_sample[has_target].sum() / has_target.sum().clamp(min=1)


def next_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    average: LossAverage = "token",
    positions: LossPositions = "targets",
) -> torch.Tensor:
    """Cross-entropy of position ``t`` predicting token ``t+1`` (:func:`token_loss` of the shifted pair).

    Args:
        logits: ``B×L×V``.
        labels: ``B×L`` target ids, :data:`IGNORE_INDEX` where no loss applies.
        average, positions: as :func:`token_loss`.
    """
    return token_loss(logits[:, :-1], labels[:, 1:], average, positions)


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions ``t`` (ascending, 1-D int64) whose next token has a target in some sample.

    An LM head run on these positions only (``logits_to_keep`` of Hugging Face's causal LMs) gives
    every logit the loss reads: ``token_loss(logits_kept, labels[:, t + 1])`` equals
    :func:`next_token_loss` of the full logits.

    Args:
        labels: ``B×L``, :data:`IGNORE_INDEX` where no loss applies.
    """
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
