"""The paper-size GeoMag on one GPU with random weights: a bf16 training step (time, peak GPU memory)
and MagCrop + answer time per sample for each granularity. Prints Markdown tables.

The model is ``recipes/geomag.yaml`` built from architectures alone, nothing read or downloaded: the
weight sources are stripped as ``rsvlm summarize`` strips them
(:func:`rsvlm.experiments.summarize.without_weights`: CLIP ViT-L/14-336, SAM 2.1 Hiera-L and
BERT-base from :data:`rsvlm.experiments.architectures.HUB_ARCHITECTURES`, the LLaVA-1.5-7B LM from
the shipped ``vicuna-7b-v1.5`` config with its LoRA r 8; no projector or classifier checkpoint), and
the offline demo tokenizer stands in for LLaMA's and BERT's (only the sequence lengths matter). The
modules are constructed directly on the GPU (``with torch.device("cuda")``: every weight drawn by
its own initialiser there, and the buffers a constructor computes, such as rotary frequencies,
computed there, which ``to_empty`` on a meta-built model would leave as garbage).

The batches are generated scenes (:class:`rsvlm.data.multitask.generated.GeneratedInstructData`)
read by the recipe's :class:`~rsvlm.data.multitask.datamodule.InstructDataModule` at its 336² input
(the recipe's ``seg_text`` is unset, so ``[SEG]`` is written as the positions' codebook
``[SEG0][SEG1][SEG2]``, as the demo recipe does). The measurements are those of
``benchmarks/geomag.py``: MagCrop (``model.cropper``, PSC on the 7B LM, routed by the gold
granularity; the BERT-base classifier that routes test samples is timed beside it), the answer
(``predict_masks``, up to ``--new-tokens`` greedy tokens; a random LM rarely stops early) and one
optimiser step of ``training_step`` in bf16 autocast (LLM weights bf16 as the recipe loads them,
clipping 1.0, the recipe's AdamW groups), peak memory by ``torch.cuda.max_memory_allocated``.

    python benchmarks/geomag_gpu.py                  # a few minutes on an H100/H200-class GPU
    python benchmarks/geomag_gpu.py --dry-run        # the same code on tiny shapes on the CPU (seconds)
    python benchmarks/geomag_gpu.py --device cpu --tiny --steps 1 --warmup 0 --repeats 1

``--tiny`` keeps the recipe's wiring (LoRA on a frozen Vicuna-architecture LM, N = 3 codebook
tokens, frozen SAM 2 and BERT, MagCrop's settings) with the component sizes of
``recipes/geomag-demo.yaml`` (and a 1-layer BERT), so the script is checked without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from geomag import (  # noqa: E402
    device_name,
    granularity_batches,
    granularity_rows,
    prepare,
    print_granularity_table,
    print_train_table,
    to_device,
    train_step_row,
    training_batch,
)

DEMO_TOKENIZER = {"class_path": "rsvlm.data.spie.corpus.SpieDemoTokenizer"}
#: A 1-layer BERT for ``--tiny`` (the demo tokenizer's vocabulary fits in it).
TINY_BERT = {"vocab_size": 1500, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
#: Settings of ``--dry-run``: tiny shapes on the CPU, one call of everything.
DRY_RUN = {
    "device": "cpu",
    "tiny": True,
    "steps": 1,
    "warmup": 0,
    "repeats": 1,
    "new_tokens": 4,
    "scenes": 3,
    "per_batch": 1,
}


# ---------------------------------------------------------------------- recipe → random-weight model
def nodes(tree: Any):
    """Every ``{class_path, init_args}`` node of a recipe subtree, depth first."""
    if isinstance(tree, dict):
        if isinstance(tree.get("class_path"), str) and isinstance(tree.get("init_args"), dict):
            yield tree
        for value in tree.values():
            yield from nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from nodes(value)


def random_weight_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """A recipe's ``model`` section that builds with random weights and no download: weight sources
    stripped as ``rsvlm summarize`` does, an LLM named only by a hub id built from its shipped
    config, and the offline demo tokenizer wherever a tokenizer would come from the hub."""
    from rsvlm.experiments.summarize import without_weights
    from rsvlm.llm.configs import config_source_for

    config = without_weights(model_config)
    for node in nodes(config):
        args, name = node["init_args"], node["class_path"].rsplit(".", 1)[-1]
        if name == "CausalLM":
            if args.get("model") is not None:
                args.setdefault("config", config_source_for(args["model"]))
                args.pop("model")
            args.setdefault("tokenizer", DEMO_TOKENIZER)
        elif name == "TaskGranularityClassifier" and isinstance(args.get("text_encoder"), dict):
            args.setdefault("tokenizer", DEMO_TOKENIZER)
    return config


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """``tree[a][b]... = value`` for a dotted ``path`` (``"encoder.init_args.image_size"``)."""
    *parents, last = path.split(".")
    for key in parents:
        tree = tree[key]
    tree[last] = copy.deepcopy(value)


def tiny_geomag(model_config: dict[str, Any], demo_recipe: Path = REPO / "recipes" / "geomag-demo.yaml") -> int:
    """Shrink the paper GeoMag (in place) to the demo recipe's component sizes; returns the image side."""
    demo = yaml.safe_load(demo_recipe.read_text())["model"]["init_args"]
    llm = model_config["init_args"]["llm"]["init_args"]
    base = llm["config"] if isinstance(llm["config"], str) else llm["config"].get("base")
    size = int(demo["encoder"]["init_args"]["image_size"])
    for path in (
        "encoder.init_args.config",
        "encoder.init_args.image_size",
        "fusion.init_args",
        "projector.init_args.in_dim",
        "projector.init_args.out_dim",
        "bridge.init_args.in_dim",
        "bridge.init_args.out_dim",
        "mask_encoder.init_args.config",
        "mask_encoder.init_args.image_size",
        "decoder.init_args.config",
        "cropper.init_args.image_level_size",
    ):
        keys = path.split(".")
        value: Any = demo
        for key in keys:
            value = value[key]
        set_path(model_config["init_args"], path, value)
    llm["config"] = {**demo["llm"]["init_args"]["config"], "base": base}
    classifier = model_config["init_args"]["cropper"]["init_args"].get("classifier")
    if classifier is not None:
        classifier["init_args"]["text_encoder"] = dict(TINY_BERT)
    return size


