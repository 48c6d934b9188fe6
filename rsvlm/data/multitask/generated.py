"""Generated RGB "aerial" scenes and GeoMag instruction records for the offline demo (``geomag.md`` §3.4).

Each scene is a background of one scene class (farmland, forest, residential, harbour, desert; told
apart by colour and texture) with small flat-coloured objects on it (ship, car, storage tank, airplane,
building; :mod:`rsvlm.data.multitask.generated_shapes`). Objects share colours across classes, and
about half of the extra objects repeat the class and colour of another one elsewhere, so a target sits
among distractors of other classes and of its own kind. Every object has a unique
(class, colour, coarse location) triple in its scene, so "the red ship at the top left" names one object.
Object boxes (plus one pixel) never overlap: a box holds its own object's pixels only.

One record per (scene, task), with the GeoMag templates of :mod:`rsvlm.data.multitask.templates`:

* ``scene_classification`` (image): "Classify the image within one of the given classes: …" → class;
* ``vqa`` (region, ``qtype`` presence): "Is there a ship in the image?" → yes / no (half each on average);
* ``referring_classification`` (region): "What is the category of the object at [x1, y1, x2, y2]? …" →
  class, the box that of the object's mask;
* ``referring_segmentation`` (pixel): "Can you segment the red ship at the top left in this image?" →
  "Sure, [SEG]." with the object's mask (COCO RLE).

:class:`GeneratedInstructData` writes them once into a folder keyed by a hash of every setting, and
marks it complete last (a killed preparation is redone, never half-used)::

    <root>/<hash>/images/<split>_<nnnnn>.png  RGB scenes
    <root>/<hash>/records.jsonl              every split (the ``split`` field routes them)
    <root>/<hash>/scenes.json                scene class and objects (class, colour, cell, box, shape) per scene
    <root>/<hash>/complete.json              written last
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from rsvlm.data.multitask.converters.rsvqa import vqa_question
from rsvlm.data.multitask.converters.scenes import scene_question
from rsvlm.data.multitask.generated_shapes import (
    COLOURS,
    OBJECT_CLASSES,
    SCENE_CLASSES,
    Shape,
    background,
    max_extent,
    mean_extent,
    rasterise,
    sample_shape,
)
from rsvlm.data.multitask.keyed_build import KeyedBuild
from rsvlm.data.multitask.masks import rle_of
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, TASK_ALIASES, InstructRecord, Turn
from rsvlm.data.multitask.templates import IMAGE_PREFIX, refseg_turns, roc_turns
from rsvlm.io.atomic import atomic_path

DEFAULT_ROOT = "~/.cache/rsvlm/generated-geomag"
SOURCE = "generated_rgb"
SUPPORTED_TASKS = ("scene_classification", "vqa", "referring_classification", "referring_segmentation")
SPLIT_NAMES = ("train", "val", "test")
#: Coarse locations on a 3×3 grid of the scene (row, column) as they read after the object's name.
CELLS = (
    ("at the top left", "at the top", "at the top right"),
    ("on the left", "in the middle", "on the right"),
    ("at the bottom left", "at the bottom", "at the bottom right"),
)
GAP = 1  # pixels kept free around each object's box
PACKING = 0.3  # most of a scene the objects' boxes may cover on average (placement is random, not packed)
SHAPE_TRIES, SCENE_TRIES = 60, 20
# Bump when the generated data changes, so old caches are not reused.
_VERSION = 1


@dataclass
class SceneObject:
    """One drawn object: class, colour name, coarse location, shape, its pixels and their box."""

    name: str
    colour: str
    cell: str
    shape: Shape
    mask: np.ndarray
    box: list[float]

    @property
    def expression(self) -> str:
        """The referring expression, e.g. ``"red ship at the top left"`` (unique in the scene)."""
        return f"{self.colour} {self.name} {self.cell}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "colour": self.colour,
            "cell": self.cell,
            "expression": self.expression,
            "box": self.box,
            "shape": self.shape.to_dict(),
        }


def location(shape: Shape, size: int) -> str:
    """The cell of :data:`CELLS` holding the shape's centre."""
    col, row = (min(int(3 * v / size), 2) for v in (shape.cx, shape.cy))
    return CELLS[row][col]


