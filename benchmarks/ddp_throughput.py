"""Training throughput of the demo SPEX: 2-process DDP (gloo, CPU) against 1 process.

The model is built from ``recipes/spex-demo.yaml`` (stage ``joint``: every component trains)
and trained on random batches of the recipe's shape (bands, image size, batch size per
process). Each configuration runs in its own subprocess; samples/s counts the samples of all
processes over the timed steps (after warm-up steps). On a CPU machine the processes share the
cores: 1 process uses all of them, each DDP process its share.

    python benchmarks/ddp_throughput.py
    python benchmarks/ddp_throughput.py --steps 20 --accelerator gpu   # on a multi-GPU node
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

INSTRUCTION = (
    "Based on the provided image and the attributes of the water regions, please provide a detailed "
    "description of them: [{'Size of area': 'small', 'Location': 'top left'}]"
)
RESPONSE = "There is one small water region in the top left of the image, a narrow lake."


def build_model(recipe: Path):
    import lightning as L
    from jsonargparse import ArgumentParser

    from rsvlm.experiments.summarize import without_weights

    config = yaml.safe_load(recipe.read_text())
    model_config = without_weights(config["model"])
    model_config["init_args"].pop("schedule", None)
    model_config["init_args"]["stage"] = "joint"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    parsed = parser.parse_object({"model": copy.deepcopy(model_config)})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    return instantiate(parsed).model, config.get("data", {}).get("init_args", {})


class RandomSpie(torch.utils.data.Dataset):
    def __init__(self, n: int, bands: int, size: int) -> None:
        self.n, self.bands, self.size = n, bands, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        image = torch.randn(self.bands, self.size, self.size, generator=g)
        return {
            "image": image,
            "mask": (image[:1] > 0).float(),
            "valid": torch.ones(1, self.size, self.size, dtype=torch.bool),
            "category": "water",
            "instruction": INSTRUCTION,
            "response": RESPONSE,
            "meta": {"index": i},
        }


def child(args) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy

    from rsvlm.data.spie.dataset import SpieCollate

    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // args.devices))
    torch.manual_seed(0)
    model, data = build_model(Path(args.recipe))
    size, batch = int(data.get("image_size", 64)), int(data.get("batch_size", 8))
    bands = model.encoder.in_bands
    steps = args.warmup + args.steps

    class Clock(Callback):
        def __init__(self) -> None:
            self.start = self.end = 0.0

        def on_train_batch_start(self, trainer, pl_module, b, batch_idx) -> None:
            if trainer.global_step == args.warmup and not self.start:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx) -> None:
            self.end = time.perf_counter()

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(
                RandomSpie(steps * batch * args.devices, bands, size),
                batch_size=batch,
                collate_fn=SpieCollate(model.llm.formatter),
            )

    clock = Clock()
    strategy = (
        DDPStrategy(process_group_backend="gloo" if args.accelerator == "cpu" else "nccl", find_unused_parameters=True)
        if args.devices > 1
        else "auto"
    )
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=strategy,
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(model, datamodule=Data())
    if trainer.is_global_zero:
        elapsed = clock.end - clock.start
        Path(args.out).write_text(
            json.dumps(
                {
                    "devices": args.devices,
                    "threads_per_process": torch.get_num_threads(),
                    "batch_per_process": batch,
                    "steps": args.steps,
                    "seconds": elapsed,
                    "samples_per_s": args.steps * batch * args.devices / elapsed,
                    "image": [bands, size, size],
                }
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "spex-demo.yaml"))
    parser.add_argument("--steps", type=int, default=10, help="timed optimisation steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (0: share the cores). 1 keeps the comparison fair on a busy "
        "machine, where several OpenMP threads per process spin-wait on each other",
    )
    parser.add_argument("--devices", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.devices:
        child(args)
        return 0

    results = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as folder:
        for devices in (1, 2):
            out = Path(folder) / f"{devices}.json"
            cmd = [
                sys.executable,
                __file__,
                "--recipe",
                args.recipe,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--accelerator",
                args.accelerator,
                "--threads",
                str(args.threads),
                "--devices",
                str(devices),
                "--out",
                str(out),
            ]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run.returncode != 0 or not out.exists():
                print(run.stdout[-2000:], run.stderr[-4000:], file=sys.stderr)
                return 1
            results.append(json.loads(out.read_text()))
    base = results[0]["samples_per_s"]
    c, h, w = results[0]["image"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"demo SPEX ({Path(args.recipe).name}, stage joint), {c}×{h}×{w} images, {args.accelerator}, "
        f"{os.cpu_count()} cores (load average {load:.1f} at the end), {args.steps} timed steps after "
        f"{args.warmup} warm-up\n"
    )
    print("| processes | threads/process | batch/process | samples/s | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['devices']} | {r['threads_per_process']} | {r['batch_per_process']} | {r['samples_per_s']:.2f} | "
            f"{r['samples_per_s'] / base:.2f}× |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
