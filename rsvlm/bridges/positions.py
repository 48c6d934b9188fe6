"""Which LLM hidden states a bridge reads.

A bridge turns hidden states ``B×L×D_llm`` into decoder prompts; *which* positions it reads is a
choice of the system, not of the bridge:

* :class:`ResponseTokens` — every response token (SPEX: TCP pools the description);
* :class:`SpecialToken` — the positions of a special token such as ``[SEG]`` (LISA, GeoPixel,
  PixelLM), either the state *at* the token (GeoPixel) or the state that *predicts* it (LISA:
  the hidden state one position before the token).

Positions are found in the LLM's spliced coordinates (after visual tokens replaced ``<image>``),
so that they index the hidden states directly. Each kind answers for the two ways a model runs:
teacher-forced (the reference response is in the input) and generated (the model wrote it).
"""

from __future__ import annotations

from typing import Any, Literal

import torch


class BridgePositions:
    """Base: ``B×L`` bool masks of the hidden states to read.

    Subclasses implement :meth:`teacher_forced` and :meth:`generated`; :meth:`bind` lets them
    look up what they need from the LLM (token ids) once the model is assembled, and
    :attr:`response_suffix` is text the model must learn to write after every response.
    """

    #: Text appended to every reference response (e.g. ``" [SEG]"``), or ``""``.
    response_suffix: str = ""

    def bind(self, llm: Any) -> None:
        """Resolve token ids with the LLM's tokenizer (nothing to do by default)."""

    def teacher_forced(self, output: Any) -> torch.Tensor:
        """Positions in a teacher-forced pass: ``output`` is the LLM's forward output
        (``input_ids`` / ``response_mask`` ``B×L'`` in spliced coordinates) → ``B×L'`` bool."""
        raise NotImplementedError

    def generated(self, generation: Any) -> torch.Tensor:
        """Positions among generated tokens: ``generation`` holds ``sequences``, ``mask`` and
        ``response_mask`` (``B×T``) → ``B×T`` bool."""
        raise NotImplementedError


class ResponseTokens(BridgePositions):
    """Every response token, without the closing token (SPEX's TCP pools these)."""

    def teacher_forced(self, output: Any) -> torch.Tensor:
        if output.response_mask is None:
            raise ValueError("ResponseTokens: the LLM output has no response_mask (no response in the batch)")
        return output.response_mask

    def generated(self, generation: Any) -> torch.Tensor:
        return generated_positions(generation.response_mask, generation.mask)


class SpecialToken(BridgePositions):
    """The positions of a special token, e.g. ``[SEG]``.

    Args:
        token: the special token (added to the tokenizer by the LLM's ``special_tokens``).
        offset: ``"at"``: the hidden state at the token (GeoPixel); ``"before"``: the state one
            position earlier, the one that predicts the token (LISA's ``seg_token_mask`` shift).
        count: how many times the token closes every reference response (K ``[SEG]`` tokens
            per target, PixelLM / GeoMag); ``0`` when the data already writes the tokens.
    """

    def __init__(self, token: str = "[SEG]", offset: Literal["at", "before"] = "at", count: int = 1) -> None:
        if offset not in ("at", "before"):
            raise ValueError(f"SpecialToken: offset must be 'at' or 'before', got {offset!r}")
        if count < 0:
            raise ValueError(f"SpecialToken: count must be >= 0, got {count}")
        self.token = token
        self.offset = offset
        self.count = count
        self.response_suffix = "".join(f" {token}" for _ in range(count))
        self.token_id: int | None = None

    def bind(self, llm: Any) -> None:
        self.token_id = special_token_id(llm.tokenizer, self.token, type(self).__name__)

    def _at(self, ids: torch.Tensor) -> torch.Tensor:
        if self.token_id is None:
            raise RuntimeError("SpecialToken: bind(llm) was not called (the model does it at assembly)")
        return ids == self.token_id

    def _shift(self, at: torch.Tensor) -> torch.Tensor:
        return shifted(at, self.offset)

    def teacher_forced(self, output: Any) -> torch.Tensor:
        if getattr(output, "input_ids", None) is None:
            raise ValueError("SpecialToken: the LLM output carries no spliced input_ids")
        return self._shift(self._at(output.input_ids))

    def generated(self, generation: Any) -> torch.Tensor:
        """The last ``count`` (at least 1) generated occurrences of the token; a sample that
        generated fewer falls back to its last ``count`` generated tokens (the closing token for
        one), so that a bridge that needs exactly K positions always gets them."""
        k = max(self.count, 1)
        at = self._at(generation.sequences) & generation.mask
        found = self._shift(_last(at, k))
        fallback = _last(generation.mask, k)
        enough = (at.sum(dim=1) >= k)[:, None]
        return torch.where(enough, found, fallback)


