"""Running a sweep: select runs, execute each as a subprocess with its log, report progress."""

from __future__ import annotations

import collections
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, TextIO

from rsvlm.experiments.runrecord import METRICS_FILE, atomic_write_json
from rsvlm.experiments.sweep.commands import launch_command, write_scripts
from rsvlm.experiments.sweep.folders import (
    COMMANDS_FILE,
    FAILED_FILE,
    LOG_FILE,
    SBATCH_FILE,
    STATUS_FILE,
    failure_info,
    prepare_runs,
    run_status,
    utc_now,
    write_manifest,
)
from rsvlm.experiments.sweep.needs import (
    NeedRun,
    Plan,
    check_ready,
    plan_needs,
    prepare_need_runs,
    relative,
    run_summary,
)
from rsvlm.experiments.sweep.overrides import resolve_config
from rsvlm.experiments.sweep.spec import Run, SweepError, SweepSpec, expand_grid, sanitize
from rsvlm.io.atomic import atomic_write_text

_LOG_TAIL_LINES = 40


def _fmt_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def select_runs(spec: SweepSpec, runs: Sequence[Run], only: Iterable[str]) -> list[Run]:
    """Keep the runs matching ``AXIS=LABEL`` filters (same axis: any of; different axes: all)."""
    wanted: dict[str, set[str]] = collections.defaultdict(set)
    axes = {axis.name: axis for axis in spec.axes}
    for item in only:
        axis_name, sep, label = item.partition("=")
        if not sep or axis_name not in axes:
            raise SweepError(f"--only {item!r}: expected AXIS=LABEL with AXIS one of {list(axes)}")
        matches = [lab for lab in axes[axis_name].labels if label in (lab, sanitize(lab))]
        if not matches:
            raise SweepError(f"--only {item!r}: axis {axis_name!r} has labels {axes[axis_name].labels}")
        wanted[axis_name].update(matches)
    return [run for run in runs if all(run.labels[a] in labels for a, labels in wanted.items())]


def _tee(proc: subprocess.Popen[bytes], log: Any, echo: Optional[TextIO]) -> collections.deque[bytes]:
    """Copy the child's output to ``log`` (and ``echo``); keep the last lines for the failure record."""
    tail: collections.deque[bytes] = collections.deque(maxlen=_LOG_TAIL_LINES)
    partial = b""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        log.write(chunk)
        log.flush()
        if echo is not None:
            buffer = getattr(echo, "buffer", None)
            if buffer is not None:
                echo.flush()
                buffer.write(chunk)
                buffer.flush()
            else:
                echo.write(chunk.decode("utf-8", errors="replace"))
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        tail.extend(lines)
    if partial:
        tail.append(partial)
    return tail


