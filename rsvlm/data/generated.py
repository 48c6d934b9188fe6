"""Generated SPIE data for demos and tests: scenes → SPIE records → band statistics, cached.

:class:`GeneratedData` names the scenes (:mod:`rsvlm.data.scenes`) and the build settings; its
:meth:`~GeneratedData.prepare` writes them once into a folder keyed by a hash of every setting
(so a change of any makes a new folder) and marks it complete last, so a killed preparation is
redone rather than half-used::

    <root>/<hash>/scenes/          generated GeoTIFFs + manifest.json
    <root>/<hash>/spie/spie.jsonl  SPIE records (rsvlm.data.spie.builder.build_spie)
    <root>/<hash>/spie/stats.json  band statistics of the train records
    <root>/<hash>/complete.json    written last
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rsvlm.data.bands import BandSpec
from rsvlm.data.materials import MaterialVariation
from rsvlm.data.sensor import SensorVariation
from rsvlm.data.spie.records import RECORDS_NAME
from rsvlm.data.spie.tiles import EMPTY_TARGET_RATE
from rsvlm.io.atomic import atomic_write_text

DEFAULT_GENERATED_ROOT = "~/.cache/rsvlm/generated-spie"
# Bump when generated data changes (2: responses open with the category; 3: empty answers
# open with words of their own), so old caches are not reused.
_GENERATED_VERSION = 3


def _hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class GeneratedData:
    """Generated SPIE data (scenes from :mod:`rsvlm.data.scenes`) for demos and tests.

    Args:
        root: cache folder; the default is replaced by ``$RSVLM_CACHE/generated-spie`` when
            the ``RSVLM_CACHE`` environment variable is set.
        n_train, n_val, n_test: scenes per split.
        size: scene side in pixels.
        seed: generation seed.
        prompt_regions: regions listed by each spectral prompt (the paper lists up to 10;
            fewer keep the demo's sequences short).
        response_regions: regions described by each generated response.
        empty_rate: probability of an "empty target" record (a category absent from a scene,
            response "no ... regions can be seen ..."); see :func:`rsvlm.data.spie.builder.build_spie`.
        sensor: per-scene sensor effects (gain/offset, haze, noise, integer DNs; see
            :class:`rsvlm.data.sensor.SensorVariation`); None (default) keeps reflectance. Part
            of the cache key when it changes anything.
        materials: per-region material mixtures (canopy cover, turbidity, brightness, mixed
            boundary pixels; :class:`rsvlm.data.materials.MaterialVariation`); None (default):
            one pure signature per class. Part of the cache key when it changes anything.
        layout: scene layout, ``"blobs"`` (default), ``"parcels"`` (field mosaics) or ``"mixed"``
            (:func:`rsvlm.data.scenes.generate_layout`); part of the cache key unless the default.
        uniform: the share of scenes that are one class throughout (a tile inside a lake, a
            forest, a city; real imagery has many, the layouts never make one); part of the cache
            key unless 0.
        categories: build records of these categories only (default: vegetation, water and
            building). Bands without SWIR (e.g. blue, green, red, nir) cannot give NDBI, so
            such builds leave out ``building``.
        category_first, distinct_empty_openings: response phrasing made for the demo's small LM
            (see :class:`rsvlm.data.spie.describe.AttributeDescriber`; real SPIE builds leave
            both off). On here, the demo's values; part of the cache key only when changed.
    """

    root: str = DEFAULT_GENERATED_ROOT
    n_train: int = 240
    n_val: int = 40
    n_test: int = 60
    size: int = 64
    seed: int = 0
    prompt_regions: int = 10
    response_regions: int = 4
    empty_rate: float = EMPTY_TARGET_RATE
    sensor: SensorVariation | None = None
    materials: MaterialVariation | None = None
    layout: Literal["blobs", "parcels", "mixed"] = "blobs"
    uniform: float = 0.0
    categories: list[str] | None = None
    category_first: bool = True
    distinct_empty_openings: bool = True

    def _classes(self) -> dict[str, list[int]] | None:
        """The categories asked for, as the generated kind's label codes (None: all)."""
        from rsvlm.data.indices import normalize_category
        from rsvlm.data.scenes import CATEGORY_CODES

        if self.categories is None:
            return None
        return {c: [CATEGORY_CODES[c]] for c in map(normalize_category, self.categories)}

    def resolved_root(self) -> Path:
        if self.root == DEFAULT_GENERATED_ROOT and os.environ.get("RSVLM_CACHE"):
            return Path(os.environ["RSVLM_CACHE"]).expanduser() / "generated-spie"
        return Path(self.root).expanduser()

    def folder(self, bands: BandSpec, apg_style: str) -> Path:
        """Folder of the build for these settings, bands and APG style (keyed by their hash)."""
        params = {
            "version": _GENERATED_VERSION,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "size": self.size,
            "seed": self.seed,
            "prompt_regions": self.prompt_regions,
            "response_regions": self.response_regions,
            "empty_rate": self.empty_rate,
            "bands": list(bands.names),
            "apg_style": apg_style,
        }
        if self.sensor is not None and self.sensor.active:
            # Only then: builds without sensor effects keep their folder (and cache).
            params["sensor"] = asdict(self.sensor)
        if self.materials is not None and self.materials.active:
            params["materials"] = asdict(self.materials)
        if self.layout != "blobs":
            params["layout"] = self.layout
        if self.uniform:
            params["uniform"] = self.uniform
        if self.categories is not None:
            params["categories"] = sorted(self.categories)
        phrasing = {"category_first": self.category_first, "distinct_empty_openings": self.distinct_empty_openings}
        if not all(phrasing.values()):  # the demo's phrasing keeps its folder (and cache)
            params["phrasing"] = phrasing
        return self.resolved_root() / _hash(params)

    def records_path(self, bands: BandSpec, apg_style: str) -> Path:
        """The records file of the build (prepared or not)."""
        return self.folder(bands, apg_style) / "spie" / RECORDS_NAME

    def is_prepared(self, bands: BandSpec, apg_style: str) -> bool:
        return (self.folder(bands, apg_style) / "complete.json").exists()

    def prepare(self, bands: BandSpec, apg_style: str) -> Path:
        """Write the scenes, build their SPIE records and statistics, unless done before.

        Returns:
            The build's folder.
        """
        from rsvlm.data.scenes import write_scene_folder
        from rsvlm.data.spie.builder import build_spie
        from rsvlm.data.spie.describe import AttributeDescriber
        from rsvlm.data.spie.records import read_records
        from rsvlm.data.spie.sources import SourceSpec
        from rsvlm.data.stats import compute_band_stats, save_stats

        out = self.folder(bands, apg_style)
        marker = out / "complete.json"
        if marker.exists():
            return out
        scenes = out / "scenes"
        if not (scenes / "manifest.json").exists():
            write_scene_folder(
                scenes,
                self.n_train + self.n_val + self.n_test,
                self.size,
                bands,
                seed=self.seed,
                split_fractions={"train": self.n_train, "val": self.n_val, "test": self.n_test},
                sensor=self.sensor,
                materials=self.materials,
                layout=self.layout,
                uniform=self.uniform,
            )
        summary = build_spie(
            [SourceSpec("generated", str(scenes), bands=list(bands.names), name="generated", classes=self._classes())],
            out / "spie",
            tile=max(512, self.size),
            workers=0,
            style=apg_style,
            progress=False,
            max_regions=self.prompt_regions,
            empty_rate=self.empty_rate,
            describer=AttributeDescriber(
                max_regions=self.response_regions,
                category_first=self.category_first,
                distinct_empty_openings=self.distinct_empty_openings,
            ),
        )
        records = read_records(summary.records_path)
        train = [r for r in records if r.split == "train"] or records
        save_stats(compute_band_stats(train, bands), out / "spie" / "stats.json")
        marker_data = {**asdict(self), "bands": list(bands.names), "apg_style": apg_style}
        atomic_write_text(marker, json.dumps({**marker_data, "records": summary.records_total}, indent=1))
        return out
