"""The paper-size EarthGPT-X on one GPU with random weights: a bf16 training step's time and peak GPU
memory without and with activation checkpointing of the LLM. Prints a Markdown table.

The model is ``recipes/earthgptx.yaml`` built from architectures alone, nothing read or downloaded
(as ``benchmarks/geomag_gpu.py`` builds GeoMag: weight sources stripped as ``rsvlm summarize`` does,
modules constructed on the GPU): the two frozen visual experts (DINOv2 ViT-L/14 and CLIP ConvNeXt-L,
timm architectures with ``pretrained`` off), the spatial-aware prompt encoder and hybrid prompt
fusion, LLaMA-2-13B from the shipped ``llama-2-13b`` config in bf16 training its self-attention only
(4.19 B parameters, chosen by module type) and the new ``[SEG]`` rows, a frozen SAM ViT-H at 1024²
and SAM's mask decoder. The offline demo tokenizer stands in for LLaMA's.

The recipe trains on 8 GPUs with DeepSpeed ZeRO-2; this is one GPU without sharding, so the peak
holds the whole bf16 AdamW state of the 4.19 B trained parameters (about 2 × 8.4 GB) besides the
26 GB of weights and the gradients. One step is ``training_step`` (text loss, BCE + Dice on the
masks; MagCrop is not part of EarthGPT-X) + backward + clipping (the recipe's 8.0) + the recipe's
AdamW, in bf16 autocast, on a batch of the recipe's size (4 at 448²: 1 global + 2×2 views of 224²)
of referring-segmentation records of generated scenes (:class:`rsvlm.data.multitask.generated.GeneratedInstructData`; see
:func:`segmentation_batch` for why not a mixed one). Activation checkpointing is the
LLM's, switched as ``CausalLM(gradient_checkpointing=True)`` switches it (transformers'
``gradient_checkpointing_enable`` with ``use_reentrant=False``), on the same model for both rows.

    python benchmarks/earthgptx_gpu.py               # a few minutes on an H100/H200-class GPU (≥ 80 GB)
    python benchmarks/earthgptx_gpu.py --dry-run     # the same code on tiny shapes on the CPU (seconds)
    python benchmarks/earthgptx_gpu.py --checkpointing on --steps 3
"""

from __future__ import annotations

import argparse
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
    prepare,
    print_train_table,
    to_device,
    train_step_row,
)
from geomag_gpu import (  # noqa: E402
    build_on_device,
    common_arguments,
    generated_datamodule,
    parse,
    random_weight_config,
    require_device,
)

from rsvlm.fusion.views import ViewTiler  # noqa: E402

#: ``--tiny``: the recipe's wiring at tiny sizes (a 56² one-block DINOv2-style ViT, ConvNeXt-atto,
#: a 4×4 grid on 64² views (1 + 2×2 of a 128² input), a 2-layer 128-wide Llama, a 2-block SAM ViT at 64²); init_args per slot.
TINY_EARTHGPTX: dict[str, dict[str, Any]] = {
    "encoder": {
        "experts": [
            {
                "class_path": "rsvlm.encoders.timm_vit.TimmViTEncoder",
                "init_args": {
                    "model_name": "vit_small_patch14_dinov2",
                    "img_size": 56,
                    "depth": 1,
                    "embed_dim": 32,
                    "num_heads": 2,
                    "in_bands": 3,
                    "freeze": True,
                },
            },
            {
                "class_path": "rsvlm.encoders.timm_encoder.TimmEncoder",
                "init_args": {"model_name": "convnext_atto", "in_bands": 3, "rgb_bands": [0, 1, 2], "freeze": True},
            },
        ],
        "levels": [0, 3],
        "grid": 4,
        "image_size": 64,
        "expert_sizes": [56, None],
    },
    "fusion": {
        "in_channels": [32 + 320],
        "in_reductions": [16],
        "out_channels": 64,
        "level": 0,
        "target_reduction": 16,
    },
    "prompt_encoder": {"out_dim": 64, "canvas_size": 64, "patch_size": 16, "width": 32, "depth": 1, "heads": 2},
    "prompt_fusion": {"dim": 64, "heads": 2},
    "projector": {"in_dim": 64, "out_dim": 128},
    "bridge": {"in_dim": 128},
    "mask_encoder": {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "image_size": 64},
}
TINY_LLM = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_IMAGE_SIZE = 64


