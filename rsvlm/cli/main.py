"""The ``rsvlm`` command.

``fit | validate | test | predict`` are LightningCLI subcommands driven by YAML recipes; the
other subcommands are rsvlm's own. The dispatcher imports nothing heavy, so ``rsvlm --help``
stays fast and never loads an LLM stack.

rsvlm's own errors (subclasses of :class:`rsvlm.contracts.RsvlmError`: bad band counts,
unreadable rasters, refused checkpoints, ...) already name the file and the field, so the
command prints them as one line and exits with status 2; ``--debug`` or ``RSVLM_DEBUG=1``
shows the traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

from rsvlm.io.text import one_line

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
DEBUG_FLAG = "--debug"
DEBUG_ENV = "RSVLM_DEBUG"
ERROR_EXIT_CODE = 2

HELP = """usage: rsvlm COMMAND [options] [--debug]

Train and evaluate (LightningCLI; see `rsvlm fit --help`):
  fit --config RECIPE.yaml        train, validate, then test the best checkpoint
  validate|test|predict --config RECIPE.yaml [--ckpt_path CKPT]

Evaluate on real images:
  evaluate --config RECIPE.yaml --ckpt CKPT --real-data DATA_DIR [--datasets NAME ...]
                                  score a checkpoint and the index + Otsu baseline on the same
                                  labelled images (or --images/--masks/--category/--bands)

Use a trained model:
  export RUN --to FOLDER          write a shareable model folder (safetensors, recipe, band
                                  statistics, model card); rsvlm.load(FOLDER) reads it offline
  app MODEL [--host --port]       a local browser app: upload a scene, ask, see and download
                                  the mask (pip install "rsvlm[app]")
  ask MODEL IMAGE... --question TEXT --out FOLDER
                                  one question about each image: the answer, and the mask
                                  GeoTIFF and overlay PNG as predict writes them

Convert:
  convert llava --from ID_OR_FOLDER --out FOLDER
                                  a LLaVA-1.5 checkpoint as rsvlm components (vision/,
                                  projector.safetensors, llm/ with the llava_v1 chat template)

Inspect:
  summarize --config RECIPE.yaml  build the model on the meta device (no weights, no downloads)
                                  and print parameter counts per component

Ablations:
  sweep SWEEP.yaml                run every cell of an ablation grid (skips finished runs)
  table SWEEP_DIR                 print the paper-style table of a sweep (Markdown/CSV/LaTeX/PNG)
  curves RUN [--out PNG]          a run's loss, validation scores and learning rate as a picture
                                  (fit draws RUN/logs/version_N/curves.png when it ends)

Data:
  data build-spie ...             turn image/label rasters into SPIE records
  data stats ...                  per-band statistics for a SPIE dataset
  data generate ...               write generated multispectral scenes
  data stack FILE... --bands B --out OUT.tif
                                  one-file-per-band rasters (a Landsat or Sentinel-2 download) as
                                  one GeoTIFF of named bands, other grids resampled onto the first

Options of a recipe can be overridden on the command line, e.g.
  rsvlm fit --config recipes/spex-demo.yaml --model.init_args.bridge.init_args.num_tokens=2

Errors:
  rsvlm's own errors (wrong band count, unreadable raster, refused checkpoint, bad sweep, a
  recipe key, value or component that does not parse or build, ...) print one line,
  `rsvlm: error: MESSAGE`, and exit with status 2.
  --debug (anywhere on the command line) or the environment variable RSVLM_DEBUG=1 shows the
  full traceback instead.
"""


def main(argv: list[str] | None = None) -> int:
    """Run ``rsvlm ARGV`` (None: ``sys.argv[1:]``) and return the exit status."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or debug_from_environment()
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if from_command_line:
        # LightningCLI parses sys.argv itself when run from the shell; it must not see --debug.
        sys.argv[1:] = argv
    try:
        return dispatch(argv, from_command_line)
    except Exception as exc:
        if debug or not is_rsvlm_error(exc):
            raise
        print(f"rsvlm: error: {one_line(str(exc))}", file=sys.stderr)
        return ERROR_EXIT_CODE


def debug_from_environment() -> bool:
    """True when ``RSVLM_DEBUG`` is set to anything but empty, ``0``, ``false`` or ``no``."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def is_rsvlm_error(exc: BaseException) -> bool:
    """True for rsvlm's own errors (:class:`rsvlm.contracts.RsvlmError` and its subclasses).

    ``rsvlm.contracts`` imports torch, so it is looked up rather than imported: an
    ``RsvlmError`` can only have been raised once that module was loaded.
    """
    contracts = sys.modules.get("rsvlm.contracts")
    return contracts is not None and isinstance(exc, contracts.RsvlmError)


def dispatch(argv: list[str], from_command_line: bool = False) -> int:
    """Run the subcommand ``argv[0]`` on ``argv[1:]``; return the exit status."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP)
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("-V", "--version"):
        from rsvlm import __version__

        print(f"rsvlm {__version__}")
        return 0
    if command in LIGHTNING_COMMANDS:
        from rsvlm.cli.lightning import run_lightning_cli

        # From the shell, LightningCLI reads sys.argv itself (it warns when given both).
        run_lightning_cli(None if from_command_line else [command, *rest])
        return 0
    if command == "evaluate":
        from rsvlm.cli.evaluate import evaluate_main

        return evaluate_main(rest)
    if command == "ask":
        from rsvlm.cli.ask import ask_main

        return ask_main(rest)
    if command == "app":
        from rsvlm.cli.app import app_main

        return app_main(rest)
    if command == "convert":
        from rsvlm.cli.convert import convert_main

        return convert_main(rest)
    if command == "export":
        from rsvlm.cli.export import export_main

        return export_main(rest)
    if command == "summarize":
        from rsvlm.experiments.summarize import summarize_main

        return summarize_main(rest)
    if command == "sweep":
        from rsvlm.experiments.sweep import sweep_main

        return sweep_main(rest)
    if command == "table":
        from rsvlm.experiments.table import table_main

        return table_main(rest)
    if command == "curves":
        from rsvlm.experiments.curves import curves_main

        return curves_main(rest)
    if command == "data":
        return data_main(rest)
    print(f"rsvlm: unknown command {command!r}\n\n{HELP}", file=sys.stderr)
    return ERROR_EXIT_CODE


def data_main(argv: list[str]) -> int:
    """``rsvlm data build-spie|stats|generate|stack ...``"""
    from rsvlm.cli import data as commands

    handlers = {
        "build-spie": commands.build_spie_main,
        "stats": commands.stats_main,
        "generate": commands.generate_main,
        "stack": commands.stack_main,
    }
    if not argv or argv[0] not in handlers:
        print(f"usage: rsvlm data {{{','.join(handlers)}}} [options]", file=sys.stderr)
        return ERROR_EXIT_CODE
    return handlers[argv[0]](argv[1:])
