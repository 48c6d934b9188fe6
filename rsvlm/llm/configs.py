"""Architecture configs: the ones shipped with rsvlm, ``config.json`` files and dict overrides.

They let :class:`~rsvlm.llm.causal_lm.CausalLM` build a randomly initialised model, or count the
parameters of a paper's model on the meta device, without downloading any weights.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from rsvlm.contracts import MissingFileError


def shipped_configs() -> dict[str, Path]:
    """Architecture configs shipped with rsvlm: name → path of the ``config.json`` copy."""
    folder = resources.files("rsvlm.llm") / "configs"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".json")}


def load_config_dict(source: str | dict[str, Any]) -> dict[str, Any]:
    """Resolve ``source`` to a plain config dict.

    Args:
        source: a shipped name (``"qwen2.5-1.5b"``), a path to a ``config.json`` or to a folder
            holding one, or a dict; a dict may name ``"base"`` (shipped name or path) whose values
            its other keys override.
    """
    if isinstance(source, dict):
        overrides = dict(source)
        base = overrides.pop("base", None)
        merged = load_config_dict(base) if base is not None else {}
        merged.update(overrides)
        return merged
    shipped = shipped_configs()
    key = str(source).lower().removesuffix(".json")
    if key in shipped:
        return json.loads(shipped[key].read_text())
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return json.loads(path.read_text())
    raise MissingFileError(
        f"LLM config {source!r} is neither a shipped config ({sorted(shipped)}) nor a config.json file or folder"
    )


def build_config(values: dict[str, Any], trust_remote_code: bool = False) -> PretrainedConfig:
    """A transformers config from a plain dict holding ``model_type``."""
    values = dict(values)
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ValueError(
            f"LLM config needs 'model_type' (e.g. 'qwen2') or a 'base' (e.g. 'qwen2.5-0.5b'); got keys {sorted(values)}"
        )
    for key in ("architectures", "transformers_version", "_name_or_path"):
        values.pop(key, None)
    return AutoConfig.for_model(model_type, trust_remote_code=trust_remote_code, **values)


def config_source_for(model: str) -> str:
    """Where the architecture of ``model`` (a folder or hub id) comes from without its weights:
    the folder's ``config.json`` or the shipped config of the same name."""
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file():
        return str(folder)
    name = model.rstrip("/").split("/")[-1].lower()
    # Meta's transformers-format repositories end in "-hf" (meta-llama/Llama-2-13b-hf → llama-2-13b).
    if name not in shipped_configs():
        name = name.removesuffix("-hf")
    if name not in shipped_configs():
        raise ValueError(
            f"building {model!r} on the meta device needs its architecture: pass `config` "
            f"(a config.json path or one of {sorted(shipped_configs())}) or a local folder with config.json"
        )
    return name


def architecture_values(config: str | dict[str, Any] | None, model: str | None, tokenizer: Any) -> dict[str, Any]:
    """The config values a randomly initialised LLM is built from: ``config`` (a shipped name, a
    ``config.json`` path or a dict) or, without it, the shipped architecture ``model`` names.

    A dict is a custom model: its vocabulary is the tokenizer's unless it states ``vocab_size``, and
    so are its bos/eos/pad ids (the base config's belong to the base vocabulary). A name or path is
    an exact architecture: its ``vocab_size`` stays (the embeddings grow later if it is too small).
    """
    values = load_config_dict(config if config is not None else config_source_for(model))
    if tokenizer is not None and isinstance(config, dict) and "vocab_size" not in config:
        values["vocab_size"] = len(tokenizer)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if key not in config:
                values[key] = getattr(tokenizer, key, None)
    return values
