"""Writing files so that a crash never leaves a half-written one.

Every output rsvlm writes (checkpoints, masks, pictures, records, run records) goes through
:func:`atomic_path` (or :func:`atomic_write` / :func:`atomic_write_text`, built on it): the
content is written to a temporary file beside the target, flushed to disk, and moved into place
with ``os.replace``. Readers see the old file or the complete new one. The temporary name starts
with ``.`` and ends with ``.tmp``, so that globs such as ``*.ckpt`` never pick it up (writers
that guess a format from the name must be told it). Libraries that write a whole folder
(``save_pretrained``) write into :func:`atomic_folder`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    Args:
        path: the final file.
        overwrite: when False, an existing ``path`` is refused (``FileExistsError``) before
            anything is written.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    # mkstemp creates owner-only files; give the output the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it to ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path, overwrite) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success its files are moved into ``path``.

    Nothing reaches ``path`` until the whole body has run, and each file then replaces its
    namesake with ``os.replace``, so readers see the old or the new version of every file,
    never part of one. Files already in ``path`` that the new content lacks are kept. On error
    the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        files = sorted(f for f in tmp.rglob("*") if f.is_file())
        for file in files:
            with open(file, "rb+") as handle:
                os.fsync(handle.fileno())
        for file in files:
            target = path / file.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(file, target)
        for folder in sorted({(path / f.relative_to(tmp)).parent for f in files}):
            _fsync_folder(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
