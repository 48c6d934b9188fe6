"""``rsvlm summarize``: build a recipe's model on the meta device and count its parameters.

No weights are read and nothing is downloaded: every ``pretrained`` flag is turned off, every
checkpoint path dropped, a CLIP tower, SAM 2 or BERT named by a hub id built from its architecture
(:mod:`rsvlm.experiments.architectures`); an LLM whose weights are a local folder that is absent
is built from the ``config`` the recipe names beside it; on the meta device, :class:`rsvlm.llm.causal_lm.CausalLM` builds an LLM
given by a Hugging Face id from the architecture config shipped with rsvlm (or the
``config.json`` of a local folder).

Before the tables it prints the run's pipeline as the recipe states it: where weights start
from (``encoder_init``: the MVPNet visual pre-training; ``component_init``; ``init_from``) and
the stages in order with the components each trains; then one parameter table per stage.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from rsvlm.experiments.architectures import with_architecture
from rsvlm.io.yaml_file import read_yaml

WEIGHT_PATH_KEYS = ("checkpoint", "checkpoint_path", "sam_checkpoint", "encoder_init", "init_from", "component_init")


def summarize_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rsvlm summarize", description=__doc__)
    parser.add_argument("--config", required=True, help="recipe YAML")
    args = parser.parse_args(argv)
    model = build_on_meta(args.config)
    config = read_yaml(args.config) or {}
    print("\n".join(pipeline_lines(config["model"], getattr(model, "stages", None))))
    name = Path(args.config).name
    for number, (stage, epochs) in enumerate(stage_order(config["model"]), start=1):
        if hasattr(model, "set_stage"):
            model.set_stage(stage)
        when = f"stage {number} {stage!r}" + (f", {epochs} epochs" if epochs is not None else "")
        print(summary_table(model, title=f"{name}, {when} (built on the meta device, no weights)"))
    return 0


def stage_order(model_config: dict[str, Any]) -> list[tuple[str, int | None]]:
    """The stages a recipe's model trains, in order, with their epochs (None: the whole run)."""
    init_args = model_config.get("init_args") or {}
    schedule = init_args.get("schedule")
    if schedule:
        return [(str(phase["stage"]), int(phase["epochs"])) for phase in schedule]
    stage = init_args.get("stage")
    return [(str(stage), None)] if stage is not None else [("default", None)]


def pipeline_lines(model_config: dict[str, Any], stages: dict[str, list[str]] | None = None) -> list[str]:
    """What a run of the recipe does, in order: initial weights, then each stage and the
    components it trains (``stages``: the built model's stage → components)."""
    init_args = model_config.get("init_args") or {}
    lines = [f"pipeline of {model_config.get('class_path', 'the model')}:"]
    if init_args.get("encoder_init"):
        lines.append(
            f"  encoder starts from the MVPNet visual pre-training: encoder_init = {init_args['encoder_init']}"
        )
    for component, path in (init_args.get("component_init") or {}).items():
        lines.append(f"  {component} starts from: component_init.{component} = {path}")
    if init_args.get("init_from"):
        lines.append(f"  the whole model starts from an earlier run: init_from = {init_args['init_from']}")
    order = stage_order(model_config)
    for number, (stage, epochs) in enumerate(order, start=1):
        trains = (stages or {}).get(stage)
        what = f": trains {', '.join(trains)}" if trains else ""
        span = f" for {epochs} epochs" if epochs is not None else ""
        lines.append(f"  stage {number} {stage!r}{span}{what}")
    if len(order) > 1:
        lines.append("  order: " + " → ".join(f"stage {i} {stage!r}" for i, (stage, _) in enumerate(order, start=1)))
    lines.append(f"  metrics: {_averaging(init_args.get('metric_average', 'global'))}")
    lines.append(f"  decoding (validation, test, predict): {_decoding(init_args.get('generation') or {})}")
    return lines


def _averaging(average: str) -> str:
    return "mean of per-image scores" if average == "image" else "one confusion matrix over the split"


def _decoding(generation: dict[str, Any]) -> str:
    """The generation settings a run decodes with, in words (the model's defaults when unset)."""
    from rsvlm.llm.generation import GenerationSettings

    settings = GenerationSettings(**generation)
    if not settings.do_sample:
        return f"greedy, at most {settings.max_new_tokens} tokens"
    seed = "unseeded" if settings.seed is None else f"seed {settings.seed}"
    return (
        f"sampling at temperature {settings.temperature}, top-p {settings.top_p}, repetition penalty "
        f"{settings.repetition_penalty}, {seed}, at most {settings.max_new_tokens} tokens"
    )


def build_on_meta(recipe: str | Path):
    """Instantiate the recipe's ``model`` section under ``torch.device("meta")``."""
    from rsvlm.io.recipe_errors import RecipeError

    path = Path(recipe)
    config = read_yaml(path) or {}
    if "model" not in config:
        raise RecipeError(f"recipe {path} has no 'model' section")
    return build_model_on_meta(config["model"], where=str(path))


def build_model_on_meta(model_config: dict[str, Any], where: str = "recipe"):
    """Instantiate a recipe's ``model`` section (``class_path`` + ``init_args``, read from
    ``where``) under ``torch.device("meta")``, without its weight sources (:func:`without_weights`);
    a section that does not parse or build is one :class:`~rsvlm.io.recipe_errors.RecipeError`."""
    import lightning as L
    from jsonargparse import ArgumentParser

    from rsvlm.io.recipe_errors import parse_and_build

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    with torch.device("meta"), SkipMetaWeightFills():
        return parse_and_build(parser, {"model": without_weights(model_config)}, where).model


class SkipMetaWeightFills(TorchFunctionMode):
    """Inside ``with``: random and clamping fills of a meta tensor (weight initialisation) return
    it untouched. A meta tensor has no values to fill, and torch runs these ops' meta kernels in
    Python (``clamp_`` ~3 ms, ``normal_`` ~1 ms a call; timm's ``trunc_normal_`` uses both), so
    building the paper's SPEX on the meta device took 13 s instead of 2. Only ops whose other
    arguments are not tensors are skipped: they cannot fail on shapes, so a shape error still
    raises as it would on a real device."""

    SKIPPED = frozenset((torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.clamp_, torch.Tensor.erfinv_))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (
            func in self.SKIPPED
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
            and not any(isinstance(a, torch.Tensor) for a in (*args[1:], *kwargs.values()))
        ):
            return args[0]
        return func(*args, **kwargs)


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
        with_architecture(node["class_path"].rsplit(".", 1)[-1], init_args)
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
