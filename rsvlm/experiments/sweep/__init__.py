"""``rsvlm sweep``: expand a grid of recipe overrides, write each run's config, run them.

- :mod:`~rsvlm.experiments.sweep.spec`: the sweep file's format, its validation, the grid;
- :mod:`~rsvlm.experiments.sweep.needs`: runs the cells need (``needs:``), run first, named in overrides;
- :mod:`~rsvlm.experiments.sweep.overrides`: dotted-key overrides and resolved configs;
- :mod:`~rsvlm.experiments.sweep.folders`: the output folder, run statuses, ``sweep.json``;
- :mod:`~rsvlm.experiments.sweep.commands`: run command lines, ``commands.sh``, SLURM arrays;
- :mod:`~rsvlm.experiments.sweep.runner`: running the selected runs one after another;
- :mod:`~rsvlm.experiments.sweep.cli`: the ``rsvlm sweep`` entry point.
"""

from rsvlm.experiments.sweep.cli import build_parser, sweep_main
from rsvlm.experiments.sweep.commands import command_line, launch_command, write_scripts
from rsvlm.experiments.sweep.folders import (
    COMMANDS_FILE,
    CONFIG_FILE,
    FAILED_FILE,
    LOG_FILE,
    MANIFEST_FILE,
    SBATCH_FILE,
    STATUS_FILE,
    failure_info,
    prepare_runs,
    read_manifest,
    run_status,
    write_manifest,
)
from rsvlm.experiments.sweep.needs import Need, NeedRun, Plan, give_needs, plan_needs
from rsvlm.experiments.sweep.overrides import apply_override, dump_config, resolve_config
from rsvlm.experiments.sweep.runner import execute_run, run_sweep, select_runs
from rsvlm.experiments.sweep.spec import (
    DEFAULT_LAUNCHER,
    Axis,
    Run,
    SweepError,
    SweepSpec,
    expand_grid,
    load_sweep,
    parse_sweep,
    sanitize,
)

__all__ = [
    "COMMANDS_FILE",
    "CONFIG_FILE",
    "DEFAULT_LAUNCHER",
    "FAILED_FILE",
    "LOG_FILE",
    "MANIFEST_FILE",
    "SBATCH_FILE",
    "STATUS_FILE",
    "Axis",
    "Need",
    "NeedRun",
    "Plan",
    "Run",
    "SweepError",
    "SweepSpec",
    "apply_override",
    "build_parser",
    "command_line",
    "dump_config",
    "execute_run",
    "expand_grid",
    "failure_info",
    "give_needs",
    "launch_command",
    "load_sweep",
    "parse_sweep",
    "plan_needs",
    "prepare_runs",
    "read_manifest",
    "resolve_config",
    "run_status",
    "run_sweep",
    "sanitize",
    "select_runs",
    "sweep_main",
    "write_manifest",
    "write_scripts",
]
