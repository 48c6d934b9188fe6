"""Splicing embeddings into a token-embedding sequence at placeholder tokens.

A placeholder is a special token (``<image>``, ``<region>``, ...) that stands for embeddings
computed elsewhere: visual tokens, visual-prompt tokens. Each placeholder kind has, per sample,
any number of occurrences, and each occurrence is replaced by its group of embeddings, in order
(the second ``<image>`` of a sample takes the second image's tokens). Samples grow by different
amounts, so the batch is re-padded on its padding side; with one placeholder per sample and the
same number of embeddings each (the single-image case), every sample grows by the same amount and
nothing is re-padded.

Embeddings for one kind are given as

* a ``B×N×D`` tensor: sample i has N rows;
* a list of B entries, one per sample: an ``n_i×D`` tensor (n_i rows), a ``c_i×n×D`` tensor (c_i
  groups of n rows) or a list of c_i ``n_ij×D`` tensors (one group per occurrence).

Rows given without groups are split evenly among the sample's occurrences of the placeholder
(one ``<image>``: all N rows; M ``<region>`` with M rows: one row each). A count that does not
fit is an error naming the placeholder and the sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100

#: The embeddings of one placeholder kind: ``B×N×D``, or per sample ``n_i×D`` / ``c_i×n×D`` / c_i × ``n_ij×D``.
PlaceholderEmbeds = torch.Tensor | Sequence[torch.Tensor | Sequence[torch.Tensor]]


@dataclass
class Spliced:
    """A spliced batch of length L' (``L + N - 1`` for one placeholder of N embeddings per sample).

    Attributes:
        embeds: ``B×L'×D`` input embeddings.
        attention_mask: ``B×L'`` (1 on the spliced embeddings, 0 on padding).
        labels: ``B×L'`` (-100 on the spliced embeddings and added padding) or None.
        response_mask: ``B×L'`` bool (False on the spliced embeddings and added padding) or None.
        input_ids: ``B×L'`` ids in spliced coordinates: the placeholder's id at each of its
            embeddings, ``pad_token_id`` at added padding.
        image_positions: ``B`` index of the first visual token of each sample
            (:func:`splice_visual_tokens` only).
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    response_mask: torch.Tensor | None
    input_ids: torch.Tensor
    image_positions: torch.Tensor | None = None


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


