"""Reading weight files safely and comparing their tensors with a module's.

Every component that loads weights (encoders, SAM heads, ``init_from`` transfers) reads them
with :func:`read_state_dict` (``torch.load(weights_only=True)`` or safetensors: no pickled code
runs) and checks them with :func:`check_state_dict`, whose one error lists what differs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rsvlm.contracts import MissingFileError, RsvlmError
from rsvlm.io.text import without_styling

#: Keys under which training scripts nest the weights (Lightning, mmseg/mmdet, classification
#: releases, DataParallel dumps), tried in this order while the top level holds no tensor.
CONTAINER_KEYS = ("state_dict", "model", "module")
SAFETENSORS_SUFFIX = ".safetensors"
LISTED_KEYS = 20


class StateDictError(RsvlmError, ValueError):
    """A weight file is unreadable, refused, or does not fit the module it is loaded into."""


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

    def describe(self, module_name: str = "model") -> str:
        """One indented line per non-empty group, at most :data:`LISTED_KEYS` keys each:
        ``missing keys: [...]`` and ``unexpected keys: [...]`` sorted, and
        ``shape mismatches (...): ['<key>: checkpoint (a, b) vs <module_name> (c, d)', ...]`` in the
        module's order, so that the first clash is where the two architectures part."""
        groups = {
            "missing keys": sorted(self.missing),
            "unexpected keys": sorted(self.unexpected),
            f"shape mismatches (checkpoint vs {module_name})": [
                f"{k}: checkpoint {a} vs {module_name} {b}" for k, a, b in self.mismatched
            ],
        }
        lines = []
        for name, items in groups.items():
            if items:
                more = f" … and {len(items) - LISTED_KEYS} more" if len(items) > LISTED_KEYS else ""
                lines.append(f"  {name}: {items[:LISTED_KEYS]}{more}")
        return "\n".join(lines)


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


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    header: str,
    module_name: str = "model",
    ignore: Collection[str] = (),
) -> None:
    """Raise :class:`StateDictError` (``header``, then :meth:`StateDictDiff.describe`) unless
    ``given`` has exactly the keys and shapes of ``expected`` (``ignore`` left out)."""
    diff = compare_state_dicts(expected, given, ignore)
    if not diff.ok:
        raise StateDictError(f"{header}\n{diff.describe(module_name)}")


def read_state_dict(path: str | Path, owner: str, missing_hint: str = "") -> dict[str, torch.Tensor]:
    """The tensors of a weight file as a flat state dict.

    ``.safetensors`` is read with safetensors, anything else (``.pth``, ``.pt``, ``.ckpt``,
    ``.bin``) with ``torch.load(weights_only=True)``. Weights nested under
    :data:`CONTAINER_KEYS` are unwrapped, a ``module.`` prefix on every key (a DataParallel
    dump) is removed, and entries that are not tensors are dropped.

    Args:
        path: the file.
        owner: what asked for it, named first in every error (e.g. ``"TimmEncoder.checkpoint_path"``).
        missing_hint: appended to the error for a missing file: what to download and where.

    Raises:
        FileNotFoundError: no such file.
        StateDictError: the file is refused (pickled objects other than tensors and plain
            containers), unreadable, or holds no state dict.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise MissingFileError(f"{owner}: {file} does not exist. {missing_hint}".rstrip())
    if file.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        try:
            state: object = load_file(str(file))
        except Exception as err:  # a truncated or foreign file: name it
            raise StateDictError(f"{owner}: {file} is not a readable safetensors file ({err})") from err
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # an unpickling refusal or a truncated file: name the file
            reason = (without_styling(err).strip().splitlines() or [""])[0]
            raise StateDictError(
                f"{owner}: {file} could not be read with torch.load(weights_only=True) "
                f"({type(err).__name__}: {reason}). Re-save only its state dict "
                f"(torch.save(model.state_dict(), ...)) or convert it to safetensors."
            ) from err
    state = _unwrap(state)
    if not isinstance(state, Mapping):
        raise StateDictError(f"{owner}: {file} holds a {type(state).__name__}, expected a state dict")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def _unwrap(state: object) -> object:
    """Descend into :data:`CONTAINER_KEYS` while the level holds no tensor of its own."""
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in CONTAINER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    return state
