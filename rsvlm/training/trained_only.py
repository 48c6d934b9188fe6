"""Trained-only checkpoints: keep what cannot be rebuilt, identify the frozen bases, restore them on load.

A SPEX run with a frozen 1.5 B-parameter LLM trains LoRA adapters, new token embeddings, the
encoder, the fusion, the bridge and the decoder; copying the frozen LLM into every checkpoint
would make each one several GB. :func:`keep_trained_only` (called from a LightningModule's
``on_save_checkpoint``) drops a parameter only when it is both

* frozen: its component did not declare it trainable (``module.trainable.declared``, see
  :mod:`rsvlm.models.trainable`), and
* restored by a named source: it lies in a module (the component or one of its submodules)
  whose ``weights_source`` attribute names the path or hub id its weights were loaded from.

The ``weights_source`` contract: a component sets ``weights_source`` (``str``) on itself, or on
the submodules it loaded, when those weights come from a checkpoint file, a Hugging Face id or
timm's pretrained weights (building the same recipe loads them again). Randomly initialised
weights have no source and always stay in the checkpoint, frozen or not, so a model trained
with any seed loads into a model built with any other. Per component with dropped parameters
the checkpoint records an *identity* of that frozen base::

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
bases — loaded from a source, same tensor names and shapes, same architecture config, and
weights whose strided sample (the *fingerprint*) agrees — and fills the dropped keys from the
module's own state dict. A mismatch is an error naming the component and what differs, never a
silently different model; a source spelled differently (a local copy) only warns. Writing and
reading the file itself is :mod:`rsvlm.training.checkpoints`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from rsvlm.training.checkpoints import CheckpointError, human_bytes, make_weights_only_safe, size_report

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


def weights_sources(component: nn.Module) -> dict[str, str]:
    """Name prefix (relative to ``component``, ``""`` for all of it) → the path or hub id that
    restores the parameters under it: every submodule with a ``weights_source`` set."""
    sources = {}
    for name, sub in component.named_modules():
        source = getattr(sub, "weights_source", None)
        if source is not None:
            name = _clean_name(f"{name}.") if name else ""
            sources[name] = str(source)
    return sources


def _source_of(key: str, sources: Mapping[str, str]) -> str | None:
    """The source restoring relative key ``key`` (the innermost declaring module wins)."""
    found = [prefix for prefix in sources if key.startswith(prefix)]
    return sources[max(found, key=len)] if found else None


def component_identity(component: nn.Module, names: list[str], tensors: list[torch.Tensor]) -> dict[str, Any]:
    """What identifies the frozen tensors ``names`` (relative keys) of ``component``.

    Returns a dict of plain values: ``class``, ``source`` (the paths / hub ids the tensors are
    restored from, ``" + "``-joined; None when none is), ``config`` (the architecture config of
    a wrapped transformers model, without loading details), ``num_params``, ``layout_sha256``
    (hash of the names and shapes) and ``fingerprint`` (a float32 tensor of sampled values,
    None on the meta device).
    """
    layout = "\n".join(f"{n}:{tuple(t.shape)}" for n, t in zip(names, tensors))
    config = _hf_config(component)
    sources = weights_sources(component)
    found = sorted({s for n in names if (s := _source_of(n, sources)) is not None})
    source = " + ".join(found) or None
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


def _unique(tensors: Iterable[Any]) -> list[torch.Tensor]:
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
    sources = {name: weights_sources(part) for name, part in module.trainable.components.items()}
    dropped: dict[str, list[str]] = {}
    for key in state:
        component = _component_of(key, components)
        if component is None or key in keep or key in buffers:
            continue
        # Frozen but with no source (a random initialisation): only the checkpoint has it.
        if _source_of(key.split(".", 1)[1], sources[component]) is not None:
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


def _check_shapes(module: nn.Module, state: Mapping[str, Any]) -> None:
    """A tensor the checkpoint holds with another shape than the model built now is a one-line
    error naming its component (a checkpoint of another architecture)."""
    current = module.state_dict()
    for key, value in state.items():
        now = current.get(key)
        if isinstance(value, torch.Tensor) and now is not None and tuple(value.shape) != tuple(now.shape):
            raise CheckpointError(
                f"component '{key.split('.', 1)[0]}': checkpoint tensor {key} has shape {tuple(value.shape)}, the "
                f"model built now has {tuple(now.shape)}; build the model with the recipe it was trained with"
            )


def restore_frozen(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Fill the keys :func:`keep_trained_only` dropped from the module's current (fresh) weights.

    Call it before the strict ``load_state_dict`` (Lightning's ``on_load_checkpoint`` is). A
    checkpoint without an ``"rsvlm"`` entry (a full save) is left as it is.

    Raises:
        CheckpointError: a recorded frozen base does not match the module (names the component
            and what differs), or the module lacks a dropped key, or it is on the meta device.
    """
    if "state_dict" in checkpoint:
        _check_shapes(module, checkpoint["state_dict"])
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
        if recorded.get("source") and not now.get("source"):
            problems.insert(0, f"its frozen weights were loaded from {recorded['source']!r}, now from no source")
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


__all__: list[str] = [
    "component_identity",
    "human_bytes",
    "keep_trained_only",
    "restore_frozen",
    "size_report",
    "trained_keys",
    "weights_sources",
]
