"""Build SPIE records (and their tile / mask GeoTIFFs) from sources, resumably and in parallel.

:func:`build_spie` turns sources (:class:`rsvlm.data.spie.sources.SourceSpec`: folders of
image/label rasters) into a records file (:mod:`rsvlm.data.spie.records`):

* class merging per dataset kind (:data:`rsvlm.data.spie.sources.DATASET_CLASSES`);
* tiling and one record per tile and category (:mod:`rsvlm.data.spie.tiles`);
* official splits are kept: each source names its split, or (generated scenes) takes the
  split of each scene from its manifest;
* parallel workers (a process pool) compute tiles; the main process is the only writer and
  writes results in task order, so the file is identical for any number of workers;
* resumable: after a tile's records are flushed its key is appended to ``spie.jsonl.done``;
  a rerun skips tiles listed there and, for a tile that was cut short by a crash, appends only
  the records that are not yet in the file.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

from tqdm.auto import tqdm

from rsvlm.data.spie.records import RECORDS_NAME, RecordWriter, SpieRecord, read_records, repair_jsonl
from rsvlm.data.spie.sources import SourceSpec
from rsvlm.data.spie.tiles import EMPTY_TARGET_RATE, BuildConfig, TileTask, build_tile, plan_tiles
from rsvlm.io.atomic import atomic_write_text


@dataclass
class BuildSummary:
    """What a build did."""

    records_path: Path
    tiles_total: int
    tiles_skipped: int
    tiles_built: int
    records_written: int
    records_total: int
    seconds: float
    per_split: dict[str, int] = field(default_factory=dict)
    per_category: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        rate = self.tiles_built / self.seconds if self.seconds > 0 else float("nan")
        return (
            f"{self.records_path}: {self.records_written} new records from "
            f"{self.tiles_built} tiles ({self.tiles_skipped} already done) in "
            f"{self.seconds:.1f} s ({rate:.1f} tiles/s); {self.records_total} records in "
            f"total; per split {self.per_split}; per category {self.per_category}"
        )


def _read_done(path: Path) -> set[str]:
    if not path.exists():
        return set()
    repair_jsonl(path)
    return {line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line}


def build_spie(
    sources: Sequence[SourceSpec],
    out_dir: str | os.PathLike,
    tile: int = 512,
    workers: int = 0,
    style: Literal["paper", "released"] = "paper",
    template: Literal["spectral", "plain"] = "spectral",
    describer: Callable[..., str] | None = None,
    resume: bool = True,
    progress: bool = True,
    empty_rate: float = EMPTY_TARGET_RATE,
    max_regions: int = 10,
) -> BuildSummary:
    """Build SPIE records (and tile/mask GeoTIFFs) from sources into ``out_dir``.

    Output layout::

        out_dir/spie.jsonl                       the records (append-only)
        out_dir/spie.jsonl.done                  keys of finished tiles (for resuming)
        out_dir/build.json                       the build settings
        out_dir/images/<source>/<split>/<scene>[_r<row>_c<col>].tif
        out_dir/masks/<source>/<split>/<scene>[_r<row>_c<col>]_<category>.tif

    Args:
        sources: the input datasets.
        out_dir: output folder (created).
        tile: tile side in pixels.
        workers: worker processes; 0 computes tiles in this process. Workers are spawned
            (not forked), so a script calling this with ``workers > 0`` needs the usual
            ``if __name__ == "__main__":`` guard.
        style: APG format, ``paper`` or ``released``.
        template: instruction template, ``spectral`` (with the APG prompt) or ``plain``.
        max_regions: how many regions (largest first) each spectral prompt lists (paper: 10).
        describer: response generator ``(image C×H×W, mask H×W, category, bands) -> str``;
            default :class:`rsvlm.data.spie.describe.AttributeDescriber` with its plain phrasing (the
            demo's category-first and empty-answer openings are off). It must be picklable when
            ``workers > 0`` (it is sent to the workers); use ``workers=0`` for a model-backed
            describer.
        resume: skip tiles finished by an earlier build into ``out_dir`` (the settings must
            match). False starts over, replacing the records file.
        progress: show a tqdm progress bar.
        empty_rate: probability of an empty-target record for a category absent from a tile.

    Returns:
        A :class:`BuildSummary`.

    Raises:
        ValueError: resuming with different settings, bad sources.
        BandError / RasterError: a scene has the wrong band count, labels that do not fit the
            dataset kind, or a label grid that differs from its image (names the file).
    """
    start = time.perf_counter()
    if describer is None:
        from rsvlm.data.spie.describe import AttributeDescriber

        describer = AttributeDescriber()
    if tile < 1:
        raise ValueError(f"build_spie: tile must be positive, got {tile}")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    records_path, done_path, settings_path = (out / RECORDS_NAME, out / f"{RECORDS_NAME}.done", out / "build.json")
    # The describer's plain settings (seed, ...) change responses, so a resume must match them.
    describer_settings = (
        {k: v for k, v in vars(describer).items() if isinstance(v, (int, float, str, bool, type(None)))}
        if hasattr(describer, "__dict__")
        else {}
    )
    settings = {
        "tile": tile,
        "style": style,
        "template": template,
        "empty_rate": empty_rate,
        "max_regions": max_regions,
        "describer": f"{type(describer).__module__}.{type(describer).__qualname__}",
        "describer_settings": describer_settings,
    }
    if resume and settings_path.exists():
        old = json.loads(settings_path.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"{settings_path}: cannot resume a build made with other settings "
                f"(old, new): {diff}; use a new output folder or resume=False"
            )
    if not resume:
        for p in (records_path, done_path):
            if p.exists():
                p.unlink()
    old_sources = json.loads(settings_path.read_text()).get("sources", []) if settings_path.exists() and resume else []
    new_sources = [asdict(s) for s in sources]
    all_sources = old_sources + [s for s in new_sources if s not in old_sources]
    atomic_write_text(settings_path, json.dumps({**settings, "sources": all_sources}, indent=1))

    tasks = plan_tiles(sources, tile)
    done = _read_done(done_path) if resume else set()
    cut = repair_jsonl(records_path)
    if cut:
        warnings.warn(
            f"{records_path}: removed a half-written last line ({cut} bytes) left by "
            f"an interrupted build; its tile is rebuilt",
            stacklevel=2,
        )
    existing = {r.key() for r in read_records(records_path)} if records_path.exists() else set()
    todo = [t for t in tasks if t.key not in done]
    config = BuildConfig(
        out_dir=str(out),
        tile=tile,
        style=style,
        template=template,
        describer=describer,
        empty_rate=empty_rate,
        max_regions=max_regions,
    )
    written = 0
    bar = tqdm(total=len(todo), disable=not progress, unit="tile", desc="build-spie")
    with RecordWriter(records_path) as writer, open(done_path, "a", encoding="utf-8") as ledger:
        for task, records in _run(todo, config, workers):
            new = [r for r in records if r.key() not in existing]
            writer.write(new)
            existing.update(r.key() for r in new)
            written += len(new)
            # The ledger line goes after the records are flushed: a listed tile is complete.
            ledger.write(task.key + "\n")
            ledger.flush()
            bar.update(1)
            bar.set_postfix(records=written, refresh=False)
    bar.close()
    all_records = read_records(records_path)
    per_split: dict[str, int] = {}
    per_category: dict[str, int] = {}
    for r in all_records:
        per_split[r.split] = per_split.get(r.split, 0) + 1
        per_category[r.category] = per_category.get(r.category, 0) + 1
    return BuildSummary(
        records_path=records_path,
        tiles_total=len(tasks),
        tiles_skipped=len(tasks) - len(todo),
        tiles_built=len(todo),
        records_written=written,
        records_total=len(all_records),
        seconds=time.perf_counter() - start,
        per_split=per_split,
        per_category=per_category,
    )


def _run(tasks: Sequence[TileTask], config: BuildConfig, workers: int) -> Iterable[tuple[TileTask, list[SpieRecord]]]:
    """Yield (task, records) in task order, computed here or by a process pool."""
    if workers <= 0:
        for t in tasks:
            yield t, build_tile(t, config)
        return
    # spawn: fork is unsafe once torch / GDAL threads exist in the parent.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: deque[tuple[TileTask, Future]] = deque()
        it = iter(tasks)
        # A bounded window of in-flight tiles keeps memory flat on large builds.
        for t in it:
            pending.append((t, pool.submit(build_tile, t, config)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            t, fut = pending.popleft()
            records = fut.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(build_tile, nxt, config)))
            yield t, records