def tiny_earthgptx(model_config: dict[str, Any]) -> int:
    """Shrink the paper EarthGPT-X (in place) to :data:`TINY_EARTHGPTX`; returns the image side."""
    slots = model_config["init_args"]
    for slot, values in TINY_EARTHGPTX.items():
        target = slots[slot]["init_args"]
        if "stem" in target:  # MultiSourceEncoder: the experts (or SAM's ViT) sit behind the stems
            target = target["encoder"]["init_args"]
        target.update(values)
    llm = slots["llm"]["init_args"]
    base = llm["config"] if isinstance(llm["config"], str) else llm["config"].get("base")
    llm["config"] = {"base": base, **TINY_LLM, "num_key_value_heads": TINY_LLM["num_attention_heads"]}
    side = TINY_IMAGE_SIZE
    for slot in ("encoder", "prompt_encoder"):  # views of the tiny side: the input is their input_size
        views = (slots.get(slot) or {}).get("init_args", {}).get("views")
        if views:
            views["init_args"]["view_size"] = TINY_IMAGE_SIZE
            side = ViewTiler(**views["init_args"]).input_size
    return side


def segmentation_batch(datamodule: Any, size: int) -> dict[str, Any]:
    """``size`` referring-segmentation samples (one ``[SEG]`` each) collated into a training batch:
    the step that runs every component (text-only tasks skip the mask decoder)."""
    return granularity_batches(datamodule, size)["pixel"]


def set_activation_checkpointing(model: Any, enabled: bool) -> None:
    """Switch the LLM's activation checkpointing as ``CausalLM(gradient_checkpointing=...)`` does."""
    base = model.llm.base_model
    if enabled:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_disable()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, "recipes/earthgptx.yaml")
    parser.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["off", "on"])
    args = parse(parser, argv)
    device = torch.device(args.device)
    require_device(device, "benchmarks/earthgptx_gpu.py")
    recipe = REPO / args.recipe
    config = yaml.safe_load(recipe.read_text())
    model_config = random_weight_config(config["model"])
    if args.tiny:
        config["data"]["init_args"]["image_size"] = tiny_earthgptx(model_config)
    model = build_on_device(model_config, device, int(config.get("seed_everything", 0)))
    batch_size = args.batch_size or int(config["data"]["init_args"].get("batch_size", 4))
    with tempfile.TemporaryDirectory() as tmp:
        # one referring-segmentation record per scene: enough scenes for a batch of them
        scenes = max(args.scenes, batch_size)
        datamodule = generated_datamodule(config, model, scenes, args.scene_size, Path(args.root or tmp), batch_size)
        optimizer = prepare(model, datamodule)
        train = to_device(segmentation_batch(datamodule, batch_size), device)
    clip = (config.get("trainer") or {}).get("gradient_clip_val")
    rows = []
    for setting in args.checkpointing:
        set_activation_checkpointing(model, setting == "on")
        row = train_step_row(model, train, optimizer, args.precision, args.steps, args.warmup, device, clip)
        rows.append({**row, "setting": setting})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    size = "tiny shapes" if args.tiny else "paper size"
    print(
        f"\n{recipe.name} ({size}, random weights) on {device_name(device)}, torch {torch.__version__}; "
        f"input {datamodule.image_size}²; stage {model.current_stage!r}; training step median of {args.steps} "
        f"after {args.warmup} warm-up\n"
    )
    print_train_table(rows, device, label="activation checkpointing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
