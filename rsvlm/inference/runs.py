"""Which recipe and checkpoint a run folder (or a checkpoint inside one) stands for."""

from __future__ import annotations

import os
from pathlib import Path

from rsvlm.contracts import RsvlmError

CONFIG_NAMES = ("config.yaml", "config.parsed.yaml")


class LoadError(RsvlmError, FileNotFoundError):
    """A model path that is not a run folder, a checkpoint or a recipe + checkpoint."""


def _find_config(start: Path) -> Path | None:
    """The run's saved recipe: ``config.yaml`` in ``start`` or up to three folders above it."""
    for folder in [start, *list(start.parents)[:3]]:
        for name in CONFIG_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def resolve_run(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(recipe, checkpoint)`` of a run folder or a checkpoint inside one.

    A run folder gives its newest version's ``best-*.ckpt`` (the checkpoint ``fit`` tested),
    else ``last.ckpt``; the recipe is the ``config.yaml`` LightningCLI saved beside it.

    Raises:
        LoadError: naming the path and what is missing.
    """
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".ckpt":
            raise LoadError(f"{p}: not a checkpoint (.ckpt) or a run folder")
        config = _find_config(p.parent)
        if config is None:
            raise LoadError(f"{p}: no config.yaml beside it or in the folders above; pass recipe= as well")
        return config, p
    if not p.is_dir():
        raise LoadError(f"{p}: no such run folder or checkpoint")
    checkpoints = sorted(p.rglob("*.ckpt"), key=lambda c: (c.stat().st_mtime, c.name))
    if not checkpoints:
        raise LoadError(f"{p}: a run folder needs a checkpoint (*.ckpt) below it; none found")
    best = [c for c in checkpoints if c.name.startswith("best")]
    ckpt = (best or [c for c in checkpoints if c.name == "last.ckpt"] or checkpoints)[-1]
    config = _find_config(ckpt.parent)
    if config is None:
        raise LoadError(f"{p}: found {ckpt.name} but no config.yaml of the run; pass recipe= as well")
    return config, ckpt
