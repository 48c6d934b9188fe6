"""Checkpoint files: written atomically, loaded with ``weights_only``, hyper-parameters kept plain.

:class:`AtomicCheckpointIO` is a Lightning ``CheckpointIO`` plugin: it writes to a temporary file
in the target folder, flushes it to disk and ``os.replace``-s it into place (a crash while
writing never leaves a half-written ``last.ckpt``), and loads with ``torch.load(...,
weights_only=True)``. Checkpoint contents are made ``weights_only``-loadable by converting
hyper-parameters to plain containers when saving (:func:`plain_hparams`): dataclasses become
dicts, paths strings, enums their values. We chose conversion over
``torch.serialization.add_safe_globals`` because it works for any user dataclass without a
registry and because Lightning's own CLI re-reads ``hyper_parameters`` with a bare
``torch.load(weights_only=True)`` that no allow-list passed to our plugin would reach.

What goes into a checkpoint is decided elsewhere: trained-only state dicts in
:mod:`rsvlm.training.trained_only`, the position inside an epoch (mid-epoch resume) in the data
loaders of :mod:`rsvlm.data.loaders`; LoRA export is :mod:`rsvlm.training.lora_export`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rsvlm.contracts import RsvlmError
from rsvlm.io.atomic import atomic_write


class CheckpointError(RsvlmError, RuntimeError):
    """A checkpoint cannot be read, is refused, or does not fit the model (names file/component)."""


class MissingCheckpointError(RsvlmError, FileNotFoundError):
    """A checkpoint path names no file (``rsvlm`` prints it as one line)."""


# ---------------------------------------------------------------------------- plain hparams
def plain_hparams(value: Any) -> Any:
    """A copy of ``value`` made of types ``torch.load(weights_only=True)`` accepts.

    Dataclasses → dicts (recursively), paths → str, enums → their value, namespaces and other
    mappings → dicts, sets → sorted lists. Tensors, numbers, strings, None, lists, tuples and
    torch dtypes are kept. Anything else (e.g. an ``nn.Module`` a model forgot to exclude from
    ``save_hyperparameters``) becomes its ``repr`` with a warning, because it cannot be loaded
    safely anyway.
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_hparams(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return plain_hparams(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {k: plain_hparams(v) for k, v in value.items()}
    if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
        return {k: plain_hparams(v) for k, v in vars(value).items()}
    if isinstance(value, (list, tuple)):
        items = [plain_hparams(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, (set, frozenset)):
        return sorted(plain_hparams(v) for v in value)
    warnings.warn(
        f"hyper-parameter value of type {type(value).__qualname__} cannot be stored safely in a checkpoint; "
        "storing its repr instead (exclude it with save_hyperparameters(ignore=...))",
        stacklevel=2,
    )
    return repr(value)


def make_weights_only_safe(checkpoint: dict[str, Any]) -> None:
    """Convert the hyper-parameter entries of a Lightning checkpoint in place (see :func:`plain_hparams`)."""
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if key in checkpoint:
            checkpoint[key] = plain_hparams(dict(checkpoint[key]))


# ---------------------------------------------------------------------------- file IO
def save_atomically(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace`` it into place.

    Readers see either the previous file or the complete new one, never a partial write. The
    temporary name starts with ``.`` and ends with ``.tmp`` so checkpoint globbing skips it.
    """
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    Raises:
        MissingCheckpointError: no such file (a ``FileNotFoundError``).
        CheckpointError: the file holds pickled objects other than tensors and plain containers
            (refused), or it is truncated / not a checkpoint.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise MissingCheckpointError(f"checkpoint file not found: {p}")
    if os.path.isfile(p) and not _looks_like_torch_save(p):
        raise CheckpointError(
            f"cannot read checkpoint {p}: not a file torch.save wrote (neither its zip archive nor a pickle); "
            "give a checkpoint that rsvlm fit wrote (RUN/checkpoints/*.ckpt)"
        )
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()
        reason = next(
            (line for line in detail if "GLOBAL" in line or "Unsupported" in line), detail[0] if detail else ""
        )
        raise CheckpointError(
            f"refused to load checkpoint {p}: it contains pickled objects other than tensors and plain containers "
            f"({reason.strip()}). rsvlm loads checkpoints with torch.load(weights_only=True); re-save it from "
            f"trusted code as a state dict if you trust its origin"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read checkpoint {p}: {err} (truncated, corrupt, or not a torch checkpoint?)"
        ) from err


def _looks_like_torch_save(path: str) -> bool:
    """True when ``path`` starts as ``torch.save`` output does: a zip archive (``PK\\x03\\x04``,
    also when truncated, which ``torch.load`` then reports) or the legacy pickle (``0x80``, the
    PROTO opcode). Anything else (an image, a text file, a safetensors file) would reach the
    weights-only unpickler and be refused as holding unsafe objects, which misleads."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic writes, ``weights_only=True`` loads, plain hyper-parameters.

    Use it with ``Trainer(plugins=[AtomicCheckpointIO()])`` or, in a recipe::

        trainer:
          plugins: [{class_path: rsvlm.training.checkpoints.AtomicCheckpointIO}]

    Remote paths (``s3://`` ...) fall back to Lightning's own writer (not atomic there).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        make_weights_only_safe(checkpoint)
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)
            return
        save_atomically(checkpoint, str(path).removeprefix("file://"))

    def load_checkpoint(
        self, path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointError(f"{type(self).__name__} does not load checkpoints with weights_only=False ({path})")
        fs = get_filesystem(path)
        if not fs.exists(path):
            raise MissingCheckpointError(f"checkpoint file not found: {path}")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(str(path).removeprefix("file://"), map_location=map_location or "cpu")


def size_report(checkpoint: Mapping[str, Any]) -> str:
    """One line (for a trained-only checkpoint, see :mod:`rsvlm.training.trained_only`): bytes kept in the checkpoint's state dict vs a full state-dict save."""
    sizes = checkpoint.get("rsvlm", {}).get("sizes")
    if not sizes:
        return "full state dict (no frozen base dropped)"
    ratio = sizes["kept_bytes"] / max(sizes["full_bytes"], 1)
    return (
        f"state dict {human_bytes(sizes['kept_bytes'])} of {human_bytes(sizes['full_bytes'])} "
        f"({ratio:.1%}); dropped {sizes['dropped_params']:,} frozen parameters"
    )


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


__all__: list[str] = [
    "human_bytes",
    "size_report",
    "AtomicCheckpointIO",
    "CheckpointError",
    "load_checkpoint",
    "make_weights_only_safe",
    "plain_hparams",
    "save_atomically",
]
