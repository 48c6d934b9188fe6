"""Generation settings: how a model samples its responses at test and predict time."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class GenerationSettings:
    """How responses are generated at test / predict time (passed to ``llm.generate``).

    ``seed`` makes sampling repeatable: each generating call samples from its own random stream
    seeded with ``seed`` (the global stream is left as it was), so a test run gives the same
    texts and masks every time. None samples from the global stream.
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int | None = 0

    def sampling_seed(self) -> int | None:
        """The seed a generating call uses, or None (no sampling, or no seed)."""
        return self.seed if self.do_sample else None

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``llm.generate``."""
        return {k: v for k, v in asdict(self).items() if k != "seed"}
