"""The LLM's text loss over target positions only against over all positions (``loss_positions``).

Two tables, forward + backward, on random data with ``--targets`` target tokens per sample:

* the loss alone: :func:`rsvlm.llm.text_loss.next_token_loss` of ``B×L×V`` logits;
* the LM head and the loss, as :class:`rsvlm.llm.causal_lm.CausalLM` runs them: ``B×L×D`` last
  hidden states through a ``D→V`` linear head at every position (``all``) or only at
  :func:`~rsvlm.llm.text_loss.predicting_positions` (``targets``), then the loss.

Each cell runs in a fresh process (the peak RSS of one cell must not hide another's) and reports
the minimum time over its repeats after one warm-up, and the extra peak resident memory beyond
its inputs.

Usage: python benchmarks/text_loss.py [--batch 2 --length 600 --targets 100 --repeats 5 --dtype bfloat16
       --hidden 1536 --head-repeats 2 --head-dtype float32]
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


def measure(vocab: int, positions: str, hidden: int, repeats: int, args: argparse.Namespace) -> dict[str, float]:
    """One cell, in this process: seconds (min over repeats) and extra peak RSS in MB.

    ``hidden`` 0 times the loss of random logits; otherwise a ``hidden→vocab`` head and the loss.
    """
    import torch

    from rsvlm.llm.chat import IGNORE_INDEX
    from rsvlm.llm.text_loss import next_token_loss, predicting_positions, token_loss

    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, args.head_dtype if hidden else args.dtype)
    width = hidden or vocab
    inputs = torch.randn(args.batch, args.length, width, generator=generator, dtype=dtype)  # no float32 copy
    labels = torch.full((args.batch, args.length), IGNORE_INDEX)
    labels[:, -args.targets :] = torch.randint(0, vocab, (args.batch, args.targets), generator=generator)
    head = torch.nn.Linear(hidden, vocab, bias=False, dtype=dtype) if hidden else None

    def step() -> None:
        leaf = inputs.detach().requires_grad_()
        if head is None:
            loss = next_token_loss(leaf, labels, "token", positions)
        elif positions == "all":
            loss = next_token_loss(head(leaf), labels, "token", "all")
        else:
            keep = predicting_positions(labels)
            loss = token_loss(head(leaf[:, keep]), labels[:, keep + 1], "token", "targets")
        loss.backward()

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step()  # warm-up; its peak is the cell's peak
    extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "extra_mb": extra}


def table(title: str, rows: dict[str, tuple[int, int, int]], args: argparse.Namespace) -> None:
    """Print one table; ``rows``: name → (vocabulary, hidden size or 0, repeats)."""
    shared = [
        f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("batch", "length", "targets", "dtype", "head_dtype")
    ]
    print(f"\n{title}\n")
    print("| vocabulary | loss_positions | forward + backward (s) | extra peak RSS (MB) | speed-up |")
    print("|---|---|---:|---:|---:|")
    for name, (vocab, hidden, repeats) in rows.items():
        cells = {}
        for positions in ("all", "targets"):
            command = [sys.executable, __file__, *shared, "--cell", str(vocab), positions, str(hidden), str(repeats)]
            cells[positions] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        for positions, cell in cells.items():
            ratio = cells["all"]["seconds"] / cell["seconds"]
            print(f"| {name} | {positions} | {cell['seconds']:.3f} | {cell['extra_mb']:.0f} | {ratio:.1f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=600)
    parser.add_argument("--targets", type=int, default=100, help="target tokens per sample")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--hidden", type=int, default=1536, help="LM head input width (Qwen2.5-1.5B); 0: no head table")
    parser.add_argument("--head-repeats", type=int, default=2)
    parser.add_argument(
        "--head-dtype",
        default="float32",
        choices=["bfloat16", "float16", "float32"],
        help="CPUs without bf16 GEMM: float32",
    )
    parser.add_argument("--cell", nargs=4, metavar=("VOCAB", "POSITIONS", "HIDDEN", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        vocab, positions, hidden, repeats = args.cell
        print(json.dumps(measure(int(vocab), positions, int(hidden), int(repeats), args)))
        return

    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"B={args.batch}, L={args.length}, {args.targets} targets per sample; logits {args.dtype}, "
        f"head {args.head_dtype}"
    )
    table("The loss of B×L×V logits", {n: (v, 0, args.repeats) for n, v in VOCABULARIES.items()}, args)
    if args.hidden:
        rows = {f"{n}, D={args.hidden}": (v, args.hidden, args.head_repeats) for n, v in VOCABULARIES.items()}
        table("The LM head (D→V linear) and the loss of B×L×D hidden states", rows, args)


if __name__ == "__main__":
    main()