def build_on_device(model_config: dict[str, Any], device: torch.device, seed: int = 0) -> Any:
    """Instantiate a recipe's ``model`` section with every tensor created on ``device`` (random
    weights drawn there; see the module docstring for why not ``to_empty`` from meta)."""
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    parsed = parser.parse_object({"model": model_config})
    torch.manual_seed(seed)
    with torch.device(device):
        model = parser.instantiate_classes(parsed).model
    return model.to(device)  # anything a constructor put on the CPU explicitly


def generated_datamodule(
    config: dict[str, Any], model: Any, scenes: int, scene_size: int, root: Path, batch_size: int | None
) -> Any:
    """The recipe's :class:`InstructDataModule` settings on ``scenes`` generated scenes instead of its sources."""
    from rsvlm.bridges.positions import SegGroups
    from rsvlm.data.multitask.datamodule import InstructDataModule
    from rsvlm.data.multitask.generated import GeneratedInstructData

    data = dict((config.get("data") or {}).get("init_args") or {})
    keep = {
        k: data[k] for k in ("image_size", "pad", "bands", "scale", "mean", "std", "alpha", "seg_text") if k in data
    }
    if keep.get("seg_text") is None and isinstance(model.positions, SegGroups):
        keep["seg_text"] = "".join(model.positions.tokens)  # the records write [SEG]; the LLM reads the codebook
    generate = GeneratedInstructData(
        root=str(root), n_train=scenes, n_val=0, n_test=0, size=scene_size, seed=0, progress=False
    )
    return InstructDataModule(
        generate=generate,
        batch_size=batch_size or int(data.get("batch_size", 2)),
        num_workers=0,
        pin_memory=False,
        **keep,
    )


