"""The paper-shaped SPEX on one GPU: training step in fp16-mixed and bf16-mixed, MFU, and mask
inference time per 512² image with 256-token generation. Prints Markdown tables.

The model is ``recipes/spex.yaml`` built with random weights from the shipped configs
(InternImage-L, MSAM, the full 28-layer Qwen2.5-1.5B with LoRA, TCP, the SAM ViT-H mask decoder;
no checkpoint, no download), trained on random batches of the recipe's shape (batch 2, 512²,
the text of a typical SPIE record) in the paper's stage 2 (``mask``: LLM frozen) and stage 1
(``text``: LoRA). fp16 uses a gradient scaler as Lightning's ``16-mixed`` does.

MFU = (FLOPs of one training step, counted by ``torch.utils.flop_counter.FlopCounterMode``) /
step time / the GPU's dense peak for the precision (``--peak-tflops``, default from the
device name: H100/H200 989 TFLOPS, A100 312, RTX 4090 165 (fp16/bf16 dense, no sparsity)).
The paper reports 4.36 s per image on an RTX 4090 for inference.

    python benchmarks/spex_gpu.py                    # about 5 minutes on an H100-class GPU
    python benchmarks/spex_gpu.py --steps 5 --stages mask
    python benchmarks/spex_gpu.py --device cpu --recipe recipes/spex-demo.yaml --precisions bf16-mixed \
        --steps 1 --warmup 0 --new-tokens 8 --repeats 1     # checks the script without a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from decode_speed import exactly  # noqa: E402
from geomag import device_name, sync, timed  # noqa: E402
from train_step import build_model, random_batch  # noqa: E402

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "4090": 165.0, "L40S": 362.0, "A6000": 155.0}
DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def step_fn(model, batch, optimizer, scaler, dtype, with_mask: bool):
    device = batch["image"].device

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss = model.losses(model(batch, with_mask=with_mask), batch, with_mask)["total"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_row(
    model, data: dict, stage: str, precision: str, steps: int, warmup: int, batch_size: int, device: torch.device
) -> dict:
    """One training row on the already built ``model`` (its weights move a little each row: they
    are random, only the time and memory are read). fp16 steps whose gradients overflow are skipped
    by the scaler, which makes them faster: the ``skipped`` column counts them among the timed."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model.set_stage(stage)
    model.train()
    with_mask = stage != "text"
    batch = random_batch(model, data, batch_size, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    dtype = DTYPES[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step = step_fn(model, batch, optimizer, scaler, dtype, with_mask)
    for _ in range(warmup):
        step()
    counter = FlopCounterMode(display=False)
    # The math path of attention decomposes into matrix products the counter knows; torch's
    # formula for the fused kernels rejects grouped-query shapes (Qwen's 12 query, 2 key heads).
    with counter, sdpa_kernel(SDPBackend.MATH):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, skipped = [], 0
    for _ in range(steps):
        scale = scaler.get_scale() if scaler.is_enabled() else None
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
        skipped += scale is not None and scaler.get_scale() < scale
    step_s = sorted(times)[len(times) // 2]
    row = {
        "stage": stage,
        "precision": precision,
        "batch": batch_size,
        "trainable": sum(p.numel() for p in params),
        "step_s": step_s,
        "samples_s": batch_size / step_s,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
        "tflop_step": counter.get_total_flops() / 1e12,
        "skipped": f"{skipped}/{steps}",
    }
    del optimizer, batch, params
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def inference_row(
    model, data: dict, precision: str, new_tokens: int, repeats: int, cache: str | None, device: torch.device
) -> dict:
    """Seconds per image of ``predict_masks`` (generate → pool → decode) with exactly
    ``new_tokens`` generated (``decode_speed.exactly``) and the KV cache ``cache`` (None: the
    recipe's)."""
    from dataclasses import replace

    model.eval()
    chosen = {"cache_implementation": cache} if cache is not None else {}
    model.generation = replace(model.generation, max_new_tokens=new_tokens, **chosen)
    undo = exactly(model.llm, new_tokens)
    batch = random_batch(model, data, 1, device)
    dtype = DTYPES[precision]
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
            seconds, out = timed(lambda: model.predict_masks(batch), 1, repeats, device)  # one call warms up
    finally:
        undo()
    return {"precision": precision, "seconds": seconds, "tokens": int(out["token_ids"].shape[1])}  # new tokens (B×T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/spex.yaml")
    parser.add_argument("--stages", nargs="*", default=["mask", "text"], help="training rows; none: inference only")
    parser.add_argument("--precisions", nargs="+", default=["16-mixed", "bf16-mixed"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cache",
        default=None,
        help="the KV cache of generation: static compiles decoding on CUDA (default: the recipe's)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument(
        "--device", default="cuda", help="cuda (the benchmark); cpu checks the script on a small recipe"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "benchmarks/spex_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); --device cpu to check it"
        )
    name = device_name(device)
    peak = args.peak_tflops or peak_tflops(name)
    recipe = REPO / args.recipe
    import transformers

    print(
        f"\n{name}, torch {torch.__version__}, transformers {transformers.__version__}, {args.recipe}, random weights"
    )
    started = time.perf_counter()
    model, data, _ = build_model(recipe, None)
    model.to(device)
    print(f"built and moved to {device} in {time.perf_counter() - started:.0f} s\n", flush=True)

    # Inference first, on the untouched random weights.
    print("| inference | precision | generated tokens | seconds per 512² image |")
    print("|---|---|---:|---:|")
    for precision in args.precisions:
        for new_tokens in args.new_tokens:
            try:
                r = inference_row(model, data, precision, new_tokens, args.repeats, args.cache, device)
            except Exception as error:  # one failed row must not cost the others (one GPU session)
                print(
                    f"| generate → pool → decode | {precision} | failed: {type(error).__name__}: {error} | |",
                    flush=True,
                )
                continue
            print(f"| generate → pool → decode | {r['precision']} | {r['tokens']} | {r['seconds']:.2f} |", flush=True)

    print(
        "\n| stage | precision | batch | trainable | step (s) | samples/s | peak memory (GiB) | TFLOP/step | MFU | fp16 steps skipped |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for stage in args.stages:
        for precision in args.precisions:
            try:
                r = train_row(model, data, stage, precision, args.steps, args.warmup, args.batch_size, device)
            except Exception as error:
                print(f"| {stage} | {precision} | failed: {type(error).__name__}: {error} |", flush=True)
                model.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            mfu = f"{100 * r['tflop_step'] / r['step_s'] / peak:.1f} %" if peak else "n/a"
            print(
                f"| {r['stage']} | {r['precision']} | {r['batch']} | {r['trainable'] / 1e6:.1f} M | {r['step_s']:.3f} | "
                f"{r['samples_s']:.2f} | {r['peak_gib']:.1f} | {r['tflop_step']:.2f} | {mfu} | "
                f"{r['skipped'] if r['precision'] == '16-mixed' else '–'} |",
                flush=True,
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
