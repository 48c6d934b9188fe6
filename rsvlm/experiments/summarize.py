"""``rsvlm summarize``: build a recipe's model on the meta device and count its parameters.

No weights are read and nothing is downloaded: every ``pretrained`` flag is turned off and every
checkpoint path dropped; on the meta device, :class:`rsvlm.llm.causal_lm.CausalLM` builds an LLM
given by a Hugging Face id from the architecture config shipped with rsvlm (or the
``config.json`` of a local folder).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

WEIGHT_PATH_KEYS = ("checkpoint", "checkpoint_path", "encoder_init")


def summarize_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rsvlm summarize", description=__doc__)
    parser.add_argument("--config", required=True, help="recipe YAML")
    args = parser.parse_args(argv)
    model = build_on_meta(args.config)
    print(summary_table(model, title=f"{Path(args.config).name} (built on the meta device, no weights)"))
    return 0


def build_on_meta(recipe: str | Path):
    """Instantiate the recipe's ``model`` section under ``torch.device("meta")``."""
    import lightning as L
    import torch
    from jsonargparse import ArgumentParser

    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    if "model" not in config:
        raise KeyError(f"recipe {path} has no 'model' section")
    model_config = without_weights(config["model"])
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    parsed = parser.parse_object({"model": model_config})
    with torch.device("meta"):
        return parser.instantiate_classes(parsed).model


def without_weights(node: Any) -> Any:
    """A copy of a recipe subtree with every weight source removed (see module docstring)."""
    node = copy.deepcopy(node)
    if isinstance(node, list):
        return [without_weights(item) for item in node]
    if not isinstance(node, dict):
        return node
    init_args = node.get("init_args")
    if isinstance(node.get("class_path"), str) and isinstance(init_args, dict):
        if "pretrained" in init_args:
            init_args["pretrained"] = False
        for key in WEIGHT_PATH_KEYS:
            if init_args.get(key) is not None:
                init_args[key] = None
    return {key: without_weights(value) for key, value in node.items()}


def summary_table(model, title: str = "") -> str:
    """Markdown table of total and trainable parameters per component."""
    from rsvlm.models.trainable import TrainableSets, format_parameter_table

    if hasattr(model, "trainable"):
        sets = model.trainable
    else:  # a model without declared components: one row per direct child that holds parameters
        sets = TrainableSets(
            {name: child for name, child in model.named_children() if any(True for _ in child.parameters())}
        )
    return format_parameter_table(sets.rows(), title=title)
