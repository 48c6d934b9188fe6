"""Queries labelled with their task granularity, for the task-granularity classifier.

Records are JSON lines ``{"query": str, "granularity": "image" | "region" | "pixel", "split": ...}``
(``split`` optional: without it the records are split by a seeded stratified shuffle). Or
:func:`demo_queries` writes them from instruction templates of each task family: captions and
scene classification are image level; VQA and referring-object classification are region level;
referring segmentation and grounded captions are pixel level (GeoMag's grouping).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from rsvlm.contracts import RsvlmError

TEMPLATES: dict[str, tuple[str, ...]] = {
    "image": (
        "Describe this {scene} image in one sentence.",
        "Write a caption for the {scene} scene.",
        "What kind of scene is this: {scene} or something else?",
        "Classify the scene of this image.",
        "Give a short description of the whole image.",
    ),
    "region": (
        "How many {thing}s are there in the image?",
        "Is there a {thing} in the image?",
        "What is the colour of the {thing} near the {place}?",
        "What is the object in the {place} of the image?",
        "Which category does the object at the {place} belong to?",
    ),
    "pixel": (
        "Please segment the {thing} in the {place}.",
        "Give the mask of the {thing} next to the {place}.",
        "Segment all {thing}s in this image.",
        "Describe the image in detail and segment each {thing} you mention.",
        "Outline the {thing} closest to the {place}.",
    ),
}
FILLERS = {
    "scene": ("airport", "harbour", "farmland", "residential", "forest", "river", "parking lot", "stadium"),
    "thing": ("airplane", "ship", "storage tank", "vehicle", "building", "bridge", "tennis court", "pond"),
    "place": ("top left", "centre", "bottom right", "left edge", "road", "river bank", "large building"),
}


class QueryError(RsvlmError, ValueError):
    """A bad query records file (names the file and line)."""


def demo_queries(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` templated queries, the three granularities in turn, fillers drawn by ``seed``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        level = ("image", "region", "pixel")[i % 3]
        template = rng.choice(TEMPLATES[level])
        out.append({"query": template.format(**{k: rng.choice(v) for k, v in FILLERS.items()}), "granularity": level})
    return out


def read_queries(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a bad line is an error naming the file, line and field."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise QueryError(f"{path}:{number}: not JSON ({err.msg})") from err
        for key in ("query", "granularity"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise QueryError(f"{path}:{number}: field {key!r} missing or empty")
        records.append(record)
    if not records:
        raise QueryError(f"{path}: no records")
    return records


def stratified_split(records: Sequence[dict[str, Any]], fractions: dict[str, float], seed: int) -> dict[str, list]:
    """Records by split: per granularity, a seeded shuffle cut in the given proportions."""
    out: dict[str, list] = {name: [] for name in fractions}
    total = sum(fractions.values())
    for level in sorted({r["granularity"] for r in records}):
        group = [r for r in records if r["granularity"] == level]
        random.Random(f"{seed}-{level}").shuffle(group)
        start = 0
        for i, (name, share) in enumerate(fractions.items()):
            end = len(group) if i == len(fractions) - 1 else start + round(share / total * len(group))
            out[name] += group[start:end]
            start = end
    return out


def _collate(records: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    return {"query": [r["query"] for r in records], "granularity": [r["granularity"] for r in records]}


class QueryDataModule(L.LightningDataModule):
    """Batches ``{"query": [B str], "granularity": [B str]}``.

    Args:
        records: a JSON-lines file of queries (see the module docstring), or None for ``demo``.
        demo: how many templated queries to generate when ``records`` is None.
        split_fractions: train / val / test shares for records without a ``split``.
        batch_size: queries per batch.
        seed: generation and split seed.
    """

    def __init__(
        self,
        records: str | None = None,
        demo: int = 600,
        split_fractions: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1},
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.records, self.demo, self.batch_size, self.seed = records, demo, batch_size, seed
        self.split_fractions = dict(split_fractions)
        self.splits: dict[str, list] = {}

    def setup(self, stage: str | None = None) -> None:
        records = read_queries(self.records) if self.records else demo_queries(self.demo, self.seed)
        if all("split" in r for r in records):
            self.splits = {name: [r for r in records if r["split"] == name] for name in ("train", "val", "test")}
        else:
            self.splits = stratified_split(records, self.split_fractions, self.seed)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if not self.splits.get(split):
            raise QueryError(f"QueryDataModule: no {split} queries")
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle, collate_fn=_collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
