"""GeoMag: MagCrop and answer time per sample for each granularity, and one training step, as Markdown tables.

The model is ``recipes/geomag-demo.yaml`` (by default) built with random weights by rsvlm's recipe
loader (:func:`rsvlm.inference.evaluate.build_from_config`); the batches are real ones: a few
generated scenes (:class:`rsvlm.data.multitask.generated.GeneratedInstructData`, written into a
temporary folder) read by the recipe's :class:`~rsvlm.data.multitask.datamodule.InstructDataModule`.

* **MagCrop** (:class:`rsvlm.crops.magcrop.MagCrop`, the model's ``cropper``): seconds per sample of
  ``model.cropper(image, batch)`` on a batch of one granularity, routed as in the model by the batch's
  ``granularity`` field (the generated records carry the gold level: scene classification → image;
  presence VQA and referring-object classification → region; referring segmentation → pixel).
  ``image`` is a resize; ``region`` one PSC attention-gradient pass on the bound model and one crop;
  ``pixel`` two passes and two nested crops.
* **answer**: seconds per sample of ``model.predict_masks(batch)`` (MagCrop, encoders, greedy
  generation of up to ``--new-tokens`` tokens, the [SEG] codebook and the SAM 2 mask decoder), the
  model in eval mode; a random LM rarely stops early, so most answers run to the token limit.
* **training step**: one optimiser step as ``rsvlm fit`` takes it (``training_step``: MagCrop with
  PSC online, the LLM with its text loss, BCE + Dice on the masks; backward; clipping when the recipe
  sets it; the recipe's optimiser) on the first batch of the train loader (all granularities mixed).
  Peak memory: ``torch.cuda.max_memory_allocated`` over the timed steps on a GPU; on the CPU the
  process's maximum resident set size (it includes building the model and the data).

Every time is the median over ``--repeats`` calls (``--steps`` for training) after ``--warmup``.

    python benchmarks/geomag.py                                   # demo recipe, CPU or GPU
    python benchmarks/geomag.py --scenes 4 --per-batch 2 --repeats 2 --steps 2   # quicker
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from itertools import zip_longest
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from overhead import stand_in_trainer  # noqa: E402

#: MagCrop's levels, in the order of :data:`rsvlm.heads.granularity.LABELS`.
GRANULARITIES = ("image", "region", "pixel")
DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16, "32-true": None, "32": None}


# ---------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock spans cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device) -> tuple[float, Any]:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones, and the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(max(repeats, 1)):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory since the last reset, or the process's maximum RSS on the CPU (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch on ``device`` (tensors, visual-prompt batches and nested containers)."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    return move_data_to_device(dict(batch), device)


# ---------------------------------------------------------------------- model and data
def generated_data(config: dict[str, Any], scenes: int, size: int | None, root: Path) -> dict[str, Any]:
    """``config`` (a recipe) with its data section set to ``scenes`` generated training scenes under ``root``."""
    data = config.setdefault("data", {}).setdefault("init_args", {})
    generate = dict(data.get("generate") or {})
    generate.update(root=str(root), n_train=scenes, n_val=0, n_test=0, progress=False)
    if size is not None:
        generate["size"] = size
    data["generate"] = generate
    data["num_workers"] = 0
    return config


def prepare(model: Any, datamodule: Any, steps: int = 1000) -> torch.optim.Optimizer:
    """Write the generated scenes, give the datamodule the model's text formatter (``model.setup``),
    read the records, set the training stage, and return the recipe's optimiser."""
    stand_in_trainer(model, datamodule, steps)
    datamodule.prepare_data()
    model.setup("fit")  # binds the cropper and hands the datamodule the model's formatter
    datamodule.setup("fit")
    config = model.configure_optimizers()
    optimizer = config["optimizer"] if isinstance(config, dict) else config
    for group in optimizer.param_groups:  # the schedule's warm-up starts at 0: step at the groups' rate
        group["lr"] = group.get("initial_lr", group["lr"])
    model.set_stage(model.stage_at_epoch(0))
    return optimizer


