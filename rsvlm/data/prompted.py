"""Prompted extraction: samples whose target is the one region a visual prompt marks.

A land-cover sample asks for every region of a category. With :class:`PromptSampling`, a share of
the samples becomes a *prompted* one instead: one connected region of the target (8-connected, at
least ``min_area`` pixels) is drawn at random, a prompt is drawn on it — a point
(ViP-LLaVA's Gaussian around the centroid), a box (its bounding box with SPHINX-V's jitter) or a
scribble (a Bézier stroke inside it) — and the target becomes that region alone, asked for with
``template`` ("Segment the water region marked by Region 1."). This is EarthGPT-X's pixel-level
task "segment the object marked by <Region 1>" on SPEX's data: a model trained on it takes the
user's click, box or stroke (the prompts reach SAM's prompt encoder with
``SamMaskDecoderHead(use_visual_prompts=True)``, or an LLM-side prompt encoder).

Every sample then carries ``visual_prompts`` (a list, empty for land-cover samples) and ``task``
(``land_cover`` or ``task``). The draw is seeded by the sample's augmentation seed (training:
new prompts each epoch) or by its index (validation and test: the same prompts every time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from rsvlm.data.prompt_synthesis import jitter_box, synthesize_point, synthesize_scribble
from rsvlm.data.visual_prompts import VisualPrompt

PROMPT_KINDS_DRAWN = ("point", "box", "scribble")


@dataclass
class PromptSampling:
    """How many samples become prompted, and how their prompts are drawn.

    Attributes:
        probability: the share of samples (with a region of ``min_area``) made prompted.
        kinds: prompt kinds drawn uniformly among ``point``, ``box``, ``scribble``.
        min_area: the smallest region (pixels) a prompt may mark.
        task: the task name of prompted samples (``batch["task"]``; the model's ``tasks`` must list it).
        template: the instruction, with ``{category}``.
        response: the reference answer, with ``{category}``.
        seed: mixed into each sample's draw.
    """

    probability: float = 0.5
    kinds: list[str] = field(default_factory=lambda: list(PROMPT_KINDS_DRAWN))
    min_area: int = 16
    task: str = "prompted"
    template: str = "Segment the {category} region marked by Region 1."
    response: str = "Here is the {category} region you marked."
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"PromptSampling.probability must be in [0, 1], got {self.probability}")
        unknown = sorted(set(self.kinds) - set(PROMPT_KINDS_DRAWN))
        if unknown or not self.kinds:
            raise ValueError(f"PromptSampling.kinds must be among {list(PROMPT_KINDS_DRAWN)}, got {self.kinds}")
        if self.min_area < 1:
            raise ValueError(f"PromptSampling.min_area must be >= 1, got {self.min_area}")


def draw_prompt(kind: str, region: np.ndarray, rng: np.random.Generator) -> VisualPrompt:
    """A ``kind`` prompt marking ``region`` (``H×W`` bool)."""
    if kind == "point":
        return synthesize_point(region, rng)
    if kind == "scribble":
        return synthesize_scribble(region, rng)
    box = VisualPrompt(kind="mask", mask=region).bounds  # the region's pixel edges
    return VisualPrompt(kind="box", box=tuple(jitter_box(box, rng, image_size=region.shape)))


def pick_region(target: np.ndarray, min_area: int, rng: np.random.Generator) -> np.ndarray | None:
    """One 8-connected region of ``target`` (``H×W`` bool) with at least ``min_area`` pixels, drawn
    uniformly among them, or None when there is none."""
    labels, count = ndimage.label(target, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return None
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    eligible = np.flatnonzero(areas >= min_area) + 1
    if eligible.size == 0:
        return None
    return labels == rng.choice(eligible)


class PromptedSamples(Dataset):
    """A dataset of the batch contract (e.g. :class:`rsvlm.data.spie.dataset.SpieDataset`) with a
    share of its samples made prompted (see the module docstring)."""

    def __init__(self, base: Dataset, sampling: PromptSampling, default_task: str = "land_cover") -> None:
        self.base, self.sampling, self.default_task = base, sampling, default_task

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        sample = dict(self.base[item])
        sample.update(task=self.default_task, visual_prompts=[])
        index, aug_seed = item if isinstance(item, tuple) else (item, None)
        epoch_draw = [] if aug_seed is None else [aug_seed]  # training: a new draw with each epoch's seed
        rng = np.random.default_rng([self.sampling.seed, index, *epoch_draw])
        if rng.random() >= self.sampling.probability:
            return sample
        target = (sample["mask"][0] > 0.5) & sample["valid"][0]
        region = pick_region(target.numpy(), self.sampling.min_area, rng)
        if region is None:
            return sample
        kind = str(rng.choice(self.sampling.kinds))
        category = sample["category"]
        sample.update(
            mask=torch.from_numpy(region.astype(np.float32))[None],
            visual_prompts=[draw_prompt(kind, region, rng)],
            task=self.sampling.task,
            instruction=self.sampling.template.format(category=category),
            response=self.sampling.response.format(category=category),
        )
        return sample
