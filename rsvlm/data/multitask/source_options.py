"""What :class:`rsvlm.data.multitask.datamodule.InstructDataModule` reads, and how: the options of
one records file (:class:`SourceOptions`), the generator protocol of built-in records
(:class:`InstructGenerator`) and the per-split modality filter (:func:`check_split_modalities`).

Kept apart from the datamodule so that module stays a readable size; import them from either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from rsvlm.data.base import SPLITS
from rsvlm.data.coords import parse_grounding
from rsvlm.data.modalities import MODALITY_IDS
from rsvlm.data.multitask.records import TASKS, InstructRecord


@dataclass
class SourceOptions:
    """Options of one records file (all optional).

    Attributes:
        multiplier: factor on the mixture weight of the file's (source, task) groups (0 leaves them out).
        tasks: keep only records of these tasks (None: all).
        splits: record ``split`` → datamodule split (``train``, ``val``, ``test``), e.g.
            ``{"test_phili": "test"}``; splits it does not name are left out. None: canonical names only.
        scale: pixel divisor of the file's images (None: the datamodule's ``scale``).
    """

    multiplier: float = 1.0
    tasks: list[str] | None = None
    splits: dict[str, str] | None = None
    scale: float | None = None

    def check(self, where: str) -> None:
        """Raise a ValueError naming ``where`` and the field when an option is out of range."""
        if not math.isfinite(self.multiplier) or self.multiplier < 0:
            raise ValueError(f"{where}.multiplier: must be finite and >= 0, got {self.multiplier}")
        unknown = sorted(set(self.tasks or ()) - set(TASKS))
        if unknown:
            raise ValueError(f"{where}.tasks: unknown task(s) {unknown}; known: {', '.join(TASKS)}")
        bad = sorted(v for v in (self.splits or {}).values() if v not in SPLITS)
        if bad:
            raise ValueError(f"{where}.splits: maps to {bad}; the datamodule's splits are {', '.join(SPLITS)}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"{where}.scale: must be a positive number, got {self.scale}")


@runtime_checkable
class InstructGenerator(Protocol):
    """Generated records built offline in ``prepare_data``
    (:class:`rsvlm.data.multitask.generated.GeneratedInstructData`,
    :class:`rsvlm.data.multitask.generated_multisource.GeneratedMultisourceData`)."""

    def records_path(self) -> Path:
        """The records file the build writes (known before it is built)."""
        ...

    def prepare(self) -> Path:
        """Build the records and their images unless done before; returns :meth:`records_path`."""
        ...


def has_text_coordinates(record: InstructRecord) -> bool:
    """True when a turn writes a box or point bracket (:func:`rsvlm.data.coords.parse_grounding`)."""
    return any(parse_grounding(turn.text, (1, 1)) for turn in record.conversations)


def check_split_modalities(
    split_modalities: Mapping[str, Sequence[str]] | None, where: str
) -> dict[str, frozenset[str]] | None:
    """``split → modalities kept`` (splits not named keep every record), checked: known splits
    (:data:`rsvlm.data.base.SPLITS`) and modalities (:data:`rsvlm.data.modalities.MODALITY_IDS`), none empty.

    Raises:
        ValueError: naming ``where``, the split and the offending value.
    """
    if split_modalities is None:
        return None
    out = {}
    for split, modalities in split_modalities.items():
        if split not in SPLITS:
            raise ValueError(f"{where}: unknown split {split!r}; the datamodule's splits are {', '.join(SPLITS)}")
        if isinstance(modalities, str) or not modalities:
            raise ValueError(f"{where}[{split!r}]: needs a non-empty list of modalities, got {modalities!r}")
        unknown = sorted(set(modalities) - set(MODALITY_IDS))
        if unknown:
            raise ValueError(f"{where}[{split!r}]: unknown modality(ies) {unknown}; known: {', '.join(MODALITY_IDS)}")
        out[split] = frozenset(modalities)
    return out


__all__ = ["InstructGenerator", "SourceOptions", "check_split_modalities", "has_text_coordinates"]
