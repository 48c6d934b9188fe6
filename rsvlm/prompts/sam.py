"""Visual prompts → the inputs of SAM's prompt encoder (points with labels, boxes, a mask).

rsvlm's prompt coordinates are continuous pixels (pixel ``(i, j)`` covers ``[j, j+1) × [i, i+1)``,
so a click on pixel ``j`` is ``x = j + 0.5``). SAM takes pixel indices in a 1024-pixel frame and
adds 0.5 itself (``PromptEncoder._embed_points``), so a coordinate goes to SAM as
``x · 1024 / W − 0.5``: the position SAM encodes, ``(x_SAM + 0.5) / 1024``, is then exactly
``x / W``, the place the prompt marks on the decoder's map, whatever the image size. Boxes go by
their edges (SAM's own boxes are inclusive pixel indices, half a pixel inside; its training
jitter is larger than that).

SAM has no free-form input: a scribble is given as ``stroke_points`` points equally spaced by arc
length along it, with the scribble's label; free-form masks of a sample are united into SAM's
one mask input, as logits ±10 (binary mask → ``20 · (m − 0.5)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rsvlm.contracts import PROMPT_KINDS, VisualPromptBatch
from rsvlm.prompts.geometry import resample_stroke, slot_marks

SAM_FRAME = 1024
MASK_LOGIT = 10.0


@dataclass
class SamPromptInput:
    """One sample's prompts as ``segment_anything.modeling.PromptEncoder`` takes them.

    Attributes:
        coords: ``1×P×2`` point coordinates (x, y) in SAM's pixel-index frame, or None.
        labels: ``1×P`` labels (1 foreground, 0 background), or None.
        boxes: ``N×4`` boxes (x0, y0, x1, y1) in that frame, or None.
        mask: ``1×1×H×W`` mask logits at the prompts' image size, or None.
    """

    coords: torch.Tensor | None
    labels: torch.Tensor | None
    boxes: torch.Tensor | None
    mask: torch.Tensor | None

    @property
    def empty(self) -> bool:
        return self.coords is None and self.boxes is None and self.mask is None


def sam_prompt_input(
    prompts: VisualPromptBatch, index: int, frame: int = SAM_FRAME, stroke_points: int = 8
) -> SamPromptInput:
    """The prompts of sample ``index`` in SAM's ``frame`` (see the module docstring)."""
    height, width = prompts.image_size
    scale = torch.tensor([frame / width, frame / height], dtype=torch.float32)
    kind, label = prompts.kind[index].cpu(), prompts.labels[index].cpu()
    coords: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    boxes: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for slot in range(prompts.slots):
        k = int(kind[slot])
        if k == PROMPT_KINDS["point"]:
            coords.append(prompts.points[index, slot, :1].float().cpu())
            labels.append(label[slot].expand(1))
        elif k == PROMPT_KINDS["scribble"]:
            vertices = prompts.points[index, slot, : int(prompts.npoints[index, slot])].float().cpu().numpy()
            coords.append(torch.from_numpy(resample_stroke(vertices, stroke_points).astype(np.float32)))
            labels.append(label[slot].expand(stroke_points))
        elif k == PROMPT_KINDS["box"]:
            boxes.append(prompts.boxes[index, slot].float().cpu())
        elif k == PROMPT_KINDS["mask"]:
            if prompts.masks is None:
                raise ValueError(f"VisualPromptBatch: slot {slot} of sample {index} is a mask but masks is None")
            masks.append(prompts.masks[index, slot].cpu())
    return SamPromptInput(
        coords=(torch.cat(coords) * scale - 0.5)[None] if coords else None,
        labels=torch.cat(labels).long()[None] if labels else None,
        boxes=torch.stack(boxes) * scale.repeat(2) - 0.5 if boxes else None,
        mask=mask_logits(torch.stack(masks).any(0)) if masks else None,
    )


def mask_logits(mask: torch.Tensor) -> torch.Tensor:
    """``H×W`` bool → ``1×1×H×W`` logits ±10."""
    return (2 * MASK_LOGIT * (mask.float() - 0.5))[None, None]


def drawn_prompt_masks(prompts: VisualPromptBatch) -> torch.Tensor:
    """``B×H×W`` bool at ``prompts.image_size``: the union of each sample's foreground prompts as drawn
    by :func:`~rsvlm.prompts.geometry.slot_marks` (points as discs, boxes filled, scribbles as strokes,
    masks as they are), for SAM's mask input when no free-form mask is given."""
    marks = torch.from_numpy(slot_marks(prompts))  # B×M×H×W
    foreground = (prompts.labels.cpu() == 1)[..., None, None]
    return (marks & foreground).any(dim=1)
