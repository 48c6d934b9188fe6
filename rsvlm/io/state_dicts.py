"""Comparing a checkpoint's tensors with a module's, so that load errors can list what differs."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class StateDictDiff:
    """Keys a module expects but a checkpoint lacks, keys it has in excess, and shape clashes.

    ``mismatched`` holds ``(key, checkpoint shape, module shape)`` triples.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def mismatch_lines(self, given: str = "checkpoint", own: str = "model", prefix: str = "") -> list[str]:
        """``"<prefix><key>: <given> (a, b) vs <own> (c, d)"`` for every shape clash."""
        return [f"{prefix}{k}: {given} {a} vs {own} {b}" for k, a, b in self.mismatched]


def compare_state_dicts(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], ignore: Collection[str] = ()
) -> StateDictDiff:
    """What differs between a module's ``expected`` state dict and a checkpoint's ``given`` one
    (keys in ``ignore`` are left out on both sides). Keys keep the module's order."""
    return StateDictDiff(
        missing=[k for k in expected if k not in given and k not in ignore],
        unexpected=[k for k in given if k not in expected and k not in ignore],
        mismatched=[
            (k, tuple(given[k].shape), tuple(v.shape))
            for k, v in expected.items()
            if k in given and k not in ignore and tuple(given[k].shape) != tuple(v.shape)
        ],
    )
