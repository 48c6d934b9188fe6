"""The LLM's text loss over target positions only against over all positions (``loss_positions``).

Times forward + backward of :func:`rsvlm.llm.text_loss.next_token_loss` on random ``B×L×V`` logits
with ``--targets`` target tokens per sample, and the extra peak resident memory it takes beyond the
logits themselves. Each cell runs in a fresh process (the peak RSS of one cell must not hide
another's); the time is the minimum over ``--repeats`` runs after one warm-up.

Usage: python benchmarks/text_loss.py [--batch 2 --length 600 --targets 100 --repeats 5 --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

VOCABULARIES = {"Qwen2.5 (151,936)": 151_936, "demo tokenizer (1,000)": 1_000}


def measure(vocab: int, positions: str, args: argparse.Namespace) -> dict[str, float]:
    """One cell, in this process: seconds (min over repeats) and extra peak RSS in MB."""
    import torch

    from rsvlm.llm.chat import IGNORE_INDEX
    from rsvlm.llm.text_loss import next_token_loss

    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.dtype)
    logits = torch.randn(args.batch, args.length, vocab, generator=generator, dtype=dtype)  # no float32 temporary
    labels = torch.full((args.batch, args.length), IGNORE_INDEX)
    labels[:, -args.targets :] = torch.randint(0, vocab, (args.batch, args.targets), generator=generator)

    def step() -> None:
        leaf = logits.detach().requires_grad_()
        next_token_loss(leaf, labels, "token", positions).backward()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()  # warm-up; its peak is the cell's peak
    extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "extra_mb": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=600)
    parser.add_argument("--targets", type=int, default=100, help="target tokens per sample")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--cell", nargs=2, metavar=("VOCAB", "POSITIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(measure(int(args.cell[0]), args.cell[1], args)))
        return

    import torch

    shared = [f"--{k}={getattr(args, k)}" for k in ("batch", "length", "targets", "repeats", "dtype")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"B={args.batch}, L={args.length}, {args.targets} targets per sample, {args.dtype} logits\n"
    )
    print("| vocabulary | loss_positions | forward + backward (s) | extra peak RSS (MB) | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name, vocab in VOCABULARIES.items():
        cells = {}
        for positions in ("all", "targets"):
            command = [sys.executable, __file__, *shared, "--cell", str(vocab), positions]
            cells[positions] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        for positions, cell in cells.items():
            ratio = cells["all"]["seconds"] / cell["seconds"]
            print(f"| {name} | {positions} | {cell['seconds']:.3f} | {cell['extra_mb']:.0f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
