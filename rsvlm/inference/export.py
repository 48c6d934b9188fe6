"""Shareable model folders: ``rsvlm export RUN --to FOLDER`` and loading them back offline.

Layout (uploadable to the Hugging Face Hub as it is)::

    FOLDER/README.md           model card: system, data, metrics of the run record, use and limits
    FOLDER/model.safetensors   the checkpoint's weights: trained parts, and every weight no named
                               source restores (as the run's trained-only checkpoint keeps them)
    FOLDER/rsvlm.json          format, rsvlm version, bands, normalisation, tile, the identities of
                               the frozen bases left out (source, config, fingerprint), run metrics
    FOLDER/recipe.yaml         the run's model and data sections, data made prediction-only
                               (band statistics from stats.json, no training data)
    FOLDER/stats.json          the band statistics the model was trained with
    FOLDER/tokenizer/          the LLM's Hugging Face tokenizer, when the recipe names one

:func:`load_folder` builds ``recipe.yaml``'s model (the frozen bases come from their sources, as
when the run was built: a local folder or a cached hub id), checks them against the recorded
identities (:func:`rsvlm.training.trained_only.restore_frozen`) and loads the weights.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from rsvlm.contracts import RsvlmError
from rsvlm.io.atomic import atomic_write_text
from rsvlm.io.yaml_file import read_yaml

EXPORT_FORMAT = 1
MARKER = "rsvlm.json"
TOKENIZER_DIR = "tokenizer"
FILES = ("README.md", "model.safetensors", MARKER, "recipe.yaml", "stats.json")


class ExportError(RsvlmError, ValueError):
    """An export that cannot be written or a model folder that cannot be read."""


def _plain(value: Any) -> Any:
    """JSON-ready copy: tensors → lists."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _run_metrics(ckpt: Path) -> dict[str, Any]:
    """The run record (``metrics.json``) nearest above the checkpoint, or {}."""
    for folder in list(ckpt.parents)[:4]:
        if (folder / "metrics.json").is_file():
            return json.loads((folder / "metrics.json").read_text())
    return {}