def require_device(device: torch.device, script: str) -> None:
    """Exit with a clear message when ``device`` is CUDA and no CUDA GPU is present."""
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"{script} needs a CUDA GPU (torch.cuda.is_available() is False); "
            "--dry-run (or --device cpu --tiny) checks the script on tiny shapes without one"
        )


def common_arguments(parser: argparse.ArgumentParser, recipe: str, precision: str = "bf16-mixed") -> None:
    """The arguments the paper-size GPU scripts share."""
    parser.add_argument("--recipe", default=recipe)
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu with --tiny checks the script")
    parser.add_argument("--tiny", action="store_true", help="the recipe's wiring at tiny sizes (CPU check)")
    parser.add_argument("--dry-run", action="store_true", help="--device cpu --tiny, one call of everything")
    parser.add_argument("--precision", default=precision, choices=["bf16-mixed", "16-mixed", "32-true"])
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=4, help="generated scenes (4 records each)")
    parser.add_argument("--scene-size", type=int, default=128, help="generated scene side (resized to the input)")
    parser.add_argument("--root", default=None, help="folder for the generated scenes (default: a temporary one)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments; ``--dry-run`` sets :data:`DRY_RUN`'s settings where the command line left the default."""
    args = parser.parse_args(argv)
    if args.dry_run:
        for key, value in DRY_RUN.items():
            if hasattr(args, key) and getattr(args, key) == parser.get_default(key):
                setattr(args, key, value)
    if args.tiny:
        args.scene_size = min(args.scene_size, 64)
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, "recipes/geomag.yaml")
    parser.add_argument("--per-batch", type=int, default=2, help="samples per granularity batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed MagCrop / answer calls per granularity")
    parser.add_argument("--new-tokens", type=int, default=None, help="answer length limit (default: the recipe's)")
    args = parse(parser, argv)
    device = torch.device(args.device)
    require_device(device, "benchmarks/geomag_gpu.py")
    recipe = REPO / args.recipe
    config = yaml.safe_load(recipe.read_text())
    model_config = random_weight_config(config["model"])
    if args.tiny:
        config["data"]["init_args"]["image_size"] = tiny_geomag(model_config)
    if args.new_tokens:
        model_config["init_args"].setdefault("generation", {})["max_new_tokens"] = args.new_tokens
    model = build_on_device(model_config, device, int(config.get("seed_everything", 0)))
    with tempfile.TemporaryDirectory() as tmp:
        datamodule = generated_datamodule(
            config, model, args.scenes, args.scene_size, Path(args.root or tmp), args.batch_size
        )
        optimizer = prepare(model, datamodule)
        batches = {g: to_device(b, device) for g, b in granularity_batches(datamodule, args.per_batch).items()}
        train = to_device(training_batch(datamodule), device)
    size = "tiny shapes" if args.tiny else "paper size"
    print(
        f"\n{recipe.name} ({size}, random weights) on {device_name(device)}, torch {torch.__version__}; "
        f"input {datamodule.image_size}²; median of {args.repeats} calls after {args.warmup} warm-up; "
        f"answers of at most {model.generation.max_new_tokens} tokens\n"
    )
    rows = granularity_rows(model, batches, args.precision, args.warmup, args.repeats, device)
    print_granularity_table(rows, args.precision)
    clip = (config.get("trainer") or {}).get("gradient_clip_val")
    row = train_step_row(model, train, optimizer, args.precision, args.steps, args.warmup, device, clip)
    print(f"\nTraining step, stage {model.current_stage!r}, median of {args.steps} after {args.warmup} warm-up\n")
    print_train_table([{**row, "setting": f"{recipe.name} ({size})"}], device, label="recipe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
