"""Checkpoints that hold only what was trained, are written atomically and load with ``weights_only``.

Trained-only checkpoints
------------------------
A SPEX run with a frozen 1.5 B-parameter LLM trains LoRA adapters, new token embeddings, the
encoder, the fusion, the bridge and the decoder; copying the frozen LLM into every checkpoint
would make each one several GB. :func:`keep_trained_only` (called from a LightningModule's
``on_save_checkpoint``) drops every parameter that its component did not declare trainable
(``module.trainable.declared``, see :mod:`rsvlm.models.trainable`) and records, per component
whose parameters were dropped, an *identity* of that frozen base::

    checkpoint["rsvlm"] = {
        "format": 1,
        "frozen_bases": {"llm": {"class": ..., "source": "Qwen/Qwen2.5-1.5B", "config": {...},
                                 "num_params": ..., "layout_sha256": ..., "fingerprint": tensor}},
        "dropped": [state-dict keys],
        "sizes": {"kept_params", "kept_bytes", "dropped_params", "dropped_bytes", "full_bytes"},
    }

Every buffer is kept (BatchNorm statistics of a frozen encoder still move in train mode, and
buffers are small). :func:`restore_frozen` (called from ``on_load_checkpoint``, i.e. before
Lightning's strict ``load_state_dict``) checks that the freshly built module has the same frozen
bases — same tensor names and shapes, same architecture config, and weights whose strided sample
(the *fingerprint*) agrees — and fills the dropped keys from the module's own state dict. A
mismatch is an error naming the component and what differs, never a silently different model.
The source (hub id or folder) may differ (a local copy of the same weights) with a warning.

Loading safely
--------------
:class:`AtomicCheckpointIO` is a Lightning ``CheckpointIO`` plugin: it writes to a temporary file
in the target folder, flushes it to disk and ``os.replace``-s it into place (a crash while
writing never leaves a half-written ``last.ckpt``), and loads with ``torch.load(...,
weights_only=True)``. Checkpoint contents are made ``weights_only``-loadable by converting
hyper-parameters to plain containers when saving (:func:`plain_hparams`): dataclasses become
dicts, paths strings, enums their values. We chose conversion over
``torch.serialization.add_safe_globals`` because it works for any user dataclass without a
registry and because Lightning's own CLI re-reads ``hyper_parameters`` with a bare
``torch.load(weights_only=True)`` that no allow-list passed to our plugin would reach.

Exports
-------
:func:`export_lora` writes the LLM's LoRA adapters in peft's own format, or the merged model
in transformers' format; both load without rsvlm.

The position inside an epoch (mid-epoch resume) is saved by the data loaders of
:mod:`rsvlm.data.loaders`.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import hashlib
import json
import logging
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from rsvlm.contracts import RsvlmError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: Values sampled from each frozen tensor for its fingerprint (strided over the whole tensor).
FINGERPRINT_SAMPLES = 16
#: Tolerance of the fingerprint comparison: loose enough for a bf16/fp16 copy of the same
#: weights, far tighter than the difference between two random initialisations.
FINGERPRINT_RTOL = 2e-2
FINGERPRINT_ATOL = 1e-3
# Config keys that describe how a model was loaded, not what it computes.
_VOLATILE_CONFIG_KEYS = (
    "transformers_version",
    "_name_or_path",
    "name_or_path",
    "torch_dtype",
    "dtype",
    "architectures",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "attn_implementation",
    "_commit_hash",
    "use_cache",
    "output_hidden_states",
    "return_dict",
    "_experts_implementation",
)


class CheckpointError(RsvlmError, RuntimeError):
    """A checkpoint cannot be read, is refused, or does not fit the model (names file/component)."""


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


# ---------------------------------------------------------------------------- identities
def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _hf_config(module: nn.Module) -> Any | None:
    """The first transformers-style config found on ``module`` or its submodules."""
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            return config
    return None


def _plain_config(config: Any) -> dict[str, Any]:
    values = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    # Round-trip through JSON: only plain values, comparable after a save/load.
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def _fingerprint(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """``FINGERPRINT_SAMPLES`` values strided over each tensor, concatenated (float32, CPU)."""
    if any(t.is_meta for t in tensors):
        return None
    parts = []
    for t in tensors:
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLES)
        parts.append(flat[::step][:FINGERPRINT_SAMPLES].float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def component_identity(component: nn.Module, names: list[str], tensors: list[torch.Tensor]) -> dict[str, Any]:
    """What identifies the frozen tensors ``names`` (relative keys) of ``component``.

    Returns a dict of plain values: ``class``, ``source`` (the Hugging Face id or folder the
    weights came from, when the component wraps a transformers model), ``config`` (its
    architecture config without loading details), ``num_params``, ``layout_sha256`` (hash of the
    names and shapes) and ``fingerprint`` (a float32 tensor of sampled values, None on the meta
    device).
    """
    layout = "\n".join(f"{n}:{tuple(t.shape)}" for n, t in zip(names, tensors))
    config = _hf_config(component)
    source = None
    if config is not None:
        source = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None) or None
    return {
        "class": _qualname(component),
        "source": source,
        "config": None if config is None else _plain_config(config),
        "num_params": int(sum(t.numel() for t in tensors)),
        "layout_sha256": hashlib.sha256(layout.encode()).hexdigest(),
        "fingerprint": _fingerprint(tensors),
    }


def _identity_problems(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    problems = []
    if recorded["class"] != current["class"]:
        problems.append(f"class {recorded['class']} in the checkpoint, {current['class']} now")
    if recorded["num_params"] != current["num_params"] or recorded["layout_sha256"] != current["layout_sha256"]:
        problems.append(
            f"frozen tensors differ in names or shapes ({recorded['num_params']:,} parameters in the checkpoint, "
            f"{current['num_params']:,} now)"
        )
    if (
        recorded.get("config") is not None
        and current.get("config") is not None
        and recorded["config"] != current["config"]
    ):
        keys = sorted(
            k
            for k in set(recorded["config"]) | set(current["config"])
            if recorded["config"].get(k) != current["config"].get(k)
        )
        shown = ", ".join(f"{k}: {recorded['config'].get(k)!r} → {current['config'].get(k)!r}" for k in keys[:6])
        problems.append(f"architecture config differs ({shown}{', ...' if len(keys) > 6 else ''})")
    a, b = recorded.get("fingerprint"), current.get("fingerprint")
    if (
        not problems
        and a is not None
        and b is not None
        and (
            a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=FINGERPRINT_RTOL, atol=FINGERPRINT_ATOL)
        )
    ):
        problems.append(
            "frozen weights differ (their sampled values do not match: a different checkpoint, or a random "
            "initialisation with another seed)"
        )
    return problems


# ---------------------------------------------------------------------------- keep / restore
def _component_of(key: str, components: list[str]) -> str | None:
    head = key.split(".", 1)[0]
    return head if head in components else None


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _unique(tensors) -> list[torch.Tensor]:
    """Tensors without repeats of the same memory (tied weights are saved once by torch.save)."""
    seen: dict[Any, torch.Tensor] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            key = id(t) if t.is_meta else (t.data_ptr(), t.numel(), t.dtype)
            seen.setdefault(key, t)
    return list(seen.values())


#: Name parts that wrappers (FSDP, activation checkpointing, torch.compile) insert into parameter
#: names but not into the state dict Lightning saves.
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _clean_name(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def trained_keys(module: nn.Module) -> set[str]:
    """State-dict keys of the parameters that the module's components declared trainable.

    The names come from what each component declared at construction; parameters that are the
    same tensor under another name (an output layer tied to the input embedding) are added, so
    tied weights are kept or dropped together.
    """
    trainable = getattr(module, "trainable", None)
    if trainable is None or not hasattr(trainable, "declared"):
        raise TypeError(
            f"keep_trained_only needs a module with a `trainable` attribute (rsvlm.models.trainable.TrainableSets); "
            f"{type(module).__name__} has none"
        )
    kept = {f"{component}.{name}" for component, names in trainable.declared.items() for name in names}
    aliases: dict[int, set[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), set()).add(_clean_name(name))
    for names in aliases.values():
        if names & kept:
            kept |= names
    return kept


def keep_trained_only(module: nn.Module, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Drop frozen component parameters from ``checkpoint["state_dict"]`` and record their identity.

    Args:
        module: a LightningModule with ``trainable`` (:class:`~rsvlm.models.trainable.TrainableSets`).
        checkpoint: Lightning's checkpoint dict (modified in place).

    Returns:
        ``checkpoint["rsvlm"]`` (see the module docstring). Also converts the hyper-parameters
        to plain containers (:func:`make_weights_only_safe`).
    """
    make_weights_only_safe(checkpoint)
    state = checkpoint.get("state_dict")
    if not state:
        return {}  # the strategy saves the weights itself (DeepSpeed)
    components = list(module.trainable.components)
    keep = trained_keys(module)
    absent = sorted(keep - set(state))
    if absent:
        # A sharded or renamed state dict: trimming could lose trained weights, so keep everything.
        warnings.warn(
            f"keep_trained_only: {len(absent)} trained parameter(s) are not in the checkpoint's state dict under "
            f"their own names (e.g. {absent[0]}); saving the full state dict instead",
            stacklevel=2,
        )
        return {}
    buffers = {_clean_name(name) for name, _ in module.named_buffers(remove_duplicate=False)}
    dropped: dict[str, list[str]] = {}
    for key in state:
        component = _component_of(key, components)
        if component is not None and key not in keep and key not in buffers:
            dropped.setdefault(component, []).append(key)

    full = _unique(state.values())
    frozen_bases = {}
    dropped_keys: list[str] = []
    for component, keys in dropped.items():
        tensors = [state[k] for k in keys]
        relative = [k.split(".", 1)[1] for k in keys]
        frozen_bases[component] = component_identity(module.trainable.components[component], relative, tensors)
        dropped_keys += keys
    removed = _unique(state[k] for k in dropped_keys)
    for key in dropped_keys:
        del state[key]
    kept = _unique(state.values())
    # Sizes count tied tensors once, as torch.save stores them.
    info = {
        "format": FORMAT_VERSION,
        "frozen_bases": frozen_bases,
        "dropped": dropped_keys,
        "sizes": {
            "kept_params": int(sum(t.numel() for t in kept)),
            "kept_bytes": int(sum(_nbytes(t) for t in kept)),
            "dropped_params": int(sum(t.numel() for t in removed)),
            "dropped_bytes": int(sum(_nbytes(t) for t in removed)),
            "full_bytes": int(sum(_nbytes(t) for t in full)),
        },
    }
    checkpoint["rsvlm"] = info
    return info


