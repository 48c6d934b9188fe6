"""Several mask targets per sample (GeoMag, GCG, EarthGPT-X pixel grounding): decode, pair, score.

SPEX decodes one mask per sample (``batch["mask"]`` ``B×1×H×W``). Instruction data can name
several targets in one answer, each with its group of ``[SEG]`` tokens; the batch then carries
``masks``, a list of B tensors ``T_b×H×W`` (``T_b`` may be 0 for a text-only sample), and a bridge
with ``targets()`` (:class:`rsvlm.bridges.seg_codebook.SegCodebookBridge`) turns the hidden states
into one prompt per target, ``T×1×D`` with the image each belongs to.

Teacher-forced, the reference text has exactly one group per reference mask. Generated, a sample
may end with fewer or more groups than references: they are paired in order, a reference without
a prediction is scored against an empty mask (logits :data:`EMPTY_LOGIT`), and predictions beyond
the references have nothing to be scored against and are left out (their count is returned).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

#: The logit of "no mask" for a reference target the model gave no prediction for.
EMPTY_LOGIT = -20.0


def decode_targets(
    bridge: nn.Module,
    decoder: nn.Module,
    decoder_map: torch.Tensor | list[torch.Tensor],
    hidden: torch.Tensor,
    positions: torch.Tensor,
    size: tuple[int, int],
    visual_prompts: Any = None,
    batch: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask logits ``T×1×H×W`` of every target group in ``positions`` (``B×L`` bool), and the
    image index ``T`` of each; each target is decoded against its own image's map(s), and with
    its own image's visual prompts (a :class:`~rsvlm.contracts.VisualPromptBatch`) when the decoder
    reads them (``use_visual_prompts``), and with its own image and category (``batch``'s rows)
    when the decoder reads the batch (``reads_batch``)."""
    tokens, index = bridge.targets(hidden, positions)
    if not len(index):  # no target in the batch (text-only tasks): nothing to decode
        return hidden.new_zeros(0, 1, *size), index
    if hasattr(decoder, "decode_targets"):
        return decoder.decode_targets(decoder_map, tokens, index, tuple(size)), index
    maps = [m[index] for m in decoder_map] if isinstance(decoder_map, list) else decoder_map[index]
    extra: dict[str, Any] = {}
    if getattr(decoder, "use_visual_prompts", False):
        extra["visual_prompts"] = (
            None if visual_prompts is None else visual_prompts.rows(index.to(visual_prompts.kind.device))
        )
    if getattr(decoder, "reads_batch", False) and batch is not None and "category" in batch:
        extra["batch"] = {"image": batch["image"][index], "category": [batch["category"][i] for i in index.tolist()]}
    return decoder(maps, tokens, tuple(size), **extra), index


def reference_targets(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference masks ``T×1×H×W`` (float) of ``batch["masks"]`` and their image index ``T``."""
    masks = batch["masks"]
    index = torch.repeat_interleave(
        torch.arange(len(masks), device=batch["image"].device),
        torch.tensor([len(m) for m in masks], device=batch["image"].device),
    )
    height, width = batch["image"].shape[-2:]
    if not len(index):
        return torch.zeros(0, 1, height, width, device=batch["image"].device), index
    return torch.cat([m.float() for m in masks])[:, None], index


def pair_targets(
    logits: torch.Tensor, index: torch.Tensor, batch: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Predicted and reference targets paired in order within each sample.

    Args:
        logits: ``T_pred×1×H×W`` predictions of images ``index`` (``T_pred``), samples in order.

    Returns:
        ``(logits T_ref×1×H×W, masks T_ref×1×H×W, image index T_ref, unpaired predictions)``:
        one row per reference target; a reference without a prediction gets :data:`EMPTY_LOGIT`.
    """
    masks, ref_index = reference_targets(batch)
    paired = torch.full_like(masks, EMPTY_LOGIT, dtype=logits.dtype)
    extra = 0
    for sample in range(len(batch["masks"])):
        pred_rows = torch.nonzero(index == sample).flatten()
        ref_rows = torch.nonzero(ref_index == sample).flatten()
        shared = min(len(pred_rows), len(ref_rows))
        paired[ref_rows[:shared]] = logits[pred_rows[:shared]]
        extra += len(pred_rows) - shared
    return paired, masks, ref_index, extra


def decoded_targets(
    bridge: nn.Module,
    decoder: nn.Module,
    decoder_map: torch.Tensor | list[torch.Tensor],
    hidden: torch.Tensor,
    positions: torch.Tensor,
    size: tuple[int, int],
    batch: Mapping[str, Any],
) -> dict[str, Any]:
    """What :meth:`rsvlm.models.vlm.VisionLanguageModel.decode_mask` returns for a bridge with
    ``targets()`` (see there): the targets, paired with the batch's ``masks`` when it has them,
    else united per sample into ``mask_logits`` ``B×1×H×W``."""
    logits, index = decode_targets(
        bridge, decoder, decoder_map, hidden, positions, size, visual_prompts=batch.get("visual_prompts"), batch=batch
    )
    out: dict[str, Any] = {"target_logits": logits, "target_index": index}
    if "masks" in batch:
        paired, masks, ref_index, extra = pair_targets(logits, index, batch)
        return {**out, "mask_logits": paired, "target_masks": masks, "scored_index": ref_index, "unpaired": extra}
    union = torch.full((hidden.shape[0], 1, *size), EMPTY_LOGIT, dtype=logits.dtype, device=logits.device)
    rows = index.view(-1, 1, 1, 1).expand_as(logits)
    union = union.scatter_reduce(0, rows, logits, "amax", include_self=True)
    return {**out, "mask_logits": union}
