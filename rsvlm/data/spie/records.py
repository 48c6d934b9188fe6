"""SPIE records: the :class:`SpieRecord` sample, its JSON-lines file and the LLaVA export.

A SPIE sample (SPEX paper) is a multispectral image tile, a binary land-cover mask for one
category, the instruction (with the APG spectral prompt) and the response.

``spie.jsonl`` holds one JSON object per line (the fields of :class:`SpieRecord`). It is
append-only: every write is a whole line followed by ``\\n`` and flushed, so a crash can only
leave a half-written *last* line (no ``\\n``). :func:`read_records` ignores such a line with a
warning; :class:`RecordWriter` (and so :func:`append_records` and a resumed build) truncates
it before appending. Paths are stored relative to the records file's folder when they lie
under it, and :func:`read_records` returns them absolute.

Every record names its source dataset (``dataset``: ``segmunich``, ``chesapeake``,
``globe230k``, ``spacenet2``, ``gid15``, ...), the unit the SPEX paper trains and evaluates
separately (its Tables II–VI). Files written before the field existed are read with the name
inferred from ``source`` (:func:`dataset_of_source`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from rsvlm.contracts import MissingFileError, RsvlmError
from rsvlm.io.atomic import atomic_write_text
from rsvlm.io.paths import absolute_from, relative_to

RECORDS_NAME = "spie.jsonl"


class RecordError(RsvlmError, ValueError):
    """A records file or record is malformed (the message names the file, line and field)."""


@dataclass
class SpieRecord:
    """One SPIE sample.

    Attributes:
        image: image GeoTIFF (C bands; nodata/NaN pixels are invalid).
        mask: binary mask GeoTIFF (1 band, 0/1), same grid as ``image``.
        category: ``vegetation``, ``water`` or ``building``.
        bands: names of the image's bands, in channel order.
        spectral_prompt: the APG attribute text.
        instruction: the instruction given to the model (contains the prompt for the
            spectral template).
        response: the target answer.
        split: ``train``, ``val``, ``test``, ...
        source: name of the source the tile came from.
        tile: ``[row, col, h, w]`` of the window in the source scene (h, w: unpadded part),
            or None when the record covers the whole scene.
        dataset: the source dataset (e.g. ``segmunich``); None (absent from older files) is
            inferred from ``source`` by :func:`dataset_of_source`.
    """

    image: str
    mask: str
    category: str
    bands: list[str]
    spectral_prompt: str
    instruction: str
    response: str
    split: str
    source: str
    tile: list[int] | None = None
    dataset: str | None = None

    def __post_init__(self) -> None:
        if self.dataset is None:
            self.dataset = dataset_of_source(self.source)

    def key(self) -> tuple[str, str]:
        """(image, category): unique per record within a build."""
        return (self.image, self.category)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "record") -> SpieRecord:
        """Validate and build a record from a parsed JSON object."""
        if not isinstance(d, Mapping):
            raise RecordError(f"{where}: expected a JSON object, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d and n not in ("tile", "dataset")]
        if missing:
            raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
        for n in ("image", "mask", "category", "spectral_prompt", "instruction", "response", "split", "source"):
            if not isinstance(d[n], str):
                raise RecordError(f"{where}: field {n!r} must be a string, got {d[n]!r}")
        if not isinstance(d["bands"], list) or not all(isinstance(b, str) for b in d["bands"]):
            raise RecordError(f"{where}: field 'bands' must be a list of band names, got {d['bands']!r}")
        tile = d.get("tile")
        if tile is not None and (
            not isinstance(tile, list) or len(tile) != 4 or not all(isinstance(t, int) for t in tile)
        ):
            raise RecordError(f"{where}: field 'tile' must be [row, col, h, w] or null, got {tile!r}")
        dataset = d.get("dataset")
        if dataset is not None and (not isinstance(dataset, str) or not dataset):
            raise RecordError(f"{where}: field 'dataset' must be a non-empty string or null, got {dataset!r}")
        return cls(**{n: d.get(n) for n in names})


def dataset_of_source(source: str) -> str:
    """The dataset a record came from, inferred from its source name.

    A build names a source ``<kind>-<folder>`` unless the source gives ``name=``
    (:meth:`rsvlm.data.spie.sources.SourceSpec.source_name`): a name that is a dataset kind, or
    starts with one followed by ``-``, belongs to that kind (``segmunich-train`` →
    ``segmunich``); any other name (a ``binary`` source, a custom name) is its own dataset.
    """
    from rsvlm.data.spie.sources import DATASET_CLASSES

    kind = source.split("-", 1)[0]
    return kind if kind in DATASET_CLASSES else source


def repair_jsonl(path: str | os.PathLike) -> int:
    """Cut a half-written last line (one without a trailing newline) off a JSON-lines file.

    Returns:
        The number of bytes removed (0 when the file is intact or absent).
    """
    p = Path(path)
    if not p.exists():
        return 0
    size = p.stat().st_size
    if size == 0:
        return 0
    with open(p, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        # Scan back in blocks for the last newline.
        pos, block = size, 65536
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
    return size - keep


def _iter_lines(path: Path) -> Iterable[tuple[int, str]]:
    """Complete lines (those ending in a newline) with 1-based numbers; warns on a partial tail."""
    with open(path, encoding="utf-8", newline="\n") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith("\n"):
                warnings.warn(
                    f"{path}: ignoring half-written last line {number} ({len(line)} characters; an interrupted build?)",
                    stacklevel=3,
                )
                return
            if line.strip():
                yield number, line


def read_records(path: str | os.PathLike) -> list[SpieRecord]:
    """Read a SPIE JSON-lines file.

    Paths in the file that are relative are taken relative to the file's folder and returned
    absolute. A half-written last line is ignored (with a warning).

    Raises:
        FileNotFoundError: no such file.
        RecordError: a complete line is not valid JSON or lacks a field (names file and line).
    """
    p = Path(path)
    if not p.exists():
        raise MissingFileError(f"SPIE records file not found: {p}")
    root = p.parent
    out = []
    for number, line in _iter_lines(p):
        where = f"{p}:{number}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        rec = SpieRecord.from_dict(d, where)
        rec.image, rec.mask = absolute_from(rec.image, root), absolute_from(rec.mask, root)
        out.append(rec)
    return out


class RecordWriter:
    """Append-only writer of a SPIE JSON-lines file (use as a context manager).

    Opening repairs a half-written last line; every :meth:`write` writes whole lines and
    flushes them; closing fsyncs.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_jsonl(self.path)
        self._f = open(self.path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed by close() / __exit__

    def write(self, records: Sequence[SpieRecord]) -> None:
        if not records:
            return
        root = self.path.parent
        lines = []
        for r in records:
            d = asdict(r)
            d["image"], d["mask"] = relative_to(r.image, root), relative_to(r.mask, root)
            lines.append(json.dumps(d, ensure_ascii=False) + "\n")
        self._f.write("".join(lines))
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def append_records(path: str | os.PathLike, records: Sequence[SpieRecord]) -> None:
    """Append records to a JSON-lines file (created if absent), repairing a partial last line."""
    with RecordWriter(path) as w:
        w.write(records)


def export_llava(
    records: Sequence[SpieRecord] | str | os.PathLike, path: str | os.PathLike, root: str | os.PathLike | None = None
) -> Path:
    """Write records as the LLaVA-style JSON list of the released SPEX code (atomically).

    Each item is ``{"id", "image", "gt_image", "conversations": [{"from": "human", "value":
    "<image>\\n" + instruction}, {"from": "gpt", "value": response}]}``.

    Args:
        records: records, or a records file to read.
        path: output JSON file.
        root: image folder the paths are made relative to (the released code joins its
            ``image_folder`` with them); default: the folder of ``path``. Paths outside it
            stay absolute.
    """
    recs = read_records(records) if isinstance(records, (str, os.PathLike)) else list(records)
    out = Path(path)
    base = Path(root) if root is not None else out.parent
    items = []
    for r in recs:
        items.append(
            {
                "id": Path(r.mask).stem,
                "image": relative_to(r.image, base),
                "gt_image": relative_to(r.mask, base),
                "conversations": [
                    {"from": "human", "value": "<image>\n" + r.instruction},
                    {"from": "gpt", "value": r.response},
                ],
            }
        )
    atomic_write_text(out, json.dumps(items, ensure_ascii=False, indent=1))
    return out


def select_datasets(
    records: Sequence[SpieRecord], datasets: Sequence[str] | None, where: str | os.PathLike = "records"
) -> list[SpieRecord]:
    """The records of the named source datasets (all records when ``datasets`` is None).

    Args:
        records: records read from one file.
        datasets: dataset names (:attr:`SpieRecord.dataset`), e.g. ``["segmunich"]``.
        where: the records file, named in errors.

    Raises:
        RecordError: a name no record carries (the message lists the names present), or no
            record left.
    """
    if datasets is None:
        return list(records)
    present = sorted({str(r.dataset) for r in records})
    unknown = [d for d in datasets if d not in present]
    if unknown:
        raise RecordError(
            f"{where}: dataset(s) {', '.join(map(repr, unknown))} not in the records; datasets present: "
            f"{', '.join(present) or 'none'}"
        )
    wanted = set(datasets)
    kept = [r for r in records if r.dataset in wanted]
    if not kept:
        raise RecordError(f"{where}: no records left after selecting datasets {list(datasets)}")
    return kept