def export(run: str | os.PathLike, to: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the model folder of a run (or checkpoint) into ``to``; returns ``to``.

    Raises:
        ExportError: ``to`` holds an export file and ``overwrite`` is False (names it).
    """
    from safetensors.torch import save_file

    from rsvlm.inference.evaluate import ModelInput, load_model
    from rsvlm.inference.runs import resolve_run
    from rsvlm.training.checkpoints import load_checkpoint

    recipe_path, ckpt = resolve_run(run)
    out = Path(to).expanduser()
    existing = [out / name for name in FILES if (out / name).exists()]
    if existing and not overwrite:
        raise ExportError(f"{existing[0]} already exists; pass --overwrite to replace the export in {out}")
    checkpoint = load_checkpoint(ckpt)  # read once: exported as it is, then loaded to check it fits the recipe
    state = {k: v.detach().contiguous().clone() for k, v in checkpoint["state_dict"].items()}
    model, datamodule = load_model(recipe_path, None)
    model.load_weights(checkpoint)
    settings = ModelInput.from_datamodule(datamodule)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "rsvlm_export": str(EXPORT_FORMAT)})
    os.replace(tmp, out / "model.safetensors")

    config = read_yaml(recipe_path) or {}
    data = dict(config["data"])
    data["init_args"] = {
        **data.get("init_args", {}),
        "records": None,
        "generate": None,
        "stats": "stats.json",
        "predict_paths": None,
    }
    bands = list(settings.bands)
    stats = {"bands": {b: {"mean": float(m), "std": float(s)} for b, m, s in zip(bands, settings.mean, settings.std)}}
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1), overwrite=True)
    model_config = copy.deepcopy(config["model"])
    tokenizer = TOKENIZER_DIR if _save_tokenizer(model, model_config, out) else None
    recipe = {"seed_everything": config.get("seed_everything", 0), "model": model_config, "data": data}
    atomic_write_text(out / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False), overwrite=True)
    metrics = _run_metrics(ckpt)
    generated = bool(config["data"].get("init_args", {}).get("generate"))
    marker = {
        "format": EXPORT_FORMAT,
        "rsvlm_version": _version(),
        "model_class": config["model"].get("class_path"),
        "bands": bands,
        "normalization": settings.normalization,
        "index_channels": list(settings.index_channels),
        "predict_statistics": settings.statistics,
        "predict_flips": list(settings.flips),
        "tile": settings.tile,
        "categories": getattr(datamodule, "categories", None),
        "source_checkpoint": str(ckpt),
        "trained_only": _plain(checkpoint.get("rsvlm", {})),
        "training_data": "generated scenes" if generated else config["data"].get("init_args", {}).get("records"),
        "metrics": metrics,
        "tokenizer": tokenizer,
    }
    atomic_write_text(out / MARKER, json.dumps(marker, indent=1), overwrite=True)
    from rsvlm.inference.model_card import model_card

    atomic_write_text(out / "README.md", model_card(marker, recipe, model), overwrite=True)
    return out


def _save_tokenizer(model: Any, model_config: dict[str, Any], out: Path) -> bool:
    """Save a Hugging Face tokenizer (named by id or folder in the recipe) into ``out/tokenizer``
    and point the recipe at it, so the folder loads without the hub; a tokenizer the recipe
    builds itself (a ``class_path``, like the demo's) needs nothing. Returns whether it saved."""
    llm = model_config.get("init_args", {}).get("llm", {}).get("init_args", {})
    named = llm.get("tokenizer", llm.get("model"))
    if not isinstance(named, str) or getattr(model, "llm", None) is None:
        return False
    model.llm.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    llm["tokenizer"] = TOKENIZER_DIR
    return True


def _version() -> str:
    import rsvlm

    return rsvlm.__version__


def is_model_folder(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / MARKER).is_file()


def load_folder(path: str | os.PathLike) -> tuple[Any, Any]:
    """``(model in eval mode, data module)`` of an exported folder, offline.

    Raises:
        ExportError: a file of the folder is missing, or its format is newer than this rsvlm.
        CheckpointError: a frozen base that the weights need is missing or differs (names it).
    """
    from safetensors.torch import load_file

    from rsvlm.inference.evaluate import build_from_config
    from rsvlm.training.trained_only import restore_frozen

    folder = Path(path).expanduser()
    missing = [name for name in FILES if name != "README.md" and not (folder / name).is_file()]
    if missing:
        raise ExportError(f"{folder}: not an rsvlm model folder, {missing[0]} is missing")
    marker = json.loads((folder / MARKER).read_text())
    if int(marker.get("format", 0)) > EXPORT_FORMAT:
        raise ExportError(f"{folder / MARKER}: format {marker['format']} is newer than this rsvlm reads")
    recipe = read_yaml(folder / "recipe.yaml")
    recipe["data"]["init_args"]["stats"] = str(folder / "stats.json")
    llm = recipe["model"].get("init_args", {}).get("llm", {}).get("init_args", {})
    if llm.get("tokenizer") == TOKENIZER_DIR:
        llm["tokenizer"] = str(folder / TOKENIZER_DIR)
    state = load_file(str(folder / "model.safetensors"))
    checkpoint: dict[str, Any] = {"state_dict": state}
    trained_only = marker.get("trained_only") or {}
    if trained_only:
        for identity in trained_only.get("frozen_bases", {}).values():
            if identity.get("fingerprint") is not None:
                identity["fingerprint"] = torch.tensor(identity["fingerprint"])
        checkpoint["rsvlm"] = trained_only
    bases = {name: str(b.get("source")) for name, b in trained_only.get("frozen_bases", {}).items()}
    for name, source in bases.items():
        local = Path(source).expanduser()
        if (local.is_absolute() or source.startswith((".", "~"))) and not local.exists():
            raise ExportError(
                f"{folder}: its weights need the frozen base of {name!r} from {source}, which does not exist "
                "here; put it there (or edit recipe.yaml to where it is)"
            )
    try:
        model, datamodule = build_from_config(recipe, where=str(folder / "recipe.yaml"))
    except OSError as err:  # a hub id not in the cache
        if not bases:
            raise
        listed = "; ".join(f"{name} from {source}" for name, source in bases.items())
        raise ExportError(
            f"{folder}: cannot build the frozen bases its weights need ({listed}): {str(err).splitlines()[0]}"
        ) from err
    restore_frozen(model, checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model.eval(), datamodule