def execute_run(
    spec: SweepSpec,
    run: Run,
    launcher: Optional[Sequence[str]] = None,
    echo: Optional[TextIO] = None,
    run_dir: Optional[Path] = None,
) -> dict[str, Any]:
    """Run one run as a subprocess from the cwd; return its status record (also in status.json).

    ``run_dir`` defaults to ``OUT/<run name>`` (a need's run folder is given). A non-zero
    exit, or a zero exit without ``metrics.json``, marks the run failed (``FAILED`` +
    status.json). Ctrl-C stops the child, records ``interrupted`` and re-raises.
    """
    run_dir = run_dir if run_dir is not None else spec.out_dir / run.name
    (run_dir / FAILED_FILE).unlink(missing_ok=True)
    argv = launch_command(spec, run_dir, launcher)
    started = time.monotonic()
    record: dict[str, Any] = {"status": "running", "started_utc": utc_now(), "argv": argv, "pid": os.getpid()}
    atomic_write_json(run_dir / STATUS_FILE, record)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(run_dir / LOG_FILE, "ab") as log:
        log.write(f"=== {record['started_utc']} {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            tail = _tee(proc, log, echo)
            returncode = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            record.update(status="interrupted", duration_s=time.monotonic() - started)
            atomic_write_json(run_dir / STATUS_FILE, record)
            raise
    record["returncode"] = returncode
    record["duration_s"] = round(time.monotonic() - started, 3)
    record["finished_utc"] = utc_now()
    if returncode == 0 and (run_dir / METRICS_FILE).is_file():
        record["status"] = "finished"
    else:
        reason = f"exit code {returncode}" if returncode != 0 else f"exit code 0 but no {METRICS_FILE} was written"
        log_tail = b"\n".join(tail).decode("utf-8", errors="replace")
        record.update(status="failed", reason=reason, log_tail=log_tail)
        atomic_write_text(run_dir / FAILED_FILE, f"{reason}\n--- last lines of {LOG_FILE} ---\n{log_tail}\n")
    atomic_write_json(run_dir / STATUS_FILE, record)
    return record


def run_sweep(
    spec: SweepSpec,
    *,
    only: Sequence[str] = (),
    retry_failed: bool = False,
    dry_run: bool = False,
    script: Optional[str] = None,
    launcher: Optional[Sequence[str]] = None,
    echo_output: bool = True,
    out: Optional[TextIO] = None,
) -> int:
    """Expand, write configs and the manifest, then run (or only script) the selected runs.

    Args:
        spec: the parsed sweep.
        only: ``AXIS=LABEL`` filters (see :func:`select_runs`).
        retry_failed: rerun runs marked failed by an earlier sweep.
        dry_run: write configs, manifest and ``commands.sh`` only.
        script: ``"bash"`` or ``"slurm"``: like ``dry_run``, plus ``sweep.sbatch`` for slurm.
        launcher: argv template replacing the sweep's (tests inject fake trainers here).
        echo_output: also copy each run's output to ``out``.
        out: where progress lines go (default: sys.stdout).

    Returns:
        0 when every selected run is finished (or only scripts were written), 1 when some
        failed, 130 when interrupted.
    """
    out = out if out is not None else sys.stdout
    plan = plan_needs(spec, expand_grid(spec))
    runs = plan.cells
    selected = select_runs(spec, runs, only)
    required = plan.required(selected)
    to_run = [nr for nr in required if nr.status() not in ("finished", "given")]
    if script == "slurm" and to_run:
        raise SweepError(
            f"{spec.path}: need {to_run[0].name!r} has not finished, and a SLURM array does not keep order; "
            f"run `rsvlm sweep {spec.path}` first, or give --need {to_run[0].need.name}=CKPT"
        )
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    prepare_need_runs(spec, required)
    hashes = prepare_runs(spec, runs)
    write_scripts(spec, selected, script or "bash", launcher, first=[nr.run_dir for nr in to_run])
    manifest_extra: dict[str, dict[str, Any]] = {name: {"config_sha256": sha} for name, sha in hashes.items()}
    manifest = write_manifest(spec, runs, manifest_extra, needs=plan.need_runs)
    say = lambda text: print(text, file=out, flush=True)  # noqa: E731
    for line in chain_lines(spec, plan, selected):
        say(line)

    if dry_run or script:
        say(f"sweep {spec.name}: {len(runs)} runs, configs in {spec.out_dir}")
        for path in [manifest, spec.out_dir / COMMANDS_FILE] + (
            [spec.out_dir / SBATCH_FILE] if script == "slurm" else []
        ):
            say(f"  wrote {path}")
        if script == "slurm":
            say(f"submit with: sbatch {spec.out_dir / SBATCH_FILE}")
        return 0

    if not _run_needs(spec, required, retry_failed, launcher, out if echo_output else None, say):
        write_manifest(spec, runs, manifest_extra, needs=plan.need_runs)
        return 1
    say(f"sweep {spec.name}: {len(selected)} of {len(runs)} runs selected, output in {spec.out_dir}")
    runnable = ("pending", "failed") if retry_failed else ("pending",)
    todo = [r for r in selected if run_status(spec.out_dir / r.name) in runnable]
    t0 = time.monotonic()
    durations: list[float] = []
    executed = 0
    for index, run in enumerate(selected, start=1):
        run_dir = spec.out_dir / run.name
        head = f"[{index}/{len(selected)}] {run.name}"
        status = run_status(run_dir)
        if status == "finished":
            say(f"{head}: finished earlier, skipped")
            continue
        if status == "failed" and not retry_failed:
            say(f"{head}: failed earlier ({failure_info(run_dir)['reason']}), skipped; --retry-failed reruns it")
            continue
        remaining = len(todo) - executed
        eta = _fmt_seconds(sum(durations) / len(durations) * remaining) if durations else "?"
        say(f"{head}: running (elapsed {_fmt_seconds(time.monotonic() - t0)}, ETA {eta}) log: {run_dir / LOG_FILE}")
        try:
            record = execute_run(spec, run, launcher, out if echo_output else None)
        except KeyboardInterrupt:
            write_manifest(spec, runs, manifest_extra, needs=plan.need_runs)
            say(f"{head}: interrupted; rerun the sweep to continue (finished runs are kept)")
            return 130
        executed += 1
        durations.append(record["duration_s"])
        manifest_extra[run.name].update({k: record[k] for k in ("duration_s", "returncode") if k in record})
        write_manifest(spec, runs, manifest_extra, needs=plan.need_runs)
        if record["status"] == "finished":
            say(f"{head}: finished in {_fmt_seconds(record['duration_s'])}")
        else:
            say(
                f"{head}: FAILED ({record['reason']}) after {_fmt_seconds(record['duration_s'])}; see {run_dir / FAILED_FILE}"
            )

    statuses = {run.name: run_status(spec.out_dir / run.name) for run in selected}
    counts = collections.Counter(statuses.values())
    say(
        f"sweep {spec.name} done in {_fmt_seconds(time.monotonic() - t0)}: "
        f"{counts['finished']} finished, {counts['failed']} failed, {counts['pending']} pending"
    )
    for name, status in statuses.items():
        if status == "failed":
            say(f"  failed: {name} ({failure_info(spec.out_dir / name)['reason']})")
    return 1 if counts["failed"] or counts["pending"] else 0


def _run_needs(
    spec: SweepSpec,
    required: Sequence[NeedRun],
    retry_failed: bool,
    launcher: Optional[Sequence[str]],
    echo: Optional[TextIO],
    say: Callable[[str], None],
) -> bool:
    """Run the needs the selected runs depend on, in order; False when one did not finish."""
    for need_run in required:
        head = f"need {need_run.name}"
        status = need_run.status()
        if status in ("finished", "given"):
            check_ready(spec, need_run)
            say(f"{head}: {status}, {relative(need_run.checkpoint)}")
            continue
        if status == "failed" and not retry_failed:
            reason = failure_info(need_run.run_dir)["reason"]
            say(f"{head}: failed earlier ({reason}); --retry-failed reruns it; no run that needs it was started")
            return False
        say(f"{head}: running, log: {need_run.run_dir / LOG_FILE}")
        cell = Run(need_run.name, need_run.labels, dict(need_run.labels), need_run.overrides)
        record = execute_run(spec, cell, launcher, echo, run_dir=need_run.run_dir)
        if record["status"] != "finished":
            say(
                f"{head}: FAILED ({record['reason']}); see {need_run.run_dir / FAILED_FILE}; no run that needs it was started"
            )
            return False
        check_ready(spec, need_run)
        say(f"{head}: finished in {_fmt_seconds(record['duration_s'])}, {relative(need_run.checkpoint)}")
    return True


def chain_lines(spec: SweepSpec, plan: Plan, selected: Sequence[Run]) -> list[str]:
    """The order the sweep runs in: needs first (with the paths put into their overrides),
    then the selected runs (with theirs)."""
    required = plan.required(selected)
    lines = [f"sweep {spec.name}: {len(required)} needed runs first, then {len(selected)} runs"] if required else []
    for need_run in required:
        if need_run.status() == "given":
            lines.append(f"  need {need_run.name} [given]: {relative(need_run.checkpoint)}")
            continue
        recipe = relative(need_run.need.recipe)
        lines.append(
            f"  need {need_run.name} [{need_run.status()}]: {recipe} in {relative(need_run.run_dir)} "
            f"-> {relative(need_run.checkpoint)}"
        )
        summary = run_summary(resolve_config(need_run.need.recipe, need_run.overrides))
        lines += [f"      {summary}"] if summary else []
    for run in selected if required else ():
        order = [nr for nr in plan.need_runs if nr in plan.cell_needs[run.name]]
        after = ", ".join(nr.name for nr in order)
        status = run_status(spec.out_dir / run.name)
        lines.append(f"  run {run.name} [{status}]" + (f" after {after}" if after else ""))
        summary = run_summary(resolve_config(spec.base, run.overrides))
        lines += [f"      {summary}"] if summary else []
    return lines