def mask_box(mask: np.ndarray) -> list[float]:
    """``[x0, y0, x1, y1]`` pixel edges around a mask's pixels (COCO's ``x + w``: ends exclusive)."""
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def _specs(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """(class, colour) of each object: 2+ classes present, at least one absent (a "no" answer exists)."""
    names = list(OBJECT_CLASSES)
    k = int(rng.integers(min(2, count), min(count, len(names) - 1) + 1))
    present = [names[i] for i in sorted(rng.choice(len(names), k, replace=False))]
    specs = [(n, str(rng.choice(OBJECT_CLASSES[n].colours))) for n in present]
    while len(specs) < count:
        if rng.random() < 0.5:  # a distractor of the same kind: same class and colour, elsewhere
            specs.append(specs[int(rng.integers(len(specs)))])
        else:
            name = present[int(rng.integers(k))]
            specs.append((name, str(rng.choice(OBJECT_CLASSES[name].colours))))
    return specs


def place_object(
    rng: np.random.Generator, name: str, colour: str, size: int, taken: np.ndarray, used: set[tuple[str, str, str]]
) -> SceneObject | None:
    """One object on free ground with an unused (class, colour, cell); None when every try failed."""
    for _ in range(SHAPE_TRIES):
        shape = sample_shape(rng, name, size)
        x0, y0, x1, y1 = shape.bounds()
        if min(x0, y0) < 0 or max(x1, y1) > size or taken[y0:y1, x0:x1].any():
            continue
        cell = location(shape, size)
        if (name, colour, cell) in used:
            continue
        mask = rasterise(shape, (size, size))
        # One 8-connected piece, so that "the object" is one region (thin rotated shapes could break).
        if ndimage.label(mask, structure=np.ones((3, 3)))[1] != 1:
            continue
        taken[max(0, y0 - GAP) : y1 + GAP, max(0, x0 - GAP) : x1 + GAP] = True
        used.add((name, colour, cell))
        return SceneObject(name, colour, cell, shape, mask, mask_box(mask))
    return None


def compose(rng: np.random.Generator, size: int, count: int) -> list[SceneObject] | None:
    """``count`` objects placed without overlap, or None when one would not fit."""
    taken = np.zeros((size, size), bool)
    used: set[tuple[str, str, str]] = set()
    objects = []
    for name, colour in _specs(rng, count):
        placed = place_object(rng, name, colour, size, taken, used)
        if placed is None:
            return None
        objects.append(placed)
    return objects


def draw(image: np.ndarray, objects: list[SceneObject]) -> np.ndarray:
    """The background with each object's pixels set to its colour."""
    out = image.copy()
    for obj in objects:
        out[obj.mask] = COLOURS[obj.colour]
    return out


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def task_turns(
    task: str, rng: np.random.Generator, objects: list[SceneObject], scene_class: str, size: int
) -> dict[str, Any]:
    """The record fields of one task on one scene (conversation, targets, qtype, meta)."""
    if task == "scene_classification":
        human = IMAGE_PREFIX + scene_question("geomag", list(SCENE_CLASSES))
        return {"turns": (human, scene_class), "labels": [scene_class], "meta": {}}
    if task == "vqa":
        present = sorted({o.name for o in objects})
        absent = [n for n in OBJECT_CLASSES if n not in present]
        answer = "yes" if rng.random() < 0.5 else "no"
        asked = str(rng.choice(present if answer == "yes" else absent))
        human = vqa_question("geomag", f"Is there {_article(asked)} in the image?")
        return {"turns": (human, answer), "qtype": "presence", "meta": {"asked": asked}}
    index = int(rng.integers(len(objects)))
    obj = objects[index]
    fields = {"boxes": [obj.box], "labels": [obj.name], "meta": {"object_index": index, "object": obj.to_dict()}}
    if task == "referring_classification":
        return {**fields, "turns": roc_turns("geomag", obj.name, obj.box, (size, size))}
    fields["meta"]["expression"] = obj.expression
    return {**fields, "turns": refseg_turns("geomag", obj.expression), "masks": [{"rle": rle_of(obj.mask)}]}


def write_png(path: Path, image: np.ndarray) -> None:
    """``image`` (``H×W×3`` or ``H×W`` uint8) as a PNG at ``path``, written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")  # the temporary name has no .png


def check_scene_settings(generator: Any, classes: Sequence[str] | None = None) -> tuple[int, int]:
    """Check a scene generator's ``n_train`` / ``n_val`` / ``n_test``, ``size`` and ``objects_per_scene``
    for objects of ``classes`` (default: all); errors name ``<its class>.<field>``.

    Returns:
        ``objects_per_scene`` as ``(min, max)`` ints.
    """
    name = type(generator).__name__
    for split in SPLIT_NAMES:
        if getattr(generator, f"n_{split}") < 0:
            raise ValueError(f"{name}.n_{split}: must be >= 0, got {getattr(generator, f'n_{split}')}")
    if generator.n_train + generator.n_val + generator.n_test == 0:
        raise ValueError(f"{name}.n_train: no scenes to generate (n_train + n_val + n_test is 0)")
    size, largest = generator.size, max_extent(classes)
    if size < math.ceil(2 * largest):
        raise ValueError(f"{name}.size: must be >= {math.ceil(2 * largest)} (objects span up to {largest:.0f} px)")
    lo, hi = (int(v) for v in generator.objects_per_scene)
    if not 1 <= lo <= hi:
        raise ValueError(f"{name}.objects_per_scene: needs 1 <= min <= max, got {[lo, hi]}")
    fits = int(PACKING * size**2 / (mean_extent(classes) + 2 * GAP) ** 2)
    if hi > fits:
        raise ValueError(f"{name}.objects_per_scene: {hi} objects cannot fit a {size}×{size} scene (at most {fits})")
    return lo, hi


@dataclass
class GeneratedInstructData(KeyedBuild):
    """Generated RGB scenes with GeoMag instruction records of four granularity-spanning tasks.

    Args:
        root: cache folder; the default is replaced by ``$RSVLM_CACHE/generated-geomag`` when the
            ``RSVLM_CACHE`` environment variable is set.
        n_train, n_val, n_test: scenes per split (scene classes balanced within each split, ±1).
        size: scene side in pixels.
        seed: generation seed.
        tasks: tasks to write (one record per scene and task), from :data:`SUPPORTED_TASKS`;
            ``roc``, ``refseg``, ``scene`` are read as their names.
        objects_per_scene: ``[min, max]`` objects drawn on each scene.
        progress: show a progress bar over scenes (not part of the cache key).
    """

    default_root = DEFAULT_ROOT
    cache_name = "generated-geomag"

    root: str = DEFAULT_ROOT
    n_train: int = 320
    n_val: int = 48
    n_test: int = 96
    size: int = 128
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: list(SUPPORTED_TASKS))
    objects_per_scene: tuple[int, int] = (3, 6)
    progress: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        self.tasks = [TASK_ALIASES.get(t, t) for t in self.tasks]
        unknown = sorted(set(self.tasks) - set(SUPPORTED_TASKS))
        if not self.tasks or unknown:
            raise ValueError(f"{name}.tasks: must be some of {', '.join(SUPPORTED_TASKS)}, got {self.tasks}")
        self.tasks = [t for t in SUPPORTED_TASKS if t in self.tasks]  # canonical order, no repeats
        self.objects_per_scene = check_scene_settings(self)

    # ------------------------------------------------------------------ cache
    def settings(self) -> dict[str, Any]:
        """Every setting that changes the output (the cache key)."""
        return {
            "version": _VERSION,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "size": self.size,
            "seed": self.seed,
            "tasks": list(self.tasks),
            "objects_per_scene": list(self.objects_per_scene),
        }

    # ------------------------------------------------------------------ generation
    def scene_classes(self, split_index: int, count: int) -> list[str]:
        """Scene classes of one split: each class ``count / classes`` times (±1), in a seeded order."""
        names = list(SCENE_CLASSES)
        rng = np.random.default_rng([self.seed, split_index, 0])
        start = int(rng.integers(len(names)))  # so short splits do not always lack the same classes
        labels = [names[(start + i) % len(names)] for i in range(count)]
        return [labels[j] for j in rng.permutation(count)]

    def scene(self, split_index: int, index: int, scene_class: str) -> tuple[np.ndarray, list[SceneObject]]:
        """The image and objects of one scene (its own seed: independent of the other scenes)."""
        rng = np.random.default_rng([self.seed, split_index, 1, index])
        lo, hi = self.objects_per_scene
        for _ in range(SCENE_TRIES):
            objects = compose(rng, self.size, int(rng.integers(lo, hi + 1)))
            if objects is not None:
                return draw(background(rng, scene_class, self.size), objects), objects
        raise ValueError(
            f"{type(self).__name__}.objects_per_scene: could not place up to {hi} objects apart on a "
            f"{self.size}×{self.size} scene in {SCENE_TRIES} tries; lower it or raise size"
        )

    def records(
        self, split_index: int, index: int, image: Path, scene_class: str, objects: list[SceneObject]
    ) -> list[InstructRecord]:
        """One record per task of one scene."""
        split, scene_id = SPLIT_NAMES[split_index], f"{SPLIT_NAMES[split_index]}_{index:05d}"
        out = []
        for task in self.tasks:
            # A seed per task: adding or removing a task leaves the other tasks' records as they were.
            rng = np.random.default_rng([self.seed, split_index, 2, index, SUPPORTED_TASKS.index(task)])
            fields = task_turns(task, rng, objects, scene_class, self.size)
            human, gpt = fields["turns"]
            out.append(
                InstructRecord(
                    id=f"{SOURCE}_{scene_id}_{task}",
                    images=[str(image)],
                    task=task,
                    granularity=DEFAULT_GRANULARITY[task],
                    conversations=[Turn("human", human), Turn("gpt", gpt)],
                    source=SOURCE,
                    split=split,
                    size=[self.size, self.size],
                    boxes=fields.get("boxes", []),
                    masks=fields.get("masks", []),
                    labels=fields.get("labels", []),
                    qtype=fields.get("qtype"),
                    coord_convention="center",
                    meta={"scene_id": scene_id, "scene_class": scene_class, **fields["meta"]},
                )
            )
        return out

    def prepare(self) -> Path:
        """Write the scenes, their records and the scene list, unless done before.

        Returns:
            The records file (:meth:`records_path`), ready for ``InstructDataModule(sources=[...])``.
        """
        if self.is_prepared():
            return self.records_path()
        out = self.folder()
        counts = [self.n_train, self.n_val, self.n_test]
        records: list[InstructRecord] = []
        scenes: list[dict[str, Any]] = []
        with tqdm(total=sum(counts), desc="generated scenes", unit="scene", disable=not self.progress) as bar:
            for split_index, count in enumerate(counts):
                for index, scene_class in enumerate(self.scene_classes(split_index, count)):
                    image, objects = self.scene(split_index, index, scene_class)
                    path = out / "images" / f"{SPLIT_NAMES[split_index]}_{index:05d}.png"
                    write_png(path, image)
                    records += self.records(split_index, index, path, scene_class, objects)
                    scenes.append(
                        {
                            "id": path.stem,
                            "split": SPLIT_NAMES[split_index],
                            "image": path.relative_to(out).as_posix(),
                            "scene_class": scene_class,
                            "objects": [o.to_dict() for o in objects],
                        }
                    )
                    bar.update()
        return self.write_build(records, scenes)
