"""The command lines that run a sweep's runs: argv, ``commands.sh`` and a SLURM job array.

Relative paths inside the base recipe: every run command is started from the directory in
which ``rsvlm sweep`` was invoked (recorded as ``workdir`` in ``sweep.json`` and as a ``cd``
in ``commands.sh``), exactly as ``rsvlm fit --config BASE`` would have been, so a recipe's
relative data paths mean the same for the sweep as for a single run. Run from the repository
root, like the recipes in ``recipes/`` expect. (jsonargparse resolves plain ``str`` and
``pathlib.Path`` values against the process's cwd, not the config file's folder, so moving the
resolved config into the run folder does not change them.)
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from rsvlm.experiments.runrecord import METRICS_FILE
from rsvlm.experiments.sweep.folders import COMMANDS_FILE, CONFIG_FILE, FAILED_FILE, LOG_FILE, SBATCH_FILE
from rsvlm.experiments.sweep.spec import Run, SweepError, SweepSpec, sanitize
from rsvlm.io.atomic import atomic_write_text


def launch_command(spec: SweepSpec, run_dir: Path, launcher: Optional[Sequence[str]] = None) -> list[str]:
    """The argv that runs one run, from the launcher template."""
    subs = {
        "{python}": sys.executable,
        "{command}": spec.command,
        "{config}": str(run_dir / CONFIG_FILE),
        "{run_dir}": str(run_dir),
    }
    argv = []
    for arg in launcher if launcher is not None else spec.launcher:
        for token, value in subs.items():
            arg = arg.replace(token, value)
        argv.append(arg)
    return argv


def command_line(spec: SweepSpec, run_dir: Path, launcher: Optional[Sequence[str]] = None) -> str:
    """One self-contained shell line for a run.

    It starts from the sweep's workdir, skips the run if ``metrics.json`` exists, appends the
    output to ``log.txt``, writes ``FAILED`` with the exit code on failure, and exits non-zero
    unless the run finished (so a SLURM array task shows the failure).
    """
    q = shlex.quote
    cmd = shlex.join(launch_command(spec, run_dir, launcher))
    metrics, failed, log = (q(str(run_dir / f)) for f in (METRICS_FILE, FAILED_FILE, LOG_FILE))
    return (
        f"cd {q(os.getcwd())} && {{ test -f {metrics} || {{ rm -f {failed}; "
        f'{cmd} >> {log} 2>&1 || {{ echo "exit code $?" > {failed}; false; }}; }}; }}'
    )


def write_scripts(
    spec: SweepSpec,
    runs: Sequence[Run],
    script: str = "bash",
    launcher: Optional[Sequence[str]] = None,
    first: Sequence[Path] = (),
) -> list[Path]:
    """Write ``commands.sh`` (one line per run) and, for ``script="slurm"``, ``sweep.sbatch``.

    ``first``: run folders whose lines come before the runs' (the needs still to run; a bash
    script runs its lines in order, a SLURM array would not, so the runner refuses that case).
    """
    if script not in ("bash", "slurm"):
        raise SweepError(f"--script: expected `bash` or `slurm`, got {script!r}")
    folders = [*first, *(spec.out_dir / run.name for run in runs)]
    lines = [command_line(spec, folder, launcher) for folder in folders]
    commands = spec.out_dir / COMMANDS_FILE
    atomic_write_text(commands, "".join(line + "\n" for line in lines))
    written = [commands]
    if script == "slurm":
        logs = spec.out_dir / "slurm"
        logs.mkdir(parents=True, exist_ok=True)
        options = [f"#SBATCH --job-name={sanitize(spec.name)}", f"#SBATCH --array=0-{max(len(lines) - 1, 0)}"]
        options.append(f"#SBATCH --output={logs}/%A_%a.out")
        options += [f"#SBATCH --{key}={value}" for key, value in spec.slurm.items()]
        body = [
            "#!/bin/bash",
            *options,
            f"# Sweep {spec.name}: one array task per line of {COMMANDS_FILE} (task id 0 = line 1).",
            f"# Submit with: sbatch {shlex.quote(str(spec.out_dir / SBATCH_FILE))}",
            "set -u",
            f'line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(str(commands))})',
            'if [ -z "$line" ]; then echo "no line $((SLURM_ARRAY_TASK_ID + 1)) in commands.sh" >&2; exit 2; fi',
            'eval "$line"',
        ]
        sbatch = spec.out_dir / SBATCH_FILE
        atomic_write_text(sbatch, "\n".join(body) + "\n")
        written.append(sbatch)
    return written
