"""One instruction record for GeoMag and EarthGPT-X: the :class:`InstructRecord` schema.

A record is a LLaVA-style conversation about one image (or several) plus what a loader, a
metric or a routing classifier needs beside the text. It is the union of GeoMag's multi-task
record (``geomag.md`` §3.5: task, granularity, masks, box, qtype, references) and EarthGPT-X's
(``earthgpt-x.md`` §4.2: modality, bands, value, visual prompts, targets, coordinate
convention). One JSON object per line; ``image`` and ``conversations`` keep LLaVA's names, so a
file also reads as LLaVA data::

    {"id": "dior_rsvg_00003_referring_classification", "image": "JPEGImages/00001.jpg",
     "task": "referring_classification", "granularity": "region", "source": "dior_rsvg", "split": "train",
     "modality": "optical", "size": [800, 800],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is the category of <Region 1>? ..."},
                       {"from": "gpt", "value": "storage tank"}],
     "boxes": [[102.0, 40.0, 160.0, 71.0]], "labels": ["storage tank"], "masks": [],
     "visual_prompts": [{"type": "box", "box": [102.0, 40.0, 160.0, 71.0], "label": 1}],
     "references": null, "qtype": null, "bands": null, "value": null,
     "coord_convention": "center", "meta": {"object_index": 3}}

Field rules (checked by :func:`rsvlm.data.multitask.validate.check_record`):

* Geometry (``size``, ``boxes``, ``masks``, ``visual_prompts``) is in pixels ``(x, y)`` of the
  first image; ``size`` is its ``(H, W)``. The file's pixel numbers are the source of truth.
* ``boxes``, ``masks`` and ``labels`` describe the targets; each is empty or has one entry per
  target (``x0, y0, x1, y1`` boxes; masks as in :mod:`rsvlm.data.multitask.masks`, in the order
  of the answer's ``[SEG]`` tokens).
* ``visual_prompts`` use the JSON form of :mod:`rsvlm.data.visual_prompts`; slot k (1-based) is
  "Region k" / "<Region k>" in the text (SPHINX-V).
* ``coord_convention`` says how coordinates written in the text are normalised:
  ``center`` (on the centre-padded square, MMRS-1M / SPHINX-V / LLaVA's pad), ``bottom_right``
  (the SPEX recipes) or ``pixel``.
* ``granularity`` is GeoMag's routing label (image | region | pixel); EarthGPT-X's ``level``
  maps onto it (scene → image, point → region).

Task and granularity names from the two specs are accepted as aliases when read (``roc``,
``refseg``, ``gcg``/``pixel_grounding``, ``caption``, ``scene``) and written canonically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from rsvlm.contracts import RsvlmError
from rsvlm.data.modalities import MODALITY_IDS

TASKS = (
    "scene_classification",
    "captioning",
    "vqa",
    "region_captioning",
    "referring_classification",
    "grounding",
    "detection",
    "referring_segmentation",
    "gcg",
    "relation",
)
TASK_ALIASES = {
    "scene": "scene_classification",
    "classification": "scene_classification",
    "caption": "captioning",
    "roc": "referring_classification",
    "vg": "grounding",
    "visual_grounding": "grounding",
    "refseg": "referring_segmentation",
    "pixel_grounding": "gcg",
}
GRANULARITIES = ("image", "region", "pixel")
GRANULARITY_ALIASES = {"scene": "image", "point": "region"}
#: GeoMag's classifier labels (§1.3: caption and scene → image; VQA and ROC → region; refseg, GCG → pixel).
DEFAULT_GRANULARITY = {
    "scene_classification": "image",
    "captioning": "image",
    "vqa": "region",
    "region_captioning": "region",
    "referring_classification": "region",
    "grounding": "region",
    "detection": "region",
    "referring_segmentation": "pixel",
    "gcg": "pixel",
    "relation": "region",
}
ROLES = ("human", "gpt")
ROLE_ALIASES = {"user": "human", "assistant": "gpt"}
VALUES = ("dn8", "reflectance", "db", "intensity", "amplitude", "complex", "kelvin", "dn16")
COORD_CONVENTIONS = ("center", "bottom_right", "pixel")
COORD_ALIASES = {"mmrs_center_pad_norm": "center"}
QTYPES = ("presence", "comparison", "count", "area", "rural_urban")


class InstructRecordError(RsvlmError, ValueError):
    """A malformed instruction record (the one-line message names the file, line, record and field)."""


@dataclass
class Turn:
    """One turn of a conversation: ``role`` ``human`` or ``gpt`` (LLaVA's ``from``), ``text`` (``value``)."""

    role: str
    text: str


@dataclass
class InstructRecord:
    """One instruction sample (see the module docstring for the field rules).

    Attributes:
        id: unique within its file.
        images: image paths (absolute in memory); the first one carries the geometry.
        task: one of :data:`TASKS`.
        granularity: ``image``, ``region`` or ``pixel``.
        conversations: alternating human / gpt turns; ``<image>`` once per image.
        source: the dataset (``rrsisd``, ``dior_rsvg``, ``mmrs1m-<file>`` ...).
        split: ``train``, ``val``, ``test`` ...
        modality: ``optical``, ``sar`` or ``infrared``.
        size: ``(H, W)`` of the first image, or None (then read from its header when checked).
        boxes: target boxes ``[x0, y0, x1, y1]`` in pixels.
        masks: target masks (:mod:`rsvlm.data.multitask.masks`).
        labels: target category names or phrases.
        visual_prompts: the JSON form of :func:`rsvlm.data.visual_prompts.prompts_to_json`.
        references: reference answers (all captions of an image), or None.
        qtype: RSVQA question type (:data:`QTYPES`), or None.
        bands: band names in channel order (EarthGPT-X), or None.
        value: the unit of the pixel values (:data:`VALUES`), or None.
        coord_convention: how coordinates in the text are normalised (:data:`COORD_CONVENTIONS`).
        meta: source-specific ids (ref id, sentence id, object index ...), JSON values only.
    """

    id: str
    images: list[str]
    task: str
    granularity: str
    conversations: list[Turn]
    source: str
    split: str
    modality: str = "optical"
    size: list[int] | None = None
    boxes: list[list[float]] = field(default_factory=list)
    masks: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    visual_prompts: list[dict[str, Any]] = field(default_factory=list)
    references: list[str] | None = None
    qtype: str | None = None
    bands: list[str] | None = None
    value: str | None = None
    coord_convention: str = "center"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> str:
        """The first image (the one ``size`` and the geometry refer to)."""
        return self.images[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this record (``image`` a string for one image, a list for several)."""
        out: dict[str, Any] = {"id": self.id, "image": self.images[0] if len(self.images) == 1 else list(self.images)}
        for f in fields(self):
            if f.name in ("id", "images"):
                continue
            value = getattr(self, f.name)
            if f.name == "conversations":
                value = [{"from": t.role, "value": t.text} for t in value]
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = "record") -> InstructRecord:
        """Build a record from its JSON object, checking types and closed sets.

        Raises:
            InstructRecordError: one line, ``"<where>: record '<id>': field '<name>': <what>"``.
        """
        if not isinstance(d, Mapping):
            raise InstructRecordError(f"{where}: expected a JSON object, got {type(d).__name__}")
        at = f"{where}: record {d.get('id')!r}"
        known = {f.name for f in fields(cls)} - {"images"} | {"image"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InstructRecordError(f"{at}: unknown field(s) {', '.join(map(repr, unknown))}")
        missing = [n for n in ("id", "image", "task", "granularity", "conversations", "source", "split") if n not in d]
        if missing:
            raise InstructRecordError(f"{at}: missing field(s) {', '.join(map(repr, missing))}")

        def bad(name: str, what: str) -> InstructRecordError:
            return InstructRecordError(f"{at}: field {name!r}: {what}")

        for name in ("id", "source", "split"):
            if not isinstance(d[name], str) or not d[name]:
                raise bad(name, f"must be a non-empty string, got {d[name]!r}")
        images = [d["image"]] if isinstance(d["image"], str) else d["image"]
        if not isinstance(images, list) or not images or not all(isinstance(p, str) and p for p in images):
            raise bad("image", f"must be a path or a non-empty list of paths, got {d['image']!r}")
        task = _closed(
            d["task"], TASKS, TASK_ALIASES, bad("task", f"unknown task {d['task']!r}; known: {', '.join(TASKS)}")
        )
        granularity = _closed(
            d["granularity"],
            GRANULARITIES,
            GRANULARITY_ALIASES,
            bad("granularity", f"must be one of {', '.join(GRANULARITIES)}, got {d['granularity']!r}"),
        )
        modality = d.get("modality", "optical")
        if modality not in MODALITY_IDS:
            raise bad("modality", f"unknown modality {modality!r}; known: {', '.join(MODALITY_IDS)}")
        convention = _closed(
            d.get("coord_convention", "center"),
            COORD_CONVENTIONS,
            COORD_ALIASES,
            bad(
                "coord_convention", f"must be one of {', '.join(COORD_CONVENTIONS)}, got {d.get('coord_convention')!r}"
            ),
        )
        value = d.get("value")
        if value is not None and value not in VALUES:
            raise bad("value", f"must be one of {', '.join(VALUES)} or null, got {value!r}")
        qtype = d.get("qtype")
        if qtype is not None and qtype not in QTYPES:
            raise bad("qtype", f"must be one of {', '.join(QTYPES)} or null, got {qtype!r}")
        size = d.get("size")
        if size is not None and not (
            isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)
        ):
            raise bad("size", f"must be [H, W] (positive integers) or null, got {size!r}")
        for name in ("labels", "references", "bands"):
            items = d.get(name)
            if items is not None and not (isinstance(items, list) and all(isinstance(s, str) for s in items)):
                raise bad(name, f"must be a list of strings{'' if name == 'labels' else ' or null'}, got {items!r}")
        for name in ("boxes", "masks", "visual_prompts"):
            if not isinstance(d.get(name, []), list):
                raise bad(name, f"must be a list, got {type(d[name]).__name__}")
        if not isinstance(d.get("meta", {}), Mapping):
            raise bad("meta", f"must be an object, got {type(d['meta']).__name__}")
        return cls(
            id=d["id"],
            images=list(images),
            task=task,
            granularity=granularity,
            conversations=_turns(d["conversations"], bad),
            source=d["source"],
            split=d["split"],
            modality=modality,
            size=None if size is None else list(size),
            boxes=[list(b) if isinstance(b, list) else b for b in d.get("boxes", [])],
            masks=list(d.get("masks", [])),
            labels=list(d.get("labels") or []),
            visual_prompts=list(d.get("visual_prompts", [])),
            references=None if d.get("references") is None else list(d["references"]),
            qtype=qtype,
            bands=None if d.get("bands") is None else list(d["bands"]),
            value=value,
            coord_convention=convention,
            meta=dict(d.get("meta", {})),
        )


def _closed(value: Any, names: tuple[str, ...], aliases: dict[str, str], error: Exception) -> str:
    """``value`` as one of ``names`` (through ``aliases``), else raise ``error``."""
    if isinstance(value, str) and value in names:
        return value
    if isinstance(value, str) and value in aliases:
        return aliases[value]
    raise error


def _turns(items: Any, bad: Callable[[str, str], InstructRecordError]) -> list[Turn]:
    """The conversation's turns; LLaVA's ``from``/``value`` keys, roles through :data:`ROLE_ALIASES`."""
    if not isinstance(items, list) or not items:
        raise bad("conversations", "is empty: a record needs at least one human and one gpt turn")
    turns = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or set(item) != {"from", "value"}:
            raise bad(f"conversations[{i}]", f"must be {{'from': ..., 'value': ...}}, got {item!r}")
        role = ROLE_ALIASES.get(item["from"], item["from"])
        if role not in ROLES:
            raise bad(f"conversations[{i}].from", f"must be 'human' or 'gpt', got {item['from']!r}")
        if not isinstance(item["value"], str):
            raise bad(f"conversations[{i}].value", f"must be a string, got {item['value']!r}")
        turns.append(Turn(role, item["value"]))
    return turns
