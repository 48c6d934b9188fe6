"""The ``rsvlm`` command.

``fit | validate | test | predict`` are LightningCLI subcommands driven by YAML recipes; the
other subcommands are rsvlm's own. The dispatcher imports nothing heavy, so ``rsvlm --help``
stays fast and never loads an LLM stack.
"""

from __future__ import annotations

import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

HELP = """usage: rsvlm COMMAND [options]

Train and evaluate (LightningCLI; see `rsvlm fit --help`):
  fit --config RECIPE.yaml        train, validate, then test the best checkpoint
  validate|test|predict --config RECIPE.yaml [--ckpt_path CKPT]

Inspect:
  summarize --config RECIPE.yaml  build the model on the meta device (no weights, no downloads)
                                  and print parameter counts per component

Ablations:
  sweep SWEEP.yaml                run every cell of an ablation grid (skips finished runs)
  table SWEEP_DIR                 print the paper-style table of a sweep (Markdown/CSV/LaTeX/PNG)

Data:
  data build-spie ...             turn image/label rasters into SPIE records
  data stats ...                  per-band statistics for a SPIE dataset
  data generate ...               write generated multispectral scenes

Options of a recipe can be overridden on the command line, e.g.
  rsvlm fit --config recipes/spex-demo.yaml --model.init_args.bridge.init_args.num_tokens=2
"""


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
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
    if command == "summarize":
        from rsvlm.experiments.summarize import summarize_main

        return summarize_main(rest)
    if command == "sweep":
        from rsvlm.experiments.sweep import sweep_main

        return sweep_main(rest)
    if command == "table":
        from rsvlm.experiments.table import table_main

        return table_main(rest)
    if command == "data":
        return data_main(rest)
    print(f"rsvlm: unknown command {command!r}\n\n{HELP}", file=sys.stderr)
    return 2


def data_main(argv: list[str]) -> int:
    """``rsvlm data build-spie|stats|generate ...``"""
    from rsvlm.cli import data as commands

    handlers = {
        "build-spie": commands.build_spie_main,
        "stats": commands.stats_main,
        "generate": commands.generate_main,
    }
    if not argv or argv[0] not in handlers:
        print(f"usage: rsvlm data {{{','.join(handlers)}}} [options]", file=sys.stderr)
        return 2
    return handlers[argv[0]](argv[1:])
