"""Instruction data written once into a cache folder keyed by a hash of its settings.

The preparers an ``InstructDataModule(generate=...)`` takes (generated GeoMag scenes, generated
multisource scenes, the Sen1Floods11 conversion) share one layout::

    <root>/<hash of settings()>/records.jsonl   the records (InstructDataModule's ``sources`` entry)
    <root>/<hash of settings()>/<marker>        written last: a killed build is redone, never half-used

:class:`KeyedBuild` owns that layout; a preparer (a dataclass with a ``root`` field) sets the
class attributes and defines :meth:`KeyedBuild.settings`.
"""

# No postponed annotations here: jsonargparse resolves a preparer's field types with its own
# module's globals, where a string "ClassVar[str]" from this base would not resolve, and then it
# takes every field of the preparer as Unvalidated (any value accepted, tuples dumped as lists).
import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

RECORDS_NAME = "records.jsonl"
COMPLETE_MARKER = "complete.json"


class KeyedBuild:
    """The cache folder, records path and completeness of a build keyed by its settings.

    Class attributes:
        default_root: the ``root`` default; replaced by ``$RSVLM_CACHE/<cache_name>`` when the
            ``RSVLM_CACHE`` environment variable is set.
        cache_name: the folder under ``$RSVLM_CACHE``.
        marker: the file written last, whose presence says the build is complete.
    """

    default_root: ClassVar[str]
    cache_name: ClassVar[str]
    marker: ClassVar[str] = COMPLETE_MARKER

    def settings(self) -> dict[str, Any]:  # pragma: no cover - each preparer defines it
        """Every setting that changes the output (the cache key)."""
        raise NotImplementedError

    def resolved_root(self) -> Path:
        """The cache folder (``$RSVLM_CACHE/<cache_name>`` for the default root when that variable is set)."""
        root = self.root  # type: ignore[attr-defined]
        if root == self.default_root and os.environ.get("RSVLM_CACHE"):
            return Path(os.environ["RSVLM_CACHE"]).expanduser() / self.cache_name
        return Path(root).expanduser()

    def folder(self) -> Path:
        """Folder of the build for these settings (keyed by their hash)."""
        key = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]
        return self.resolved_root() / key

    def records_path(self) -> Path:
        """The records file of the build (prepared or not); InstructDataModule's ``sources`` entry."""
        return self.folder() / RECORDS_NAME

    def write_build(self, records: list[Any], scenes: list[dict[str, Any]]) -> Path:
        """Finish a build in :meth:`folder`: check and write the records, the scene list
        (``scenes.json``), then the marker with the settings (last); returns :meth:`records_path`."""
        from rsvlm.data.multitask.jsonl import check_records, write_records
        from rsvlm.io.atomic import atomic_write_text

        out = self.folder()
        check_records(records, str(out))
        write_records(out / RECORDS_NAME, records)
        atomic_write_text(out / "scenes.json", json.dumps(scenes, indent=1))
        atomic_write_text(out / self.marker, json.dumps({**self.settings(), "records": len(records)}, indent=1))
        return out / RECORDS_NAME

    def is_prepared(self) -> bool:
        """True when the build for these settings is complete (its marker was written)."""
        return (self.folder() / self.marker).is_file()