def _groups(name: str, value: PlaceholderEmbeds, sample: int, count: int, width: int) -> list[torch.Tensor]:
    """Sample ``sample``'s embeddings of placeholder ``name`` as ``count`` groups of ``n×D`` rows."""
    where = f"placeholder {name!r}, sample {sample}"
    entry = value[sample]
    if isinstance(entry, torch.Tensor) and entry.dim() == 2:
        rows = entry.shape[0]
        if (count == 0) != (rows == 0) or (count and rows % count):
            raise ValueError(
                f"{where}: the text holds {count} placeholder(s) but {rows} embeddings were given "
                f"(the rows are split evenly among the placeholders)"
            )
        groups = list(entry.split(rows // count)) if count else []
    else:
        groups = list(entry.unbind(0)) if isinstance(entry, torch.Tensor) else list(entry)
        if len(groups) != count:
            raise ValueError(f"{where}: the text holds {count} placeholder(s) but {len(groups)} groups were given")
    for group in groups:
        if group.dim() != 2 or group.shape[1] != width:
            raise ValueError(
                f"{where}: embeddings must be n×D with D={width} (the LLM width), got {tuple(group.shape)}"
            )
    return groups


def _padding_side(attention_mask: torch.Tensor) -> str:
    """``"left"`` when every row ends on a real token and some row starts with padding, else ``"right"``."""
    if bool((attention_mask[:, -1] != 0).all()) and bool((attention_mask[:, 0] == 0).any()):
        return "left"
    return "right"


def splice_placeholders(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    placeholders: Mapping[str, tuple[int, PlaceholderEmbeds]],
    labels: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
    pad_token_id: int = 0,
    padding_side: str | None = None,
) -> Spliced:
    """Replace every placeholder occurrence by its group of embeddings.

    Args:
        embeds: ``B×L×D`` token embeddings of ``input_ids``.
        input_ids: ``B×L`` token ids.
        attention_mask: ``B×L``; a placeholder in the padding is an error.
        placeholders: placeholder name → (its token id, its embeddings; see the module docstring).
            Embeddings are cast to ``embeds.dtype``.
        labels: ``B×L`` or None.
        response_mask: ``B×L`` bool or None.
        pad_token_id: id written into ``input_ids`` at padding added to shorter samples.
        padding_side: ``"right"`` or ``"left"``; None infers it from ``attention_mask``.

    Returns:
        :class:`Spliced` over the longest spliced sample.

    Raises:
        ValueError: naming the placeholder and sample whose count of placeholders and embeddings
            disagree, whose placeholder lies in the padding, or whose embeddings have the wrong width.
    """
    b, _, width = embeds.shape
    side = padding_side or _padding_side(attention_mask)
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    for name, (_, value) in placeholders.items():
        if len(value) != b:
            raise ValueError(f"placeholder {name!r}: embeddings for {len(value)} samples given, the batch has {b}")
    tensors = {"embeds": embeds, "input_ids": input_ids, "attention_mask": attention_mask}
    tensors.update({k: v for k, v in (("labels", labels), ("response_mask", response_mask)) if v is not None})
    rows = []
    for i in range(b):
        # Occurrences of every kind in text order, each with the group that replaces it.
        occurrences: list[tuple[int, int, torch.Tensor]] = []
        for name, (token_id, value) in placeholders.items():
            positions = torch.nonzero(input_ids[i] == token_id).flatten()
            padded = positions[attention_mask[i, positions] == 0].tolist()
            if padded:
                raise ValueError(f"placeholder {name!r}, sample {i}: lies in the padding at position(s) {padded}")
            groups = _groups(name, value, i, positions.numel(), width)
            occurrences += [(p, token_id, g.to(embeds.dtype)) for p, g in zip(positions.tolist(), groups)]
        occurrences.sort(key=lambda occurrence: occurrence[0])
        rows.append(_splice_row({k: v[i] for k, v in tensors.items()}, occurrences))
    return _pad_rows(rows, side, pad_token_id)


# What the spliced positions hold besides the embeddings (input_ids: the placeholder's id).
_SPLICED_FILL = {"attention_mask": 1, "labels": IGNORE_INDEX, "response_mask": False}
# What padding added to shorter samples holds (input_ids: pad_token_id).
_PAD_FILL = {"embeds": 0, "attention_mask": 0, "labels": IGNORE_INDEX, "response_mask": False}


def _splice_row(
    row: dict[str, torch.Tensor], occurrences: list[tuple[int, int, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """One sample's tensors (``L`` or ``L×D``) with each (position, id, ``n×D`` group) occurrence
    replaced by n entries: tensors of length L_i' = L + Σ(n - 1)."""
    pieces: dict[str, list[torch.Tensor]] = {k: [] for k in row}
    cursor = 0
    for position, token_id, group in occurrences:
        n = group.shape[0]
        for key, value in row.items():
            pieces[key].append(value[cursor:position])
            if key == "embeds":
                pieces[key].append(group)
            else:
                pieces[key].append(value.new_full((n,), token_id if key == "input_ids" else _SPLICED_FILL[key]))
        cursor = position + 1
    return {key: torch.cat([*pieces[key], value[cursor:]]) for key, value in row.items()}


def _pad_rows(rows: list[dict[str, torch.Tensor]], side: str, pad_token_id: int) -> Spliced:
    """Stack spliced rows of lengths L_i' into ``B×L'`` tensors, padding on ``side``."""
    longest = max(row["input_ids"].shape[0] for row in rows)
    fill = {**_PAD_FILL, "input_ids": pad_token_id}
    stacked = {}
    for key in rows[0]:
        padded = []
        for row in rows:
            value = row[key]
            extra = value.new_full((longest - value.shape[0], *value.shape[1:]), fill[key])
            padded.append(torch.cat([value, extra] if side == "right" else [extra, value]))
        stacked[key] = torch.stack(padded)
    return Spliced(
        embeds=stacked["embeds"],
        attention_mask=stacked["attention_mask"],
        labels=stacked.get("labels"),
        response_mask=stacked.get("response_mask"),
        input_ids=stacked["input_ids"],
    )


def splice_visual_tokens(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    image_token_id: int,
    visual_tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
) -> Spliced:
    """Replace each sample's single image token by its visual tokens (every sample grows by N - 1).

    Args:
        embeds: ``B×L×D`` token embeddings of ``input_ids``.
        input_ids: ``B×L`` token ids, exactly one ``image_token_id`` per sample.
        image_token_id: the placeholder id.
        visual_tokens: ``B×N×D`` visual tokens (cast to ``embeds.dtype``).
        attention_mask: ``B×L``.
        labels: ``B×L`` or None.
        response_mask: ``B×L`` bool or None.

    Returns:
        :class:`Spliced` with sequences of length ``L + N - 1`` and ``image_positions``.
    """
    b, _, d = embeds.shape
    if visual_tokens.dim() != 3 or visual_tokens.shape[0] != b or visual_tokens.shape[2] != d:
        raise ValueError(f"visual_tokens must be B×N×D = {b}×N×{d} (the LLM width), got {tuple(visual_tokens.shape)}")
    positions = image_token_positions(input_ids, image_token_id, attention_mask)
    spliced = splice_placeholders(
        embeds,
        input_ids,
        attention_mask,
        {"image": (image_token_id, visual_tokens)},
        labels,
        response_mask,
        padding_side="right",  # every sample grows alike: no padding is added on either side
    )
    spliced.image_positions = positions
    return spliced