def granularity_batches(datamodule: Any, per_batch: int) -> dict[str, dict[str, Any]]:
    """One collated batch of ``per_batch`` training records per granularity (fewer if the data has fewer),
    its tasks taking turns."""
    dataset = datamodule.datasets["train"]
    by_task: dict[str, dict[str, list[int]]] = {g: {} for g in GRANULARITIES}
    for i, item in enumerate(dataset.items):
        if item.record.granularity in by_task:
            by_task[item.record.granularity].setdefault(item.record.task, []).append(i)
    # the tasks of one level take turns (region: presence VQA, then referring classification, ...)
    indices = {
        g: [i for row in zip_longest(*tasks.values()) for i in row if i is not None][:per_batch]
        for g, tasks in by_task.items()
    }
    missing = [g for g, found in indices.items() if not found]
    if missing:
        raise ValueError(f"the generated records hold no {', '.join(missing)}-level sample; raise --scenes")
    collate = datamodule.collate_fn()
    return {g: collate([dataset[i] for i in found]) for g, found in indices.items()}


def training_batch(datamodule: Any) -> dict[str, Any]:
    """The first batch of the train loader (the recipe's batch size; granularities mixed)."""
    return next(iter(datamodule.train_dataloader()))


# ---------------------------------------------------------------------- measurements
def train_step_row(
    model: Any,
    batch: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    precision: str,
    steps: int,
    warmup: int,
    device: torch.device,
    clip: float | None = None,
) -> dict[str, Any]:
    """Median seconds of one training step (``training_step`` + backward + optimiser) and peak memory."""
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model.training_step(batch, 0)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, loss = timed(step, 0, steps, device)
    size = int(batch["image"].shape[0])
    return {
        "precision": precision,
        "batch": size,
        "levels": ", ".join(f"{batch['granularity'].count(g)} {g}" for g in GRANULARITIES),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "params": sum(p.numel() for p in model.parameters()),
        "step_s": seconds,
        "samples_s": size / seconds,
        "peak_mb": peak_memory_mb(device),
        "loss": loss,
    }


def granularity_rows(
    model: Any,
    batches: Mapping[str, Mapping[str, Any]],
    precision: str,
    warmup: int,
    repeats: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Per granularity: MagCrop and answer seconds per sample, and the answers' generated tokens."""
    dtype = DTYPES[precision]
    classifier = getattr(model.cropper, "classifier", None)
    model.eval()
    route = getattr(model.cropper, "route", None)
    if route is not None:  # each batch at its own level: the gold one, not a random classifier's guess
        model.cropper.route = "gold"
    try:
        return [
            granularity_row(model, level, batch, classifier, dtype, warmup, repeats, device)
            for level, batch in batches.items()
        ]
    finally:
        if route is not None:
            model.cropper.route = route


def granularity_row(
    model: Any,
    level: str,
    batch: Mapping[str, Any],
    classifier: Any,
    dtype: torch.dtype | None,
    warmup: int,
    repeats: int,
    device: torch.device,
) -> dict[str, Any]:
    """MagCrop, answer and (when the cropper has one) classifier seconds per sample on one batch."""
    size = int(batch["image"].shape[0])
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        crop_s, _ = timed(lambda: model.cropper(batch["image"], batch), warmup, repeats, device)
        answer_s, out = timed(lambda: model.predict_masks(batch), warmup, repeats, device)
        route_s = math.nan
        if classifier is not None:  # test-time routing: the granularity from the instruction
            route_s, _ = timed(lambda: classifier.eval().predict(list(batch["instruction"])), warmup, repeats, device)
    return {
        "granularity": level,
        "tasks": ", ".join(sorted(set(batch["task"]))),
        "batch": size,
        "magcrop_ms": 1e3 * crop_s / size,
        "answer_ms": 1e3 * answer_s / size,
        "tokens": int(out["token_ids"].shape[1]),
        "classifier_ms": 1e3 * route_s / size,
    }


# ---------------------------------------------------------------------- tables
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} thread(s))"


