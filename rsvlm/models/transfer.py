"""Initialise a component from another run's checkpoint (e.g. SPEX's encoder from MVPNet)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rsvlm.io.state_dicts import check_state_dict, read_state_dict


def _field(prefix: str) -> str:
    """The recipe field a prefix is loaded for: ``"encoder."`` → ``"encoder_init"``."""
    return f"{prefix.rstrip('.')}_init"


def load_component_state(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (e.g. ``"encoder."``) of a Lightning checkpoint or a plain
    state dict (``.ckpt``/``.pt``/``.pth`` loaded with ``weights_only=True``, or ``.safetensors``),
    with the prefix removed."""
    state = read_state_dict(path, _field(prefix))
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        sample = ", ".join(list(state)[:8])
        raise KeyError(f"{_field(prefix)}: {path} has no keys starting with {prefix!r} (first keys: {sample})")
    return picked


def load_encoder_weights(encoder: nn.Module, path: str | Path, prefix: str = "encoder.") -> None:
    """Copy only the component's weights (the keys under ``prefix``) from ``path`` into ``encoder``.

    Raises :class:`rsvlm.io.state_dicts.StateDictError` (a ``ValueError``) listing missing,
    unexpected and wrongly shaped keys when they differ.
    """
    state = load_component_state(path, prefix)
    header = f"{_field(prefix)}: {path} does not fit {type(encoder).__name__}:"
    check_state_dict(encoder.state_dict(), state, header, module_name=prefix.rstrip("."))
    encoder.load_state_dict(state, strict=True)
