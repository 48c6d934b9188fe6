"""The JSON-lines file of instruction records: one :class:`InstructRecord` per line.

Paths (images, ``path`` masks) are stored relative to the file's folder when they lie under it,
and read back absolute, so a folder of records plus data moves as one piece. Files are written
atomically (:func:`rsvlm.io.atomic.atomic_path`): a reader sees the old file or the whole new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from rsvlm.contracts import MissingFileError
from rsvlm.data.multitask.records import InstructRecord, InstructRecordError
from rsvlm.data.multitask.validate import check_record
from rsvlm.io.atomic import atomic_path
from rsvlm.io.paths import absolute_from, relative_to


def _with_paths(record: InstructRecord, move: Callable[[str], str], where: str) -> InstructRecord:
    """A copy of ``record`` with its image and mask paths mapped by ``move`` (errors name ``where``)."""
    d = record.to_dict()
    d["image"] = move(d["image"]) if isinstance(d["image"], str) else [move(p) for p in d["image"]]
    d["masks"] = [{**m, "path": move(m["path"])} if isinstance(m, dict) and "path" in m else m for m in d["masks"]]
    return InstructRecord.from_dict(d, where)


def write_records(path: str | os.PathLike, records: Iterable[InstructRecord], overwrite: bool = True) -> Path:
    """Write ``records`` to a JSON-lines file (atomically); ids must be unique.

    Raises:
        InstructRecordError: a repeated id (names the file and the id).
    """
    out = Path(path)
    root = out.parent
    seen: set[str] = set()
    lines = []
    for record in records:
        if record.id in seen:
            raise InstructRecordError(f"{out}: record {record.id!r}: field 'id': repeated")
        seen.add(record.id)
        moved = _with_paths(record, lambda p: relative_to(p, root), str(out))
        lines.append(json.dumps(moved.to_dict(), ensure_ascii=False) + "\n")
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return out


def read_records(path: str | os.PathLike, check_files: bool = True) -> list[InstructRecord]:
    """Read and check a JSON-lines file of records (paths returned absolute).

    Args:
        path: the file.
        check_files: check that images and mask files exist (see :func:`check_record`).

    Raises:
        FileNotFoundError: no such file.
        InstructRecordError: a line that is not JSON, a malformed record or a repeated id; the one-line
            message names the file, the line, the record id and the field.
    """
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"instruction records file not found: {p}")
    root = p.parent
    out: list[InstructRecord] = []
    seen: dict[str, int] = {}
    with open(p, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{p}:{number}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InstructRecordError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            record = _with_paths(InstructRecord.from_dict(d, where), lambda q: absolute_from(q, root), where)
            if record.id in seen:
                raise InstructRecordError(
                    f"{where}: record {record.id!r}: field 'id': repeated (first on line {seen[record.id]})"
                )
            seen[record.id] = number
            check_record(record, where, check_files)
            out.append(record)
    return out


def check_records(records: Sequence[InstructRecord], where: str, check_files: bool = True) -> None:
    """Check records made in memory (a converter's output); ``where`` names their source."""
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise InstructRecordError(f"{where}: record {record.id!r}: field 'id': repeated")
        seen.add(record.id)
        check_record(record, where, check_files)