def print_granularity_table(rows: list[dict[str, Any]], precision: str) -> None:
    """The per-granularity table (a classifier column only when the model has one)."""
    with_classifier = any(not math.isnan(r["classifier_ms"]) for r in rows)
    extra = " classifier (ms/sample) |" if with_classifier else ""
    print(
        f"| granularity | tasks | batch | MagCrop (ms/sample) | answer (ms/sample) | generated tokens |{extra} precision |"
    )
    print("|---|---|---:|---:|---:|---:|" + ("---:|" if with_classifier else "") + "---|")
    for r in rows:
        cell = f" {r['classifier_ms']:.1f} |" if with_classifier else ""
        print(
            f"| {r['granularity']} | {r['tasks']} | {r['batch']} | {r['magcrop_ms']:.1f} | {r['answer_ms']:.1f} | "
            f"{r['tokens']} |{cell} {precision} |",
            flush=True,
        )


def print_train_table(rows: list[dict[str, Any]], device: torch.device, label: str = "setting") -> None:
    """The training-step table: one row per setting (``row["setting"]``)."""
    unit = "peak GPU memory (MB)" if device.type == "cuda" else "peak RSS (MB)"
    print(
        f"| {label} | precision | batch | granularities | params | trainable | step (s) | samples/s | {unit} | loss |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['precision']} | {r['batch']} | {r['levels']} | {r['params'] / 1e6:.1f} M | "
            f"{r['trainable'] / 1e6:.1f} M | {r['step_s']:.3f} | {r['samples_s']:.2f} | {r['peak_mb']:.0f} | "
            f"{r['loss']:.3f} |",
            flush=True,
        )


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/geomag-demo.yaml")
    parser.add_argument("--scenes", type=int, default=6, help="generated training scenes (4 records each)")
    parser.add_argument("--scene-size", type=int, default=None, help="scene side in pixels (default: the recipe's)")
    parser.add_argument("--per-batch", type=int, default=4, help="samples per granularity batch")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: the recipe's)")
    parser.add_argument("--new-tokens", type=int, default=None, help="answer length limit (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed MagCrop / answer calls per granularity")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default=None, help="default: the recipe's on a GPU, 32-true on the CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--root", default=None, help="folder for the generated scenes (default: a temporary one)")
    args = parser.parse_args(argv)
    from rsvlm.inference.evaluate import build_from_config

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    recipe = REPO / args.recipe
    config = yaml.safe_load(recipe.read_text())
    trainer = config.get("trainer") or {}
    precision = args.precision or (str(trainer.get("precision", "32-true")) if device.type == "cuda" else "32-true")
    with tempfile.TemporaryDirectory() as tmp:
        generated_data(config, args.scenes, args.scene_size, Path(args.root or tmp))
        if args.batch_size:
            config["data"]["init_args"]["batch_size"] = args.batch_size
        if args.new_tokens:
            config["model"]["init_args"].setdefault("generation", {})["max_new_tokens"] = args.new_tokens
        model, datamodule = build_from_config(config, where=str(recipe))
        model.to(device)
        optimizer = prepare(model, datamodule)
        batches = {g: to_device(b, device) for g, b in granularity_batches(datamodule, args.per_batch).items()}
        train = to_device(training_batch(datamodule), device)
    gen = model.generation.max_new_tokens
    print(
        f"\n{recipe.name} (random weights) on {device_name(device)}, torch {torch.__version__}; "
        f"{args.scenes} generated scenes; median of {args.repeats} calls after {args.warmup} warm-up; "
        f"answers of at most {gen} tokens\n"
    )
    print_granularity_table(granularity_rows(model, batches, precision, args.warmup, args.repeats, device), precision)
    clip = trainer.get("gradient_clip_val")
    row = train_step_row(model, train, optimizer, precision, args.steps, args.warmup, device, clip)
    print(f"\nTraining step, stage {model.current_stage!r}, median of {args.steps} after {args.warmup} warm-up\n")
    print_train_table([{**row, "setting": recipe.name}], device, label="recipe")
    if device.type == "cpu":
        print("\nCPU peak memory is the process's maximum resident set size (building included).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
