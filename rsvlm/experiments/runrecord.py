"""The record a training run leaves in its folder: ``metrics.json`` and ``environment.json``.

``metrics.json`` is one flat JSON object: the test metrics as the LightningModule logged them
(``"test/F1"``, ``"test/IoU"``, ... as fractions in [0, 1]) plus the run's bookkeeping
(``"runtime_s"``, ``"peak_memory_mb"``, ``"params_total"``, ``"params_trainable"``). Its
presence is what marks a run as *finished* for ``rsvlm sweep`` and ``rsvlm table``, so it is
written last and atomically (temporary file + ``os.replace``): a run killed half-way never
leaves a half-written ``metrics.json`` behind.

``environment.json`` records what produced the numbers: Python, platform, package versions
(read from the installed distributions, so nothing heavy is imported), the accelerator and
the git commit of the rsvlm checkout when there is one.

A run's parsed configuration, when given, is kept beside them as ``config.parsed.yaml`` (the
full configuration LightningCLI saw, defaults included); ``config.yaml`` in a sweep run
folder is the sweep's resolved recipe and is never touched here.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from rsvlm.contracts import MissingFileError
from rsvlm.io.atomic import atomic_write_text

METRICS_FILE = "metrics.json"
ENVIRONMENT_FILE = "environment.json"
PARSED_CONFIG_FILE = "config.parsed.yaml"

# Distributions whose versions decide the numbers a run produces.
_PACKAGES = (
    "rsvlm",
    "torch",
    "torchvision",
    "lightning",
    "transformers",
    "peft",
    "timm",
    "torchmetrics",
    "segment-anything",
    "jsonargparse",
    "numpy",
)


@dataclass
class RunRecord:
    """What :func:`read_run_record` finds in a run folder.

    Attributes:
        folder: the run folder.
        metrics: the flat ``metrics.json`` object.
        environment: the ``environment.json`` object, or ``None`` when the run wrote none.
    """

    folder: Path
    metrics: dict[str, Any]
    environment: Optional[dict[str, Any]]


def to_plain(value: Any) -> Any:
    """Turn ``value`` into JSON/YAML-safe plain data.

    Tensors and NumPy scalars become Python numbers (via ``.item()`` / ``.tolist()``, so
    torch is never imported here), jsonargparse Namespaces become dicts (``as_dict``), paths
    and anything else unknown become strings.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if hasattr(value, "as_dict"):  # jsonargparse.Namespace
        return to_plain(value.as_dict())
    if hasattr(value, "numel") and hasattr(value, "item"):  # torch.Tensor
        return value.item() if value.numel() == 1 else to_plain(value.tolist())
    if hasattr(value, "item") and hasattr(value, "dtype"):  # NumPy scalar / 0-d array
        try:
            return value.item()
        except ValueError:
            return to_plain(value.tolist())
    return str(value)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` (made plain with :func:`to_plain`) as indented JSON.

    Non-finite floats are written as ``NaN`` / ``Infinity`` (Python's JSON reads them back):
    a diverged run must show up as such, not as a missing number.
    """
    atomic_write_text(Path(path), json.dumps(to_plain(obj), indent=2, allow_nan=True) + "\n")


def _package_versions() -> dict[str, Optional[str]]:
    versions: dict[str, Optional[str]] = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _device_info() -> dict[str, Any]:
    """Accelerator description; only consults torch when the caller already imported it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"torch_imported": False}
    info: dict[str, Any] = {"cuda_available": bool(torch.cuda.is_available())}
    if info["cuda_available"]:
        count = torch.cuda.device_count()
        info["cuda_device_count"] = count
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(count)]
        info["cuda_version"] = torch.version.cuda
        info["cudnn_version"] = torch.backends.cudnn.version()
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps is not None and mps.is_available())
    info["num_threads"] = torch.get_num_threads()
    return info


def _git_info() -> dict[str, Any]:
    """Commit and dirtiness of the git checkout that holds this rsvlm, if any."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> Optional[str]:
        try:
            done = subprocess.run(
                ["git", "-C", str(repo), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def environment_info() -> dict[str, Any]:
    """The environment record written to ``environment.json``."""
    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "argv": list(sys.argv),
        "packages": _package_versions(),
        "device": _device_info(),
        "git": _git_info(),
    }


def write_run_record(
    folder: str | os.PathLike[str],
    metrics: dict[str, Any],
    config: Optional[dict[str, Any]] = None,
    extra: Optional[dict[str, Any]] = None,
) -> Path:
    """Write a finished run's record into ``folder`` and return the ``metrics.json`` path.

    Args:
        folder: the run folder (the trainer's ``default_root_dir``); created if missing.
        metrics: test metrics, e.g. ``{"test/F1": 0.81, ...}``; tensors are converted to numbers.
        config: the parsed run configuration (dict or jsonargparse Namespace), kept as
            ``config.parsed.yaml``; ``None`` writes none.
        extra: bookkeeping merged into ``metrics.json`` (``runtime_s``, ``peak_memory_mb``,
            ``params_total``, ``params_trainable``, ...); a key also in ``metrics`` is an error.

    ``environment.json`` and the config are written first and ``metrics.json`` last, so a
    crash in between leaves the run unfinished rather than finished without its record. An
    existing ``metrics.json`` (a run repeated in the same folder) is moved aside to
    ``metrics.prev-<UTC time>.json``, never overwritten.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    clash = sorted(set(metrics) & set(extra))
    if clash:
        raise ValueError(f"write_run_record: keys {clash} are in both `metrics` and `extra`; expected disjoint keys")
    record = {**to_plain(dict(metrics)), **to_plain(extra)}
    for key, value in record.items():
        if not isinstance(value, (int, float, str, bool, type(None), list)):
            raise TypeError(
                f"write_run_record: metrics.json value for {key!r} is {type(value).__name__}; expected a number"
            )

    atomic_write_json(folder / ENVIRONMENT_FILE, environment_info())
    if config is not None:
        atomic_write_text(folder / PARSED_CONFIG_FILE, yaml.safe_dump(to_plain(config), sort_keys=False))

    target = folder / METRICS_FILE
    if target.exists():
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        os.replace(target, folder / f"metrics.prev-{stamp}.json")
    atomic_write_json(target, record)
    return target


def read_run_record(folder: str | os.PathLike[str]) -> RunRecord:
    """Read ``metrics.json`` (required) and ``environment.json`` (optional) from ``folder``.

    Raises:
        FileNotFoundError: the folder has no ``metrics.json`` (the run is not finished).
        ValueError: ``metrics.json`` is not a JSON object.
    """
    folder = Path(folder)
    path = folder / METRICS_FILE
    if not path.is_file():
        raise MissingFileError(f"{path}: no metrics.json; the run in {folder} has not finished")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metric name -> value, got {type(metrics).__name__}")
    environment = None
    env_path = folder / ENVIRONMENT_FILE
    if env_path.is_file():
        try:
            environment = json.loads(env_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            environment = None
    return RunRecord(folder=folder, metrics=metrics, environment=environment)