class SegGroups(BridgePositions):
    """Every occurrence of the ``[SEG]`` tokens, read in groups of ``group_size`` (one group per
    target): several targets per sample, each named by N tokens — GeoMag's codebook
    ``[SEG0][SEG1][SEG2]`` (N distinct tokens) or PixelLM-style N copies of one token.

    The reference responses write the tokens themselves (nothing is appended). Among generated
    tokens every complete group counts and a trailing group the model cut short is dropped, so a
    sample may have fewer (or more) targets than its reference; :mod:`rsvlm.models.targets` pairs
    them in order.

    Args:
        tokens: the special token(s) of a group.
        group_size: N, tokens per target (the bridge's ``num_tokens``); default ``len(tokens)``.
        offset: ``"at"`` or ``"before"``, as :class:`SpecialToken`.
    """

    def __init__(
        self,
        tokens: list[str] = ["[SEG0]", "[SEG1]", "[SEG2]"],
        group_size: int | None = None,
        offset: Literal["at", "before"] = "at",
    ) -> None:
        if not tokens:
            raise ValueError("SegGroups: tokens must name at least one special token")
        if offset not in ("at", "before"):
            raise ValueError(f"SegGroups: offset must be 'at' or 'before', got {offset!r}")
        self.tokens, self.offset = list(tokens), offset
        self.group_size = len(self.tokens) if group_size is None else group_size
        if self.group_size < 1:
            raise ValueError(f"SegGroups: group_size must be >= 1, got {self.group_size}")
        self.token_ids: list[int] | None = None

    def bind(self, llm: Any) -> None:
        self.token_ids = [special_token_id(llm.tokenizer, t, "SegGroups") for t in self.tokens]

    def _at(self, ids: torch.Tensor) -> torch.Tensor:
        if self.token_ids is None:
            raise RuntimeError("SegGroups: bind(llm) was not called (the model does it at assembly)")
        return torch.isin(ids, torch.tensor(self.token_ids, device=ids.device))

    def teacher_forced(self, output: Any) -> torch.Tensor:
        if getattr(output, "input_ids", None) is None:
            raise ValueError("SegGroups: the LLM output carries no spliced input_ids")
        return shifted(self._at(output.input_ids), self.offset)

    def generated(self, generation: Any) -> torch.Tensor:
        at = self._at(generation.sequences) & generation.mask
        return shifted(complete_groups(at, self.group_size), self.offset)


def special_token_id(tokenizer: Any, token: str, owner: str) -> int:
    """The id of special ``token``, or a ``KeyError`` saying to add it to the LLM's special tokens."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id or token not in tokenizer.get_vocab():
        raise KeyError(
            f"{owner}: {token!r} is not a token of the LLM's tokenizer; add it to the LLM's "
            f"special_tokens (e.g. special_tokens: ['<image>', '{token}'])"
        )
    return int(token_id)


def shifted(at: torch.Tensor, offset: str) -> torch.Tensor:
    """``at`` (``B×L`` bool) as is (``"at"``), or moved one position earlier (``"before"``: the
    state that predicts the token; a token at position 0 keeps its own position)."""
    if offset == "at":
        return at
    before = torch.zeros_like(at)
    before[:, :-1] = at[:, 1:]
    before[:, 0] |= at[:, 0]
    return before


def complete_groups(positions: torch.Tensor, group_size: int) -> torch.Tensor:
    """``B×L`` bool without each row's last ``count % group_size`` True positions (a group cut short)."""
    spare = (positions.sum(dim=1) % group_size)[:, None]
    from_end = positions.flip(1).long().cumsum(dim=1).flip(1)
    return positions & (from_end > spare)


def _last(mask: torch.Tensor, k: int) -> torch.Tensor:
    """``B×T`` bool: the last ``k`` True positions of each row of ``mask``."""
    from_end = mask.flip(1).long().cumsum(dim=1).flip(1)
    return mask & (from_end <= k)


def generated_positions(response_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Positions to pool among generated tokens: ``B×T`` bool.

    The generated tokens before the closing token (``response_mask``), matching training, where
    the bridge pools the response tokens without it. A sample that produced only the closing
    token falls back to that token (``mask``), so that the bridge always has something to pool.
    """
    positions = response_mask.clone()
    empty = ~positions.any(dim=1)
    positions[empty] = mask[empty]
    return positions


class SuffixedFormatter:
    """A text formatter that appends ``suffix`` to every reference response before formatting.

    Wraps the LLM's formatter (``formatter(instructions, responses) → dict of tensors``); every
    other attribute (``prompts``, ``tokenizer``, ...) is the wrapped formatter's. Picklable when
    the wrapped formatter is (DataLoader workers receive a copy).
    """

    def __init__(self, formatter: Any, suffix: str) -> None:
        self.formatter = formatter
        self.suffix = suffix

    def __call__(self, instructions: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
        return self.formatter(instructions, [r + self.suffix for r in responses])

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "formatter":
            raise AttributeError(name)
        return getattr(self.formatter, name)


def with_response_suffix(formatter: Any, suffix: str) -> Any:
    """``formatter`` itself without a suffix, else a :class:`SuffixedFormatter`."""
    return SuffixedFormatter(formatter, suffix) if suffix else formatter
