"""Generated optical / SAR / infrared scenes with point, box and scribble prompts: EarthGPT-X instruction
records for the offline demo (``earthgpt-x.md`` §5.2).

Each scene is one layout (:mod:`rsvlm.data.multitask.generated_modalities`: water beyond a straight
shore, ships on the water, storage tanks, airplanes and buildings on land; placed without overlap by
GeoMag's :mod:`rsvlm.data.multitask.generated`) rendered in one modality: optical RGB (PNG, 8-bit),
SAR VV/VH σ⁰ in dB with gamma speckle of ``sar_looks`` looks (GeoTIFF, float32) or thermal infrared in
kelvin (GeoTIFF, float32). Modalities are balanced within each split (±1). Every object has a unique
(class, coarse location) pair in its scene, so "the ship at the top left" names one object.

One record per (scene, task); each scene has a target class (balanced per split and modality) and
each task refers to one object of it:

* ``referring_classification`` (region): a visual prompt on the object in slot 1, "What is the category
  of <Region 1>? Answer with one word or phrase." → the class;
* ``grounding`` (region): "Where is the ship at the top left? Answer with its bounding box." →
  ``<p>ship</p>[x0,y0,x1,y1]`` (normalised on the centre-padded square, :mod:`rsvlm.data.coords`);
* ``gcg`` (pixel, read as ``pixel_grounding``): a visual prompt in slot 1, "Can you segment the object
  marked by <Region 1> in this image?" → "Sure, [SEG]." with the object's mask.

Visual prompts are points and scribbles drawn in the object's mask
(:mod:`rsvlm.data.prompt_synthesis`) or its mask's box; kinds are balanced per task within each
split and modality (±1). Each record's ``meta`` keeps ``modality``, ``prompt_kind`` (None for
grounding), the object (class, cell, shape, box) and the reference ``box`` and ``mask`` (COCO RLE), so
that metrics can be grouped and baselines drawn (the image-centre box, the prompt box as the mask).
Read the records with ``InstructDataModule(modality_presets=MODALITY_PRESETS)``: each image is then
normalised by its modality's preset and zero-padded to the model's channels.

:class:`GeneratedMultisourceData` writes them once into a folder keyed by a hash of every setting::

    <root>/<hash>/images/<split>_<nnnnn>.{png,tif}  one scene each
    <root>/<hash>/records.jsonl                     every split (the ``split`` field routes them)
    <root>/<hash>/scenes.json                       modality, target class and objects per scene
    <root>/<hash>/complete.json                     written last
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rsvlm.data.coords import check_decimals
from rsvlm.data.modalities import MODALITY_IDS
from rsvlm.data.multitask.generated import (
    GAP,
    SCENE_TRIES,
    SPLIT_NAMES,
    SceneObject,
    check_scene_settings,
    place_object,
    write_png,
)
from rsvlm.data.multitask.generated_modalities import (
    CLASS_COLOURS,
    CLASSES,
    FORMATS,
    ON_WATER,
    Layout,
    render,
    shoreline,
)
from rsvlm.data.multitask.keyed_build import KeyedBuild
from rsvlm.data.multitask.masks import rle_of
from rsvlm.data.multitask.records import DEFAULT_GRANULARITY, TASK_ALIASES, InstructRecord, Turn
from rsvlm.data.multitask.templates import grounding_mask_turns, grounding_turns, refseg_turns, roc_turns
from rsvlm.data.prompt_synthesis import synthesize_point, synthesize_scribble
from rsvlm.data.raster import write_geotiff
from rsvlm.data.visual_prompts import VisualPrompt, prompts_to_json

DEFAULT_ROOT = "~/.cache/rsvlm/generated-multisource"
SOURCE = "generated_multisource"
SUPPORTED_TASKS = ("referring_classification", "grounding", "gcg")
PROMPTED_TASKS = ("referring_classification", "gcg")
PROMPT_KINDS = ("point", "box", "scribble")
GROUNDING_ANSWERS = ("box", "mask")
MODALITIES = tuple(MODALITY_IDS)
#: ``InstructDataModule(modality_presets=...)`` for these records: modality → its normalisation preset.
MODALITY_PRESETS: dict[str, str] = {name: f.preset for name, f in FORMATS.items()}
SCRIBBLE_VERTICES = 16
# Bump when the generated data changes, so old caches are not reused.
_VERSION = 2  # 2: class signatures (one colour per class, σ⁰ and temperatures apart)


def expression(obj: SceneObject) -> str:
    """The referring phrase of an object, e.g. ``"ship at the top left"`` (unique in its scene)."""
    return f"{obj.name} {obj.cell}"


def visual_prompt(kind: str, mask: np.ndarray, box: list[float], rng: np.random.Generator) -> VisualPrompt:
    """A ``point`` or ``scribble`` drawn inside ``mask`` (``H×W`` bool), or the ``box`` itself."""
    if kind == "point":
        return synthesize_point(mask, rng)
    if kind == "scribble":
        return synthesize_scribble(mask, rng, samples=SCRIBBLE_VERTICES)
    return VisualPrompt("box", box=box)


def balanced(names: tuple[str, ...] | list[str], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` names, each ``count / len(names)`` times (±1), in a seeded order."""
    start = int(rng.integers(len(names)))  # so short splits do not always lack the same names
    labels = [names[(start + i) % len(names)] for i in range(count)]
    return [labels[j] for j in rng.permutation(count)]


