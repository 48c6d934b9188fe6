"""Paths stored in records files: relative to the file's folder when they lie under it."""

from __future__ import annotations

from pathlib import Path


def relative_to(path: str, root: Path) -> str:
    """``path`` relative to ``root`` when it lies under it (POSIX separators), else as given."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(p)


def absolute_from(path: str, root: Path) -> str:
    """``path`` made absolute against ``root`` (an absolute path is kept)."""
    p = Path(path)
    return str(p if p.is_absolute() else (root / p).resolve())
