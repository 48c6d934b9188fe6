"""What ``rsvlm fit`` costs over a plain PyTorch loop: per-step time of the same training, as a table.

Both loops train the modules a recipe builds (by default ``recipes/spex-demo.yaml``: 64-px
scenes, batch 8), built the way ``rsvlm fit`` builds them (``RsvlmCLI`` parses the recipe, so the
model class is whatever the recipe names), with the same seed, the same data, the same number of
steps and the same thread count:

* **rsvlm fit**: the Lightning ``Trainer`` exactly as the recipe configures it (callbacks,
  precision, plugins, progress bar; rsvlm's CSV + TensorBoard loggers into a temporary folder),
  with validation off and ``max_steps`` steps.
* **plain loop**: a ``for`` loop over the datamodule's ``train_dataloader``:
  ``loss = model.training_step(batch, i)``, ``backward``, ``optimizer.step``, ``scheduler.step``,
  ``zero_grad``, with the optimiser and schedule of ``model.configure_optimizers()``.

Per-step time is measured from the start of the first step after the warm-up to the start of
the last step (each span covers one batch fetch, the step and whatever the loop does around it),
over several repeats that alternate the two loops; the table gives the minimum and the median.

    python benchmarks/overhead.py                                  # demo recipe, 1 thread
    python benchmarks/overhead.py --steps 40 --warmup 5 --repeats 5 --threads 2
    python benchmarks/overhead.py -- --model.init_args.schedule='[{stage: joint, epochs: 1}]'
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rsvlm.cli.lightning import RsvlmCLI  # noqa: E402


@dataclass
class Run:
    """What one training run saw: the start time of every step, its batches and last loss."""

    starts: list[float] = field(default_factory=list)
    batches: list[float] = field(default_factory=list)  # one fingerprint per batch
    last_loss: float = float("nan")

    def step_time(self, warmup: int) -> float:
        """Mean seconds per step from the start of step ``warmup`` to the start of the last step."""
        measured = self.starts[warmup:]
        if len(measured) < 2:
            raise ValueError(f"need at least {warmup + 2} steps to time one after {warmup} warm-up steps")
        return (measured[-1] - measured[0]) / (len(measured) - 1)


def fingerprint(batch: Any) -> float:
    """A number that differs between batches: the sum of every tensor in the batch, as float64."""
    if isinstance(batch, torch.Tensor):
        return float(batch.detach().double().sum())
    if isinstance(batch, dict):
        return sum(fingerprint(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(fingerprint(v) for v in batch)
    return 0.0


def build(recipe: Path, root: Path, steps: int, overrides: Sequence[str]) -> RsvlmCLI:
    """Model, datamodule and trainer as ``rsvlm fit --config RECIPE`` builds them (seeded by the
    recipe's ``seed_everything``), stopped after ``steps`` steps, without validation."""
    args = [
        "--config",
        str(recipe),
        f"--trainer.default_root_dir={root}",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        *overrides,
    ]
    return RsvlmCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


class StepClock(L.Callback):
    """Records, for the Lightning run, what the plain loop records itself."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.run.starts.append(time.perf_counter())
        self.run.batches.append(fingerprint(batch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.run.last_loss = float(loss)


def train_with_lightning(recipe: Path, steps: int, overrides: Sequence[str]) -> Run:
    run = Run()
    with tempfile.TemporaryDirectory() as root:
        cli = build(recipe, Path(root), steps, overrides)
        cli.trainer.callbacks.append(StepClock(run))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)  # what `rsvlm fit` calls
    return run


def optimizer_and_scheduler(config: Any) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser and (optional) per-step scheduler of what ``configure_optimizers`` returned."""
    if isinstance(config, torch.optim.Optimizer):
        return config, None
    if isinstance(config, dict):
        scheduler = config.get("lr_scheduler")
        if isinstance(scheduler, dict):
            if scheduler.get("interval", "epoch") != "step":
                raise ValueError("the plain loop steps schedulers every step; this one has interval 'epoch'")
            scheduler = scheduler["scheduler"]
        return config["optimizer"], scheduler
    if isinstance(config, (list, tuple)) and len(config) == 2:
        (optimizer,), (scheduler,) = config
        return optimizer, scheduler
    raise TypeError(f"configure_optimizers returned {type(config).__name__}; expected one optimiser (and scheduler)")


def stand_in_trainer(model: Any, datamodule: Any, steps: int) -> None:
    """Give ``model`` what a LightningModule reads from its trainer (the total step count for the LR
    schedule, the precision and clipping that choose the optimiser, the epoch for its stage schedule,
    the rank for printing, the datamodule to configure its collate), answered as a single-process
    fp32 fit at step 0 would; ``self.log`` becomes a no-op, since it would need the whole Lightning
    logging machinery."""
    model.trainer = SimpleNamespace(
        estimated_stepping_batches=steps,
        precision="32-true",
        gradient_clip_val=None,
        current_epoch=0,
        global_step=0,
        is_global_zero=True,
        datamodule=datamodule,
        world_size=1,
    )
    model.log = model.log_dict = lambda *args, **kwargs: None


def train_with_plain_loop(recipe: Path, steps: int, overrides: Sequence[str]) -> Run:
    run = Run()
    with tempfile.TemporaryDirectory() as root:
        cli = build(recipe, Path(root), steps, overrides)  # the Trainer it builds is never used
        model, datamodule = cli.model, cli.datamodule
        stand_in_trainer(model, datamodule, steps)  # `self.log` a no-op: the loop does not pay for logging

        # The hooks a fit calls before its first step, in Lightning's order (for a plain
        # LightningModule they do nothing; rsvlm's models set their training stage in them).
        datamodule.prepare_data()
        datamodule.setup("fit")
        model.setup("fit")
        optimizer, scheduler = optimizer_and_scheduler(model.configure_optimizers())
        model.on_fit_start()
        model.train()
        model.on_train_epoch_start()

        batches = iter(datamodule.train_dataloader())
        for step in range(steps):
            batch = next(batches)
            run.starts.append(time.perf_counter())
            run.batches.append(fingerprint(batch))
            output = model.training_step(batch, step)
            loss = output["loss"] if isinstance(output, dict) else output
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad()
            run.last_loss = float(loss.detach())
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "spex-demo.yaml")
    parser.add_argument("--steps", type=int, default=25, help="training steps per run (default 25)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each loop, alternating (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both loops (default 1)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="after --: recipe overrides, as for rsvlm fit")
    args = parser.parse_args(argv)
    overrides = [o for o in args.overrides if o != "--"]
    torch.set_num_threads(args.threads)

    runs: dict[str, list[Run]] = {"rsvlm fit": [], "plain loop": []}
    for repeat in range(args.repeats):
        for name, train in (("rsvlm fit", train_with_lightning), ("plain loop", train_with_plain_loop)):
            run = train(args.recipe, args.steps, overrides)
            runs[name].append(run)
            print(
                f"repeat {repeat + 1}/{args.repeats} {name}: {run.step_time(args.warmup) * 1e3:.1f} ms/step",
                file=sys.stderr,
            )

    times = {name: [r.step_time(args.warmup) for r in rs] for name, rs in runs.items()}
    lightning, plain = runs["rsvlm fit"][0], runs["plain loop"][0]
    same_batches = lightning.batches == plain.batches
    print(
        f"\n{args.recipe.name}: {args.steps} steps ({args.warmup} warm-up), {args.repeats} repeats, "
        f"{args.threads} thread(s); same batches in both loops: {'yes' if same_batches else 'NO'}; "
        f"last loss {lightning.last_loss:.4f} (rsvlm fit) vs {plain.last_loss:.4f} (plain loop)\n"
    )
    print("| loop | per-step min (ms) | per-step median (ms) |")
    print("|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {min(values) * 1e3:.1f} | {statistics.median(values) * 1e3:.1f} |")
    ratio_min = min(times["rsvlm fit"]) / min(times["plain loop"])
    ratio_median = statistics.median(times["rsvlm fit"]) / statistics.median(times["plain loop"])
    print(f"| ratio rsvlm / plain (target ≤ 1.05) | {ratio_min:.3f} | {ratio_median:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
