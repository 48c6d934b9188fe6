"""Training-step time, samples/s and peak memory of recipes' models, as a Markdown table.

Models are built from the recipes with random weights (no checkpoints, no downloads: the same
weight-stripping as ``rsvlm summarize``) on whatever device is present, and trained on random
batches of the recipe's shape in the recipe's stage.

    python benchmarks/train_step.py                        # demo + paper-shaped SPEX
    python benchmarks/train_step.py --llm-layers 4         # paper widths, a shallower LLM (CPU)
    python benchmarks/train_step.py --recipes recipes/spex-demo.yaml --steps 10
    python benchmarks/train_step.py --recipes recipes/spex-demo.yaml --recipe-data --stage joint --steps 20
                                                           # the recipe's own batches (generated, offline)

``--recipe-data`` draws the batches from the recipe's datamodule (its generated data, built in the
rsvlm cache on first use), so sequence lengths are the real ones: the demo's ~340 text tokens
cost more than the short random texts. ``--optimizer-loop`` times AdamW's per-parameter loop
instead of the fused kernel that training uses where torch has it.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rsvlm.experiments.summarize import without_weights  # noqa: E402
from rsvlm.training.optim import OptimSettings, ParameterGroup, build_optimizer  # noqa: E402

INSTRUCTION = (
    "Based on the provided image and the attributes of the vegetation regions, please provide a detailed "
    "description of them: Region 1: Size of area: medium; Centroid: (120, 340); Location: bottom left; "
    "Bounding box: [(0.10, 0.55), (0.40, 0.55), (0.40, 0.90), (0.10, 0.90)]."
)
RESPONSE = (
    "The image shows one medium vegetation region in the bottom left, a dense field that covers about a fifth "
    "of the scene, and a few very tiny patches of trees along the river in the centre."
)


def build_model(recipe: Path, llm_layers: int | None):
    import lightning as L
    from jsonargparse import ArgumentParser

    config = yaml.safe_load(recipe.read_text())
    model_config = without_weights(config["model"])
    llm = model_config["init_args"]["llm"]["init_args"]
    if llm.get("model") and not llm.get("config"):
        # Random weights of the same architecture (shipped config), never a hub download; the
        # offline demo tokenizer stands in for the real one (only the sequence length matters).
        llm["config"] = llm.pop("model").rstrip("/").split("/")[-1].lower()
        llm["tokenizer"] = {"class_path": "rsvlm.data.spie.corpus.SpieDemoTokenizer"}
    if llm_layers is not None:
        cfg = llm.get("config")
        llm["config"] = (
            {"base": cfg, "num_hidden_layers": llm_layers}
            if isinstance(cfg, str)
            else {**cfg, "num_hidden_layers": llm_layers}
        )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    model = parser.instantiate_classes(parser.parse_object({"model": model_config})).model
    data = config.get("data", {}).get("init_args", {})
    trainer = config.get("trainer", {})
    return model, data, trainer


def random_batch(model, data: dict, batch_size: int, device: torch.device) -> dict:
    size = int(data.get("image_size", 512))
    bands = model.encoder.in_bands
    texts = model.llm.formatter([INSTRUCTION] * batch_size, [RESPONSE] * batch_size)
    mask = (torch.rand(batch_size, 1, size, size) > 0.5).float()
    batch = {
        "image": torch.randn(batch_size, bands, size, size),
        "mask": mask,
        "valid": torch.ones_like(mask, dtype=torch.bool),
        **texts,
    }
    return {k: v.to(device) for k, v in batch.items()}


def recipe_batches(recipe: Path, model, count: int, device: torch.device) -> list[dict]:
    """The first ``count`` training batches of the recipe's datamodule, formatted by the model's LLM."""
    import lightning as L
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    data = parser.instantiate_classes(parser.parse_object({"data": yaml.safe_load(recipe.read_text())["data"]})).data
    data.prepare_data()
    data.setup("fit")
    data.set_text_formatter(model.llm.formatter)
    batches = []
    for batch in data.train_dataloader():
        batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        if len(batches) == count:
            return batches
    return batches


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    recipe: Path,
    steps: int,
    warmup: int,
    llm_layers: int | None,
    batch_size: int | None,
    device: torch.device,
    stage: str | None = None,
    use_recipe_data: bool = False,
    optimizer_loop: bool = False,
) -> dict:
    model, data, trainer = build_model(recipe, llm_layers)
    if stage is not None:
        model.set_stage(stage)
    model.to(device).train()
    stage = model.current_stage
    with_mask = stage != "text"
    bs = batch_size or int(data.get("batch_size", 2))
    batches = (
        recipe_batches(recipe, model, warmup + steps, device)
        if use_recipe_data
        else [random_batch(model, data, bs, device)]
    )
    bs = int(batches[0]["image"].shape[0])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(
        [ParameterGroup("all", params, lr=1e-5)],
        OptimSettings(warmup_steps=0, fused=False if optimizer_loop else None),
        1,
    )["optimizer"]
    precision = str(trainer.get("precision", "32-true"))
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        batch = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model.losses(model(batch, with_mask=with_mask), batch, with_mask)["total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    result = {
        "recipe": recipe.name + (f" (LLM {llm_layers} layers)" if llm_layers else ""),
        "stage": stage,
        "batch": bs,
        "image": int(data.get("image_size", 512)),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in params),
        "step_s": step_s,
        "samples_s": bs / step_s,
        "peak_mb": peak_memory_mb(device),
        "precision": precision if dtype is not None else "32-true",
        "data": "recipe" if use_recipe_data else "random",
        "tokens": int(batches[0]["input_ids"].shape[1]),
        "adamw": "fused" if optimizer.defaults.get("fused") else "loop",
    }
    del model, optimizer, batches
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["recipes/spex-demo.yaml", "recipes/spex.yaml"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--llm-layers", type=int, default=None, help="shrink the paper LLM's depth (same widths)")
    parser.add_argument("--stage", default=None, help="the stage to train (default: the recipe's first)")
    parser.add_argument("--recipe-data", action="store_true", help="the recipe's own batches, not random ones")
    parser.add_argument("--optimizer-loop", action="store_true", help="AdamW's per-parameter loop, not fused")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in args.recipes:
        recipe = REPO / name
        layers = args.llm_layers if "demo" not in recipe.name else None
        rows.append(
            measure(
                recipe,
                args.steps,
                args.warmup,
                layers,
                args.batch_size,
                device,
                args.stage,
                args.recipe_data,
                args.optimizer_loop,
            )
        )
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"\nTraining step on {device_name}, torch {torch.__version__}, median of {args.steps} steps after {args.warmup} warm-up\n"
    )
    print(
        "| recipe | stage | batch | image | tokens | data | AdamW | params | trainable | step (s) | samples/s "
        "| peak memory (MB) | precision |"
    )
    print("|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['recipe']} | {r['stage']} | {r['batch']} | {r['image']} | {r['tokens']} | {r['data']} | {r['adamw']} "
            f"| {r['params'] / 1e6:.1f} M | "
            f"{r['trainable'] / 1e6:.1f} M | {r['step_s']:.3f} | {r['samples_s']:.2f} | {r['peak_mb']:.0f} | {r['precision']} |"
        )
    if device.type == "cpu":
        print("\nCPU peak memory is the process's maximum resident set size (it includes earlier rows).")


if __name__ == "__main__":
    main()
