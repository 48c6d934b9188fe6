"""The Sen1Floods11 conversion (:mod:`rsvlm.data.multitask.converters.sen1floods11`) as an
``InstructDataModule(generate=...)`` preparer, so that a recipe can run it
(``recipes/earthgptx-sen1floods11-smoke.yaml``)::

    <root>/<hash>/...   the converter's output folder, keyed by the settings and the chip's SHA-256
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsvlm.data.multitask.converters.common import ConverterError
from rsvlm.data.multitask.converters.sen1floods11 import (
    CHIP,
    MARKER,
    check_settings,
    chip_files,
    convert_sen1floods11,
)
from rsvlm.data.multitask.keyed_build import KeyedBuild

DEFAULT_SOURCE = "../shared/data/sen1floods11-spain"
DEFAULT_ROOT = "~/.cache/rsvlm/sen1floods11"
# Bump when the output changes, so that old caches are not reused.
_VERSION = 1


def _digest(paths: tuple[Path, ...]) -> str:
    """SHA-256 of the files' bytes, in order (the chip's content is part of the cache key)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


@dataclass
class Sen1Floods11Data(KeyedBuild):
    """The Sen1Floods11 conversion as an ``InstructDataModule(generate=...)`` preparer (an
    :class:`~rsvlm.data.multitask.datamodule.InstructGenerator`), written once into a folder keyed by
    its settings and the chip's bytes.

    Args:
        source: the folder holding the chip (relative paths from the working directory).
        root: cache folder; the default is replaced by ``$RSVLM_CACHE/sen1floods11`` when the
            ``RSVLM_CACHE`` environment variable is set.
        tile, prompts_per_tile, val_rows, seed, chip: as :func:`convert_sen1floods11`.

    Raises:
        ConverterError: (from :meth:`records_path` or :meth:`prepare`) ``source`` is not a folder holding the
            chip, or a bad setting; one line naming the field.
    """

    default_root = DEFAULT_ROOT
    cache_name = "sen1floods11"
    marker = MARKER

    source: str = DEFAULT_SOURCE
    root: str = DEFAULT_ROOT
    tile: int = 64
    prompts_per_tile: int = 8
    val_rows: int = 1
    seed: int = 0
    chip: str = CHIP

    def __post_init__(self) -> None:
        # Checked in prepare(), not here nor in records_path(): jsonargparse builds the generator and the
        # datamodule (which asks for records_path()) while parsing a recipe and buries their errors in its own
        # message; prepare_data's error reaches the CLI as one line.
        self._inputs: tuple[Path, Path, str] | None = None

    def inputs(self) -> tuple[Path, Path, str]:
        """``(S1 image, label, SHA-256 of both)`` of the chip, checked once.

        Raises:
            ConverterError: a bad setting, or ``source`` not a folder holding the chip (names the field).
        """
        if self._inputs is None:
            name = type(self).__name__
            check_settings(name, self.tile, self.prompts_per_tile, self.val_rows)
            folder = Path(self.source).expanduser()
            if not folder.is_dir():
                raise ConverterError(
                    f"{name}.source: Sen1Floods11 folder not found: {folder} (from {Path.cwd()}); expected e.g. "
                    f"{DEFAULT_SOURCE} holding {self.chip}_S1Hand.tif and {self.chip}_LabelHand.tif"
                )
            try:
                image, label = chip_files(folder, self.chip)
            except ConverterError as error:
                raise ConverterError(f"{name}.source: {error}") from None
            self._inputs = (image, label, _digest((image, label)))
        return self._inputs

    def _fingerprint(self) -> str:
        """The chip's SHA-256, or ``"missing"`` while it cannot be read (:meth:`prepare` then says why)."""
        try:
            return self.inputs()[2]
        except ConverterError:
            return "missing"

    def settings(self) -> dict[str, Any]:
        """Every setting that changes the output, with the chip's SHA-256 (the cache key)."""
        return {
            "version": _VERSION,
            "chip": self.chip,
            "chip_sha256": self._fingerprint(),
            "tile": self.tile,
            "prompts_per_tile": self.prompts_per_tile,
            "val_rows": self.val_rows,
            "seed": self.seed,
        }

    def prepare(self) -> Path:
        """Convert the chip unless done before; returns :meth:`records_path`.

        Raises:
            ConverterError: a bad setting or a missing chip (one line naming the field).
        """
        self.inputs()
        if not self.is_prepared():
            convert_sen1floods11(
                self.source,
                self.folder(),
                tile=self.tile,
                prompts_per_tile=self.prompts_per_tile,
                val_rows=self.val_rows,
                seed=self.seed,
                chip=self.chip,
                overwrite=True,
            )
        return self.records_path()
