"""Samples with their visual prompts drawn onto their image (ViP-LLaVA's data side):
:class:`OverlaidSamples` and :func:`overlay_sample`, the drawing being
:class:`rsvlm.prompts.overlay.OverlayPrompts`'.

A sample here is one of the batch contract's: ``image`` ``C×H×W`` (float, normalised or raw, or
uint8 raw) and ``visual_prompts``, a list of :class:`~rsvlm.data.visual_prompts.VisualPrompt` in the
image's pixels (slot k = the k-th prompt), as :class:`~rsvlm.data.multitask.dataset.InstructDataset`
and :class:`~rsvlm.data.prompted.PromptedSamples` give them. A sample without prompts is returned as
it is; the prompts stay in the sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from rsvlm.data.visual_prompts import prompt_batch
from rsvlm.prompts.overlay import OverlayPrompts


def overlay_sample(overlay: OverlayPrompts, sample: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``sample`` whose ``image`` (``C×H×W``) has its ``visual_prompts`` drawn by ``overlay``."""
    out = dict(sample)
    prompts = list(sample.get("visual_prompts") or [])
    if prompts:
        image = sample["image"]
        batch = prompt_batch([prompts], image_size=tuple(image.shape[-2:]))
        out["image"] = overlay.draw(image[None], batch)[0]
    return out


class OverlaidSamples(Dataset):
    """``base``'s samples with their visual prompts drawn on their image (:func:`overlay_sample`);
    other attributes are the base dataset's (e.g. a prediction dataset's ``outputs``)."""

    def __init__(self, base: Dataset, overlay: OverlayPrompts) -> None:
        self.base, self.overlay = base, overlay

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: Any) -> dict[str, Any]:
        return overlay_sample(self.overlay, self.base[item])

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "overlay"):  # not set yet (unpickling): no recursion through the base
            raise AttributeError(name)
        return getattr(self.base, name)


__all__ = ["OverlaidSamples", "overlay_sample"]