@dataclass
class SceneSpec:
    """What one scene is asked to be: modality, target class and each prompted task's prompt kind."""

    modality: str
    target: str
    kinds: dict[str, str]


@dataclass
class GeneratedMultisourceData(KeyedBuild):
    """Generated optical / SAR / infrared scenes with EarthGPT-X instruction records (module docstring).

    Args:
        root: cache folder; the default is replaced by ``$RSVLM_CACHE/generated-multisource`` when the
            ``RSVLM_CACHE`` environment variable is set.
        n_train, n_val, n_test: scenes per split (modalities balanced within each split, ±1).
        size: scene side in pixels.
        seed: generation seed.
        modalities: modalities drawn (one per scene), from ``optical``, ``sar``, ``infrared``.
        prompt_kinds: visual-prompt kinds (balanced per task), from ``point``, ``box``, ``scribble``.
        tasks: tasks to write (one record per scene and task), from :data:`SUPPORTED_TASKS`;
            ``roc``, ``vg`` and ``pixel_grounding`` are read as their names.
        objects_per_scene: ``[min, max]`` objects drawn on each scene.
        sar_looks: the number of looks ``L`` of the SAR speckle (Gamma(L, 1/L); 1: single look).
        box_decimals: decimals of the grounding answers' coordinates (3 as EarthGPT; 2 gives the offline
            demo tokenizer one token per coordinate, where 3 splits some into two).
        grounding_answer: how a grounding record is answered: ``box``, the box as text (EarthGPT's
            ``<p>ship</p>[x0,y0,x1,y1]``), or ``mask``, ``<p>ship</p> [SEG]`` with the object's mask as the
            target, the box then read from the decoded mask (the grounding metric falls back to it
            when the text writes no box).
        progress: show a progress bar over scenes (not part of the cache key).
    """

    default_root = DEFAULT_ROOT
    cache_name = "generated-multisource"

    root: str = DEFAULT_ROOT
    n_train: int = 270
    n_val: int = 45
    n_test: int = 90
    size: int = 64
    seed: int = 0
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    prompt_kinds: list[str] = field(default_factory=lambda: list(PROMPT_KINDS))
    tasks: list[str] = field(default_factory=lambda: list(SUPPORTED_TASKS))
    objects_per_scene: tuple[int, int] = (3, 5)
    sar_looks: float = 4.0
    box_decimals: int = 3
    grounding_answer: str = "box"
    progress: bool = True

    def __post_init__(self) -> None:
        name = type(self).__name__
        self.tasks = [TASK_ALIASES.get(t, t) for t in self.tasks]
        for attr, known in (("tasks", SUPPORTED_TASKS), ("modalities", MODALITIES), ("prompt_kinds", PROMPT_KINDS)):
            given = list(getattr(self, attr))
            if not given or set(given) - set(known):
                raise ValueError(f"{name}.{attr}: must be some of {', '.join(known)}, got {given}")
            setattr(self, attr, [k for k in known if k in given])  # canonical order, no repeats
        self.objects_per_scene = check_scene_settings(self, CLASSES)
        if not (math.isfinite(self.sar_looks) and self.sar_looks >= 1):
            raise ValueError(f"{name}.sar_looks: must be a number >= 1, got {self.sar_looks}")
        check_decimals(self.box_decimals, f"{name}.box_decimals")
        if self.grounding_answer not in GROUNDING_ANSWERS:
            raise ValueError(
                f"{name}.grounding_answer: must be one of {', '.join(GROUNDING_ANSWERS)}, got {self.grounding_answer!r}"
            )

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
            "modalities": list(self.modalities),
            "prompt_kinds": list(self.prompt_kinds),
            "tasks": list(self.tasks),
            "objects_per_scene": list(self.objects_per_scene),
            "sar_looks": float(self.sar_looks),
            "box_decimals": self.box_decimals,
            # only when not the default: caches written before the option existed stay valid
            **({"grounding_answer": self.grounding_answer} if self.grounding_answer != "box" else {}),
        }

    # ------------------------------------------------------------------ generation
    def scene_specs(self, split_index: int, count: int) -> list[SceneSpec]:
        """Modality, target class and prompt kinds of one split's scenes: modalities balanced (±1); within
        each modality the k-th scene's target class and each task's prompt kind cycle, so that classes,
        kinds and their pairs are balanced per modality (±1 per cycle)."""
        rng = np.random.default_rng([self.seed, split_index, 0])
        modalities = balanced(self.modalities, count, rng)
        class_start = int(rng.integers(len(CLASSES)))
        kind_starts = rng.integers(len(self.prompt_kinds), size=len(SUPPORTED_TASKS))
        seen = dict.fromkeys(self.modalities, 0)
        specs = []
        for modality in modalities:
            k = seen[modality]
            seen[modality] += 1
            kinds = {
                t: self.prompt_kinds[(k + int(kind_starts[i])) % len(self.prompt_kinds)]
                for i, t in enumerate(SUPPORTED_TASKS)
                if t in PROMPTED_TASKS
            }
            specs.append(SceneSpec(modality, CLASSES[(k + class_start) % len(CLASSES)], kinds))
        return specs

    def _compose(self, rng: np.random.Generator, target: str) -> Layout | None:
        """The target class and random others on free ground of their cover (ships on water), or None."""
        water = shoreline(rng, self.size)
        lo, hi = self.objects_per_scene
        names = [target] + [str(rng.choice(CLASSES)) for _ in range(int(rng.integers(lo, hi + 1)) - 1)]
        taken = np.zeros((self.size, self.size), bool)
        used: set[tuple[str, str, str]] = set()
        objects = []
        for name in names:
            # The other cover counts as taken, so that the object's whole box lies on its own cover.
            ground = taken | (~water if name in ON_WATER else water)
            placed = place_object(rng, name, "", self.size, ground, used)  # no colour: (class, cell) is unique
            if placed is None:
                return None
            x0, y0, x1, y1 = placed.shape.bounds()
            taken[max(0, y0 - GAP) : y1 + GAP, max(0, x0 - GAP) : x1 + GAP] = True
            objects.append(placed)
        colours = [CLASS_COLOURS[o.name] for o in objects]
        return Layout(water, objects, colours)

    def scene(self, split_index: int, index: int, spec: SceneSpec) -> tuple[np.ndarray, Layout]:
        """The image (``C×H×W``) and layout of one scene (its own seed: independent of the other scenes)."""
        rng = np.random.default_rng([self.seed, split_index, 1, index])
        for _ in range(SCENE_TRIES):
            layout = self._compose(rng, spec.target)
            if layout is not None:
                return render(spec.modality, rng, layout, self.sar_looks), layout
        raise ValueError(
            f"{type(self).__name__}.objects_per_scene: could not place up to {self.objects_per_scene[1]} objects "
            f"apart on a {self.size}×{self.size} scene in {SCENE_TRIES} tries; lower it or raise size"
        )

    def task_fields(self, task: str, spec: SceneSpec, layout: Layout, rng: np.random.Generator) -> dict[str, Any]:
        """The record fields of one task on one scene (conversation, targets, prompts, meta)."""
        candidates = [i for i, o in enumerate(layout.objects) if o.name == spec.target]
        index = candidates[int(rng.integers(len(candidates)))]
        obj = layout.objects[index]
        size = (self.size, self.size)
        kind = spec.kinds.get(task)
        meta = {
            "modality": spec.modality,
            "prompt_kind": kind,
            "object_index": index,
            "object": {
                "name": obj.name,
                "cell": obj.cell,
                "expression": expression(obj),
                "colour": layout.colours[index] if spec.modality == "optical" else None,
                "shape": obj.shape.to_dict(),
            },
            "box": obj.box,
            "mask": {"rle": rle_of(obj.mask)},
        }
        fields = {"boxes": [obj.box], "labels": [obj.name], "meta": meta, "visual_prompts": []}
        if task == "grounding" and self.grounding_answer == "mask":
            return {**fields, "turns": grounding_mask_turns(expression(obj), obj.name), "masks": [meta["mask"]]}
        if task == "grounding":
            return {**fields, "turns": grounding_turns(expression(obj), obj.name, [obj.box], size, self.box_decimals)}
        fields["visual_prompts"] = prompts_to_json([visual_prompt(str(kind), obj.mask, obj.box, rng)])
        if task == "referring_classification":
            return {**fields, "turns": roc_turns("earthgptx", obj.name, obj.box, size)}
        return {**fields, "turns": refseg_turns("geomag", "object marked by <Region 1>"), "masks": [meta["mask"]]}

    def records(
        self, split_index: int, index: int, image: Path, spec: SceneSpec, layout: Layout
    ) -> list[InstructRecord]:
        """One record per task of one scene."""
        split, scene_id = SPLIT_NAMES[split_index], f"{SPLIT_NAMES[split_index]}_{index:05d}"
        fmt = FORMATS[spec.modality]
        out = []
        for task in self.tasks:
            # A seed per task: adding or removing a task leaves the other tasks' records as they were.
            rng = np.random.default_rng([self.seed, split_index, 2, index, SUPPORTED_TASKS.index(task)])
            fields = self.task_fields(task, spec, layout, rng)
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
                    modality=spec.modality,
                    size=[self.size, self.size],
                    boxes=fields["boxes"],
                    masks=fields.get("masks", []),
                    labels=fields["labels"],
                    visual_prompts=fields["visual_prompts"],
                    bands=list(fmt.bands),
                    value=fmt.value,
                    coord_convention="center",
                    meta={"scene_id": scene_id, "target": spec.target, **fields["meta"]},
                )
            )
        return out

    def _write(self, path: Path, modality: str, image: np.ndarray) -> None:
        if FORMATS[modality].suffix == ".png":
            write_png(path, np.ascontiguousarray(image.transpose(1, 2, 0)))
        else:
            write_geotiff(path, image, band_names=FORMATS[modality].bands)

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
        with tqdm(total=sum(counts), desc="multisource scenes", unit="scene", disable=not self.progress) as bar:
            for split_index, count in enumerate(counts):
                for index, spec in enumerate(self.scene_specs(split_index, count)):
                    image, layout = self.scene(split_index, index, spec)
                    name = f"{SPLIT_NAMES[split_index]}_{index:05d}{FORMATS[spec.modality].suffix}"
                    path = out / "images" / name
                    self._write(path, spec.modality, image)
                    records += self.records(split_index, index, path, spec, layout)
                    scenes.append(
                        {
                            "id": Path(name).stem,
                            "split": SPLIT_NAMES[split_index],
                            "image": path.relative_to(out).as_posix(),
                            "modality": spec.modality,
                            "target": spec.target,
                            "water_fraction": float(layout.water.mean()),
                            "objects": [
                                {
                                    "name": o.name,
                                    "cell": o.cell,
                                    "expression": expression(o),
                                    "colour": colour if spec.modality == "optical" else None,
                                    "box": o.box,
                                    "shape": o.shape.to_dict(),
                                }
                                for o, colour in zip(layout.objects, layout.colours, strict=True)
                            ],
                        }
                    )
                    bar.update()
        return self.write_build(records, scenes)