def restore_frozen(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Fill the keys :func:`keep_trained_only` dropped from the module's current (fresh) weights.

    Call it before the strict ``load_state_dict`` (Lightning's ``on_load_checkpoint`` is). A
    checkpoint without an ``"rsvlm"`` entry (a full save) is left as it is.

    Raises:
        CheckpointError: a recorded frozen base does not match the module (names the component
            and what differs), or the module lacks a dropped key, or it is on the meta device.
    """
    info = checkpoint.get("rsvlm")
    if not info or not info.get("dropped") or "state_dict" not in checkpoint:
        return
    if info.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint entry 'rsvlm' has format {info['format']}; this rsvlm reads up to {FORMAT_VERSION}"
        )
    current = module.state_dict()
    dropped: list[str] = list(info["dropped"])
    components = getattr(getattr(module, "trainable", None), "components", {})
    for component, recorded in info.get("frozen_bases", {}).items():
        owner = components.get(component, getattr(module, component, None))
        if owner is None:
            raise CheckpointError(f"checkpoint has a frozen base for component '{component}' that the model lacks")
        keys = [k for k in dropped if _component_of(k, [component]) == component]
        absent = [k for k in keys if k not in current]
        if absent:
            raise CheckpointError(
                f"component '{component}': the frozen base this checkpoint was trained with does not match the model "
                f"built now: frozen tensors differ in names or shapes ({len(absent)} of {len(keys)} missing now, e.g. "
                f"{absent[0]}). Checkpoint base: source={recorded.get('source')!r}, class={recorded['class']}"
            )
        tensors = [current[k] for k in keys]
        if any(t.is_meta for t in tensors):
            raise CheckpointError(
                f"component '{component}' is on the meta device; its frozen weights cannot be restored from it"
            )
        now = component_identity(owner, [k.split(".", 1)[1] for k in keys], tensors)
        problems = _identity_problems(recorded, now)
        if problems:
            raise CheckpointError(
                f"component '{component}': the frozen base this checkpoint was trained with does not match the "
                f"model built now: " + "; ".join(problems) + f". Checkpoint base: source={recorded.get('source')!r}, "
                f"class={recorded['class']}; built now: source={now.get('source')!r}, class={now['class']}"
            )
        if recorded.get("source") != now.get("source"):
            log.warning(
                "component '%s': frozen base source %r differs from the checkpoint's %r; weights match, continuing",
                component,
                now.get("source"),
                recorded.get("source"),
            )
    missing = [k for k in dropped if k not in current]
    if missing:
        raise CheckpointError(
            f"checkpoint relies on frozen weights {missing[:3]}{' ...' if len(missing) > 3 else ''} that the model "
            f"{type(module).__name__} does not have; build the model with the recipe it was trained with"
        )
    state = checkpoint["state_dict"]
    for key in dropped:
        state.setdefault(key, current[key])


def size_report(checkpoint: Mapping[str, Any]) -> str:
    """One line: bytes kept in the checkpoint's state dict vs a full state-dict save."""
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


# ---------------------------------------------------------------------------- file IO
def save_atomically(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace`` it into place.

    Readers see either the previous file or the complete new one, never a partial write. The
    temporary name starts with ``.`` and ends with ``.tmp`` so checkpoint globbing skips it.
    """
    from rsvlm.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file holds pickled objects other than tensors and plain containers
            (refused), or it is truncated / not a checkpoint.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"checkpoint file not found: {p}")
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
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return load_checkpoint(str(path).removeprefix("file://"), map_location=map_location or "cpu")


# ---------------------------------------------------------------------------- LoRA export
def _find_causal_lm(module: nn.Module) -> nn.Module:
    llm = getattr(module, "llm", module)
    if not hasattr(llm, "model"):
        raise TypeError(f"export_lora: {type(module).__name__} has no `llm` with a `model` (expected a CausalLM)")
    return llm


def export_lora(module: nn.Module, out_dir: str | os.PathLike, merged: bool = False, overwrite: bool = False) -> Path:
    """Write the LLM's LoRA adapters (peft format) or the merged model (transformers format).

    Args:
        module: a model with an ``llm`` (:class:`rsvlm.llm.causal_lm.CausalLM`), or the CausalLM.
        out_dir: output folder (created); refused when it holds files unless ``overwrite``.
        merged: ``False``: ``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
            ``peft.PeftModel.from_pretrained(base, out_dir)`` on the same base model.
            ``True``: the base with the adapters merged in (``merge_and_unload`` on a copy, so
            the training model is untouched), loadable with
            ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)``.
        overwrite: allow writing into a non-empty folder.

    The tokenizer (with rsvlm's added special tokens) is saved beside the weights.

    Returns:
        ``out_dir``.
    """
    from peft import PeftModel

    llm = _find_causal_lm(module)
    model = llm.model
    if not isinstance(model, PeftModel):
        raise ValueError(
            f"export_lora: the LLM ({type(model).__name__}) has no peft adapters; build CausalLM with lora=... "
        )
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"export_lora: {out} is not empty; pass overwrite=True to write into it")
    out.mkdir(parents=True, exist_ok=True)
    if merged:
        merged_model = copy.deepcopy(model).merge_and_unload()
        merged_model.save_pretrained(out, safe_serialization=True)
    else:
        model.save_pretrained(out, safe_serialization=True)
    tokenizer = getattr(llm, "_tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


__all__: list[str] = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "component_identity",
    "export_lora",
    "keep_trained_only",
    "load_checkpoint",
    "make_weights_only_safe",
    "plain_hparams",
    "restore_frozen",
    "save_atomically",
    "size_report",
    "trained_keys",
]
