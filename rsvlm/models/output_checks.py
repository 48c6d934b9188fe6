"""A guard on a model's logits outside training: a NaN or infinite logit is an error, not background.

``logits > 0`` is False for NaN, so a NaN mask logit would be scored, written and shown as
background without a word: that is how batched generation with long left padding on torch 2.3's
CPU kernels surfaced, as emptier masks rather than an error. :func:`check_finite_logits` raises
:class:`NonFiniteOutputError` naming the samples (file, tile window, flip) whose logits are not
finite; :func:`check_finite_masks` applies it to what
:meth:`rsvlm.models.vlm.VisionLanguageModel.decode_mask` returns. In training the loss carries the
NaN and :class:`rsvlm.training.callbacks.NanGuard` stops at it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from einops import reduce

from rsvlm.contracts import RsvlmError
from rsvlm.training.callbacks import sample_file

Decoded = TypeVar("Decoded", bound=Mapping[str, Any])


class NonFiniteOutputError(RsvlmError, RuntimeError):
    """A model produced NaN or infinite logits (names the samples, their files and windows)."""


def describe_sample(batch: Mapping[str, Any], index: int) -> str:
    """Sample ``index`` of a batch for messages: its file (``meta[i]["image"]``), tile window and
    flip where the meta has them, else its index."""
    meta = batch.get("meta")
    entry = meta[index] if isinstance(meta, Sequence) and index < len(meta) else None
    file = sample_file(entry)
    if file is None:
        return f"sample {index} of the batch"
    parts = [file]
    if entry.get("window") is not None:
        parts.append(f"window {list(entry['window'])}")
    if entry.get("flip") not in (None, "none"):
        parts.append(f"flip {entry['flip']}")
    return " ".join(parts)


def check_finite_logits(
    logits: torch.Tensor,
    batch: Mapping[str, Any],
    what: str = "mask logits",
    rows: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """``logits`` (``R×…``) unchanged when every value is finite, else :class:`NonFiniteOutputError`.

    Args:
        logits: one row per sample (``rows`` None) or per target of a sample.
        batch: the batch the rows came from (its ``meta`` names the files).
        what: the output's name in the message.
        rows: the batch index of each row (``R``), when rows are targets rather than samples.
    """
    if logits.numel() == 0:
        return logits
    finite = torch.isfinite(logits.detach())
    if bool(finite.all()):
        return logits
    bad_per_row = reduce((~finite).flatten(1).long(), "r n -> r", "sum").cpu()
    sample_of = [int(i) for i in rows] if rows is not None else list(range(logits.shape[0]))
    bad_samples = list(dict.fromkeys(sample_of[r] for r in torch.nonzero(bad_per_row).flatten().tolist()))
    named = "; ".join(describe_sample(batch, i) for i in bad_samples[:4])
    more = f" and {len(bad_samples) - 4} more" if len(bad_samples) > 4 else ""
    raise NonFiniteOutputError(
        f"{what} are NaN or infinite at {int(bad_per_row.sum())} of {logits.numel()} values "
        f"({named}{more}): the model's weights or these inputs hold NaN/inf, or half precision overflowed "
        "(try precision bf16-mixed or 32-true); nothing was scored or written for this batch"
    )


def check_finite_masks(decoded: Decoded, batch: Mapping[str, Any]) -> Decoded:
    """``decoded`` (``mask_logits`` ``R×1×H×W``, rows per sample or, with ``scored_index``, per
    paired target) unchanged when its mask logits are finite, else :class:`NonFiniteOutputError`."""
    check_finite_logits(decoded["mask_logits"], batch, rows=decoded.get("scored_index"))
    return decoded
