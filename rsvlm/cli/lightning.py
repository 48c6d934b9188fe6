"""LightningCLI for rsvlm recipes: ``fit`` also tests, and every run leaves a record.

A recipe names its LightningModule and LightningDataModule by ``class_path`` (any importable
class, including one in the user's own module). After ``fit`` the best checkpoint is tested
(``--test_after_fit false`` turns that off) and the test metrics, runtime, peak memory and
parameter counts are written as ``metrics.json`` next to the logs, so that ``rsvlm sweep``
and ``rsvlm table`` can collect them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentError, ArgumentParser, Namespace
from lightning.pytorch.cli import LightningCLI

from rsvlm.io.recipe_errors import build_error, parse_error, recipe_sources


class RsvlmCLI(LightningCLI):
    """LightningCLI with rsvlm's defaults: TensorBoard + CSV loggers under
    ``default_root_dir``, test after fit, and a run record."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")

    def parse_arguments(self, parser, args) -> None:
        """Parse as LightningCLI does; a bad recipe is one :class:`RecipeError` naming the
        recipe file and the field, not a page of usage text (the parser does not exit)."""
        # Kept to name the recipe files in errors; LightningCLI reads sys.argv when args is None.
        self._recipe_sources = recipe_sources(list(sys.argv[1:] if args is None else args))
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as exc:
            raise parse_error(str(exc), self._recipe_sources) from exc

    def instantiate_classes(self) -> None:
        """Build the recipe's components; a constructor that refuses its arguments (missing
        weights, a band count it cannot take) is one :class:`RecipeError` naming the recipe
        file, the component's field and its class."""
        try:
            super().instantiate_classes()
        except Exception as exc:
            config = self.config[self.subcommand] if self.subcommand else self.config
            raise build_error(exc, config, self._recipe_sources) from exc

    def _parse_ckpt_path(self) -> None:
        """The recipe and the command line define the model, also with ``--ckpt_path``.

        Lightning's default re-applies the hyper-parameters stored in the checkpoint over the
        command line, so ``--model.init_args.stage=mask --ckpt_path stage1.ckpt`` would silently
        train stage ``text`` again. Here the checkpoint restores weights, optimiser and loop
        state only; to start a new stage from old weights use ``--model.init_args.init_from``.
        """

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if trainer.logger in (None, True):
            root = trainer.default_root_dir or "."
            # One version for both loggers, so that a run's logs share one folder.
            shared = {"save_dir": root, "name": "logs", "version": next_version(Path(root) / "logs")}
            # CSV first: it warns about a non-empty folder, and TensorBoard writes there at once.
            trainer.logger = [
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": dict(shared)},
                {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": dict(shared)},
            ]
        self._started = time.perf_counter()

    def after_fit(self) -> None:
        config = self.config[self.subcommand]
        metrics: dict[str, Any] = {}
        if config.get("test_after_fit", True) and _has_test_data(self.datamodule):
            ckpt = _best_checkpoint(self.trainer)
            results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)
            metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
            self._print_group_table(metrics)
        self._write_record(metrics)
        self._draw_curves()

    def after_test(self) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        self._print_group_table(metrics)
        self._write_record(metrics)

    def _print_group_table(self, metrics: dict[str, float]) -> None:
        if self.trainer.is_global_zero:
            print_group_table(metrics, getattr(self.model, "tasks", None))

    def _write_record(self, metrics: dict[str, Any]) -> None:
        # Trainer.log_dir broadcasts from rank 0, so every rank asks before the others return.
        log_dir = self.trainer.log_dir
        if not self.trainer.is_global_zero:
            return
        from rsvlm.experiments.runrecord import write_run_record

        extra = {
            "runtime_s": round(time.perf_counter() - getattr(self, "_started", time.perf_counter()), 2),
            "peak_memory_mb": _peak_memory_mb(),
            "params_total": sum(p.numel() for p in self.model.parameters()),
            "params_trainable": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "global_step": self.trainer.global_step,
        }
        # How the segmentation scores were averaged (per image or global), for `rsvlm table`.
        if isinstance(getattr(self.model, "metric_average", None), str):
            extra["metric_average"] = self.model.metric_average
        config_dict = parsed_config(self.parser, self.config)
        folders = [Path(log_dir or self.trainer.default_root_dir)]
        root = Path(self.trainer.default_root_dir)
        # The run folder's own record is written once and never replaced (sweeps rely on it).
        if not (root / "metrics.json").exists():
            folders.append(root)
        for folder in dict.fromkeys(folders):
            write_run_record(folder, metrics, config_dict, extra)
        print(f"run record: {folders[0] / 'metrics.json'}")

    def _draw_curves(self) -> None:
        """``curves.png`` beside the CSV logger's ``metrics.csv`` (never over an existing one)."""
        log_dir = self.trainer.log_dir
        if not self.trainer.is_global_zero or log_dir is None:
            return
        from rsvlm.experiments.curves import CurvesError, save_curves

        csv_path, out = Path(log_dir) / "metrics.csv", Path(log_dir) / "curves.png"
        if not csv_path.is_file() or out.exists():
            return
        try:
            save_curves(csv_path, out)
        except CurvesError:
            return  # nothing was logged to draw
        except Exception as exc:  # a picture must not turn a finished, recorded run into a failed one
            print(f"curves not drawn ({type(exc).__name__}: {exc}); rsvlm curves {log_dir} draws them", file=sys.stderr)
            return
        print(f"curves: {out}")


def print_group_table(metrics: dict[str, float], tasks: list[str] | None) -> None:
    """Print the test scores per group beside their baselines when the model logged ``metric_groups``
    (:mod:`rsvlm.experiments.group_table`; ``tasks``: the model's, the first one logged without its
    name); nothing otherwise."""
    from rsvlm.experiments.group_table import format_group_table

    tasks = list(tasks or [])
    table = format_group_table(metrics, "test", tasks[0] if tasks else None, tasks)
    if table:
        print(table)


def next_version(folder: Path) -> int:
    """The first ``N`` for which ``folder/version_N`` does not exist yet."""
    taken = {int(p.name.split("_")[1]) for p in folder.glob("version_*") if p.name.split("_")[1].isdigit()}
    return max(taken, default=-1) + 1


def parsed_config(parser: ArgumentParser, config: Namespace | None) -> dict | None:
    """The run's whole configuration as plain data (defaults and ``None`` values included), for the
    run record's ``config.parsed.yaml``; ``None`` without a configuration."""
    if not config:
        return None
    import yaml

    # skip_unset, not skip_none: jsonargparse deprecated the latter in 4.49 and drops it in 5.0.
    return yaml.safe_load(parser.dump(config, skip_unset=False))


def _has_test_data(datamodule) -> bool:
    if datamodule is None:
        return False
    return type(datamodule).test_dataloader is not L.LightningDataModule.test_dataloader


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if callback is not None and getattr(callback, "best_model_path", ""):
        return callback.best_model_path
    return None


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_lightning_cli(args: list[str] | None) -> RsvlmCLI:
    """Run ``fit|validate|test|predict`` with rsvlm's CLI on ``args`` (None: ``sys.argv``)."""
    return RsvlmCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": False},
        parser_kwargs={"exit_on_error": False},
    )
