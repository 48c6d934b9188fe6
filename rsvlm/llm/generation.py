"""Generation settings: how a model samples its responses at test and predict time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional

from transformers import GenerationConfig


@dataclass
class GenerationSettings:
    """How responses are generated at test / predict time (passed to ``llm.generate``).

    ``seed`` makes sampling repeatable: each generating call samples from its own random stream
    seeded with ``seed`` (the global stream is left as it was), so a test run gives the same
    texts and masks every time. None samples from the global stream.

    ``cache_implementation`` is Hugging Face's KV cache: None (the default) or ``"dynamic"`` grows
    it token by token; ``"static"`` allocates it once for prompt + ``max_new_tokens``, and on CUDA
    transformers then compiles the decode step, which removes the per-token Python overhead that
    dominates generation at small batches (Qwen2.5-1.5B at batch 1 on an H200: 7.4 ms a token,
    LoRA merged, against 32-59 uncompiled, ``benchmarks/decode_speed.py``). The first call
    compiles; a new batch size or prompt length gives a new cache shape, which may compile again.
    Same tokens as the default up to floating-point rounding.
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int | None = 0
    cache_implementation: Optional[Literal["dynamic", "static"]] = None

    def sampling_seed(self) -> int | None:
        """The seed a generating call uses, or None (no sampling, or no seed)."""
        return self.seed if self.do_sample else None

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``llm.generate``."""
        return {k: v for k, v in asdict(self).items() if k != "seed"}


def hf_generation_config(
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    repetition_penalty: float,
    cache_implementation: str | None = None,
) -> GenerationConfig:
    """Hugging Face's ``GenerationConfig`` for these settings (temperature and top-p only when
    sampling, where transformers reads them; the cache only when one is named)."""
    settings: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "repetition_penalty": repetition_penalty,
    }
    if do_sample:
        settings.update(temperature=temperature, top_p=top_p)
    if cache_implementation is not None:
        settings["cache_implementation"] = cache_implementation
    return GenerationConfig(**settings)


class _QuietPrecedence(logging.Filter):
    """Drops transformers' notice that a custom processor replaces the one ``generate`` builds
    (here that is the point, not a mistake)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will take precedence" not in record.getMessage()


@contextmanager
def penalty_on_every_generated_token(repetition_penalty: float) -> Iterator[dict[str, Any]]:
    """``generate`` keyword arguments applying ``repetition_penalty`` to every generated token of
    every row, however much left padding the row's prompt has.

    Given ``inputs_embeds`` (the prompt is embeddings, so its ``input_ids`` are empty),
    transformers ≥ 5 still tells its repetition penalty to skip each row's first *k* tokens, *k*
    the row's left padding, meant for a prompt it no longer sees: the first *k* generated tokens
    of a short prompt escape the penalty and a sample's text depends on the batch it is in. A
    ``RepetitionPenaltyLogitsProcessor`` without the skip, passed as ``logits_processor``, takes
    the built one's place (same position: before temperature and top-p).
    """
    if repetition_penalty == 1.0:
        yield {}
        return
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    quiet, logger = _QuietPrecedence(), logging.getLogger("transformers.generation.utils")
    logger.addFilter(quiet)
    try:
        yield {"logits_processor": LogitsProcessorList([RepetitionPenaltyLogitsProcessor(repetition_penalty)])}
    finally:
        logger.removeFilter(quiet)
