"""Per-band statistics for normalisation, keyed by band name.

``stats.json``::

    {"bands": {"blue": {"mean": 0.071, "std": 0.012, "count": 123456}, ...},
     "images": 240, "source": "data/spie/spie.jsonl"}

Means and standard deviations are over **valid** pixels only (see
:mod:`rsvlm.data.raster`), population std (ddof = 0), accumulated image by image in float64
with Chan et al.'s pairwise update, so memory stays flat on any dataset size. Each image file
is counted once even when several records (one per category) share it.

Create the file with ``rsvlm data stats --records RECORDS --out stats.json``; a datamodule
without it is an error (:class:`MissingStatsError`), never a silent default.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rsvlm.contracts import RsvlmError
from rsvlm.data.bands import BandError, BandSpec, band_spec
from rsvlm.data.raster import read_raster
from rsvlm.io.atomic import atomic_write_text

STATS_COMMAND = "rsvlm data stats --records {records} --out {out}"


class MissingStatsError(RsvlmError, FileNotFoundError):
    """The band statistics file a datamodule needs does not exist."""


class StatsError(RsvlmError, ValueError):
    """A statistics file is malformed or lacks a band (names the file and band)."""


class BandAccumulator:
    """Streaming per-band count, mean and sum of squared deviations (float64)."""

    def __init__(self, num_bands: int) -> None:
        self.count = np.zeros(num_bands, dtype=np.float64)
        self.mean = np.zeros(num_bands, dtype=np.float64)
        self.m2 = np.zeros(num_bands, dtype=np.float64)

    def update(self, data: np.ndarray, valid: np.ndarray) -> None:
        """Add the valid pixels of a C×H×W image (``valid`` H×W bool)."""
        x = data[:, valid].astype(np.float64)  # C×N
        n = x.shape[1]
        if n == 0:
            return
        mean_b = x.mean(axis=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), np.nan))


def _paths(items: Iterable[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for it in items:
        p = getattr(it, "image", it)
        seen.setdefault(os.fspath(p), None)
    return list(seen)


def compute_band_stats(
    items: Iterable[Any], bands: BandSpec | str | Sequence[str] | None = None, progress: bool = False
) -> dict[str, Any]:
    """Per-band mean/std over the valid pixels of images.

    Args:
        items: :class:`~rsvlm.data.spie.records.SpieRecord` objects (their ``image``) or image paths;
            duplicates are read once.
        bands: the band spec of the images; for records, None takes each record's ``bands``
            (which must then agree across records).
        progress: show a progress bar.

    Returns:
        ``{"bands": {name: {"mean", "std", "count"}}, "images": n}``.

    Raises:
        BandError: an image's band count differs from the spec, or records disagree on bands.
        ValueError: no images, or a band without a single valid pixel.
    """
    items = list(items)
    spec = band_spec(bands) if bands is not None else None
    if spec is None:
        names = {tuple(getattr(it, "bands", ()) or ()) for it in items}
        if len(names) != 1 or not next(iter(names)):
            raise BandError(
                f"compute_band_stats: give bands=; the items carry "
                f"{'no band names' if not any(names) else f'different band lists {sorted(names)}'}"
            )
        spec = BandSpec(next(iter(names)))
    paths = _paths(items)
    if not paths:
        raise ValueError("compute_band_stats: no images given")
    acc = BandAccumulator(len(spec))
    for p in tqdm(paths, disable=not progress, unit="image", desc="band stats"):
        raster = read_raster(p, bands=spec)
        acc.update(raster.data, raster.valid)
    empty = [n for n, c in zip(spec.names, acc.count) if c == 0]
    if empty:
        raise ValueError(f"compute_band_stats: band(s) {empty} have no valid pixel in {len(paths)} image(s)")
    return stats_table(spec, acc, len(paths))


def stats_table(spec: BandSpec, acc: BandAccumulator, images: int) -> dict[str, Any]:
    """The statistics of ``acc`` as a statistics file holds them.

    Returns:
        ``{"bands": {name: {"mean", "std", "count"}}, "images": images}``, bands in ``spec`` order.
    """
    return {
        "bands": {
            n: {"mean": float(m), "std": float(s), "count": int(c)}
            for n, m, s, c in zip(spec.names, acc.mean, acc.std, acc.count)
        },
        "images": images,
    }


def save_stats(stats: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write statistics as JSON (atomically: temporary file, then rename)."""
    out = Path(path)
    _check(stats, str(out))
    atomic_write_text(out, json.dumps(stats, indent=1))
    return out


def _check(stats: Any, where: str) -> None:
    if not isinstance(stats, Mapping) or not isinstance(stats.get("bands"), Mapping):
        raise StatsError(f"{where}: expected an object with a 'bands' object (band name → {{mean, std}})")
    for name, s in stats["bands"].items():
        if not isinstance(s, Mapping) or not {"mean", "std"} <= set(s):
            raise StatsError(f"{where}: bands.{name} must have 'mean' and 'std'")
        mean, std = s["mean"], s["std"]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (mean, std)):
            raise StatsError(f"{where}: bands.{name} has non-finite mean/std ({mean}, {std})")
        if std < 0:
            raise StatsError(f"{where}: bands.{name}.std is negative ({std})")


def load_stats(path: str | os.PathLike, records: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read a statistics file.

    Args:
        path: the JSON file.
        records: the records file it belongs to, only to write the create-command into the
            error message.

    Raises:
        MissingStatsError: the file does not exist (names it and the command that creates it).
        StatsError: the file is malformed.
    """
    p = Path(path)
    if not p.exists():
        cmd = STATS_COMMAND.format(records=records or "RECORDS.jsonl", out=p)
        raise MissingStatsError(
            f"band statistics file not found: {p}. A datamodule needs per-band statistics; create them with `{cmd}`"
        )
    try:
        stats = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise StatsError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    _check(stats, str(p))
    return stats


def mean_std(
    stats: Mapping[str, Any], bands: BandSpec | str | Sequence[str], where: str = "statistics"
) -> tuple[np.ndarray, np.ndarray]:
    """float32 (C,) means and stds of ``bands``, in the spec's order.

    Raises:
        StatsError: a band is missing (names it and ``where``) or has std 0.
    """
    spec = band_spec(bands)
    table = stats["bands"]
    missing = [n for n in spec.names if n not in table]
    if missing:
        raise StatsError(
            f"{where}: no statistics for band(s) {missing} (it has "
            f"{', '.join(table)}); recompute them for bands {', '.join(spec.names)}"
        )
    zero = [n for n in spec.names if table[n]["std"] == 0]
    if zero:
        raise StatsError(f"{where}: band(s) {zero} have std 0 (a constant band cannot be normalised)")
    mean = np.asarray([table[n]["mean"] for n in spec.names], dtype=np.float32)
    std = np.asarray([table[n]["std"] for n in spec.names], dtype=np.float32)
    return mean, std
