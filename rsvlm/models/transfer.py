"""Initialise a component from another run's checkpoint (e.g. SPEX's encoder from MVPNet)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rsvlm.io.state_dicts import compare_state_dicts


def load_component_state(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (e.g. ``"encoder."``) of a Lightning checkpoint or a plain
    state dict (``.ckpt``/``.pt``/``.pth`` loaded with ``weights_only=True``, or ``.safetensors``),
    with the prefix removed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"encoder_init: checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # an unpickling error names what was refused
            raise ValueError(f"encoder_init: {path} is not a weights-only checkpoint: {err}") from err
        state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not picked:
        sample = ", ".join(list(state)[:8])
        raise KeyError(f"encoder_init: {path} has no keys starting with {prefix!r} (first keys: {sample})")
    return picked


def load_encoder_weights(encoder: nn.Module, path: str | Path, prefix: str = "encoder.") -> None:
    """Copy only the encoder's weights from ``path`` into ``encoder``.

    Raises ``ValueError`` listing missing, unexpected and wrongly shaped keys when they differ.
    """
    state = load_component_state(path, prefix)
    diff = compare_state_dicts(encoder.state_dict(), state)
    missing, unexpected = sorted(diff.missing), sorted(diff.unexpected)
    mismatched = sorted(diff.mismatch_lines("checkpoint", "encoder"))
    if not diff.ok:
        raise ValueError(
            f"encoder_init: {path} does not fit {type(encoder).__name__}:\n"
            f"  missing keys: {missing[:20]}{' …' if len(missing) > 20 else ''}\n"
            f"  unexpected keys: {unexpected[:20]}{' …' if len(unexpected) > 20 else ''}\n"
            f"  shape mismatches: {mismatched[:20]}"
        )
    encoder.load_state_dict(state, strict=True)
