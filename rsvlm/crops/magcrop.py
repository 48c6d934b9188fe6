"""MagCrop (GeoMag §3): the VLM's input image at the resolution its task needs, same geometry.

Per sample, by task granularity G (``batch["granularity"]``: ``"image" | "region" | "pixel"`` or
``0 | 1 | 2``, the order of :data:`rsvlm.heads.granularity.LABELS`)::

    image   I' = Up_{H×W}(I_{s×s})                 s = image_level_size (100)
    region  I' = C₁ ⊕ D(I)                         b₁ = box(PSC(I, P))
    pixel   I' = C₂ ⊕ D(C₁) ⊕ D(D(I))              b₂ = box(PSC(C₁, P)) in C₁'s frame

with D the TMRA degradation (:mod:`rsvlm.crops.tmra`) and PSC the VLM's gradient-weighted
attention map (:mod:`rsvlm.crops.attention`) searched by :func:`~rsvlm.crops.box_search.adaptive_box`.
Tasks in ``skip_tasks`` keep ``I`` (the paper runs GCG without MagCrop, §4.3).

Why the image level goes back up to ``H×W``: the encoder's input size is fixed (and the batch is
one tensor), so the 100×100 image is upsampled again; what reaches the model is the information
of 100×100 pixels, which is the paper's point (Fig. 3). Every output keeps ``I``'s geometry, so
masks and boxes need no remapping.

Resizing and pasting are per-channel affine-equivariant (interpolation weights sum to one), so
MagCrop gives the same result on raw ``[0, 1]`` pixels as on band-normalised ones: it can run on
the model's normalised input.

**Gradients.** The online boxes (``boxes="online"``) need ∂ℓ/∂A of the LLM's attention, also at
validation, test and predict: the attention pass switches autograd on itself
(``torch.inference_mode(False)`` + ``torch.enable_grad()``), so it runs inside the VLM's
``no_grad`` inference and inside ``torch.inference_mode`` (tested). Recipes that run MagCrop
online should still set ``trainer.inference_mode: false`` (the spec's rule), so nothing upstream
of the pass is an inference tensor. Only the attention is differentiated: no parameter gets a
gradient. ``boxes="given"`` reads boxes computed once (``batch["magcrop_boxes"]``, the spec's
cache mode, e.g. from :meth:`MagCrop.find_boxes`) and needs neither the model nor gradients.
The spec's training default, boxes found once with the model as training starts, is the callback
:class:`rsvlm.crops.box_cache.MagCropBoxCache`: training then skips the two extra forwards per
sample, and validation and test stay online.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rsvlm.contracts import ContractError
from rsvlm.crops.attention import GradAttentionMap
from rsvlm.crops.box_search import RATIOS, adaptive_box
from rsvlm.crops.tmra import Box, check_box, crop, degrade, paste, resize_to
from rsvlm.heads.granularity import LABELS

#: Granularities that need a first PSC box, and the one that needs a second.
CROPPED = ("region", "pixel")


class MagCrop(nn.Module):
    """GeoMag's MagCrop as the VLM's ``cropper`` (see the module docstring). No parameters.

    Args:
        enabled: ``False`` returns every image unchanged (Table 7's "w/o MagCrop").
        image_level_size: side of the image-level input ``I_{s×s}``.
        degrade_factor: the TMRA degradation's down-scaling factor (Eq. 3: 4).
        bbox_mode: ``"relative"`` (base crop side ``bbox_fraction·min(W, H)`` of the parent) or
            ``"absolute"`` (``bbox_size`` pixels, ViCrop's 336, for parity checks).
        bbox_fraction: relative base crop side (0.42 = ViCrop's 336 px on 800² images).
        bbox_size: absolute base crop side in pixels.
        ratios: candidate crop sizes as multiples of the base side.
        max_fraction: relative mode caps the largest candidate at this fraction of the parent's
            shorter side, so each crop covers less than its parent.
        attention_layer: the LLM layer whose attention PSC reads (−1: the last, as the paper).
        grad_sign: ``"vicrop"`` (ℓ = log-likelihood of the greedy token) or ``"literal"`` (ℓ = CE).
        query: attention row(s) PSC reads: ``"last"`` prompt position or ``"prompt_mean"``.
        boxes: ``"online"`` (PSC on the bound model) or ``"given"`` (``batch["magcrop_boxes"]``).
        skip_tasks: tasks (``batch["task"]``) whose images pass unchanged.
        granularity_field: the batch field holding each sample's granularity.
        classifier: GeoMag's task-granularity classifier
            (:class:`~rsvlm.heads.granularity.TaskGranularityClassifier`), trained alone and frozen
            here (the paper); it gives the granularity of samples whose batch lacks
            ``granularity_field`` (predict, where no gold label exists), from their ``instruction``.
        route: ``"gold"`` routes by the batch's granularity where it has one; ``"classifier"``
            routes every sample by the classifier's prediction outside training (validation,
            test: the paper's test-time routing, so its errors count), by the gold label in training.
        train_classifier: train the classifier's head inside the VLM (its text encoder stays as
            its ``freeze_encoder`` says) with :meth:`classifier_loss` — the offline demo's
            shortcut for the paper's separate stage; the VLM adds the loss as the ``granularity``
            term of its ``loss_weights``.
    """

    #: Holds no tensors by design without a classifier (the contracts' meta-device check accepts that).
    parameter_free = True

    def __init__(
        self,
        enabled: bool = True,
        image_level_size: int = 100,
        degrade_factor: int = 4,
        bbox_mode: Literal["relative", "absolute"] = "relative",
        bbox_fraction: float = 0.42,
        bbox_size: float = 336.0,
        ratios: list[float] = list(RATIOS),
        max_fraction: float = 0.9,
        attention_layer: int = -1,
        grad_sign: Literal["vicrop", "literal"] = "vicrop",
        query: Literal["last", "prompt_mean"] = "last",
        boxes: Literal["online", "given"] = "online",
        skip_tasks: list[str] = ["gcg"],
        granularity_field: str = "granularity",
        classifier: nn.Module | None = None,
        route: Literal["gold", "classifier"] = "gold",
        train_classifier: bool = False,
    ) -> None:
        super().__init__()
        if bbox_mode not in ("relative", "absolute"):
            raise ValueError(f"MagCrop: bbox_mode must be relative|absolute, got {bbox_mode!r}")
        if boxes not in ("online", "given"):
            raise ValueError(f"MagCrop: boxes must be online|given, got {boxes!r}")
        if not ratios:
            raise ValueError("MagCrop: ratios must name at least one crop size")
        if route not in ("gold", "classifier"):
            raise ValueError(f"MagCrop: route must be gold|classifier, got {route!r}")
        if (route == "classifier" or train_classifier) and classifier is None:
            raise ValueError(f"MagCrop: route={route!r}, train_classifier={train_classifier} need classifier=")
        self.enabled, self.image_level_size, self.degrade_factor = enabled, image_level_size, degrade_factor
        self.bbox_mode, self.bbox_fraction, self.bbox_size = bbox_mode, bbox_fraction, bbox_size
        self.ratios, self.max_fraction = [float(r) for r in ratios], max_fraction
        self.boxes, self.skip_tasks, self.granularity_field = boxes, list(skip_tasks), granularity_field
        self.attention = GradAttentionMap(layer=attention_layer, query=query, grad_sign=grad_sign)
        self._model_ref: weakref.ReferenceType | None = None
        #: Training boxes found once per sample (:class:`rsvlm.crops.box_cache.MagCropBoxCache` sets it).
        self.box_cache: Any = None
        self.classifier, self.route, self.train_classifier = classifier, route, train_classifier
        if classifier is not None:
            self.parameter_free = False
            if not train_classifier:
                classifier.requires_grad_(False)

    # ------------------------------------------------------------------ the bound VLM
    def bind(self, model: nn.Module) -> None:
        """Use ``model`` (a :class:`~rsvlm.models.vlm.VisionLanguageModel`: ``encoder``, ``fusion``,
        ``projector``, ``llm``) for PSC. A weak reference: not a submodule, so the VLM gains no
        parameters or ``state_dict`` keys and no reference cycle."""
        self._model_ref = weakref.ref(model)

    def bound_model(self) -> nn.Module:
        """The model :meth:`bind` gave, or a ``RuntimeError`` saying how to bind one."""
        model = self._model_ref() if self._model_ref is not None else None
        if model is None:
            raise RuntimeError(
                "MagCrop(boxes='online') is bound to no model: VisionLanguageModel(cropper=...) binds it "
                "(or call magcrop.bind(model)); boxes='given' needs none"
            )
        return model

    def __getstate__(self) -> dict[str, Any]:
        # A weak reference neither pickles nor should survive a copy: the owner binds again.
        return {**super().__getstate__(), "_model_ref": None}

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}, boxes={self.boxes!r}, skip_tasks={self.skip_tasks}"

    # ------------------------------------------------------------------ forward
    def forward(self, image: torch.Tensor, batch: Mapping[str, Any] | None) -> torch.Tensor:
        """``B×C×H×W`` → ``B×C×H×W``, same geometry and dtype; ``image`` itself when nothing changes."""
        if not self.enabled:
            return image
        batch = batch or {}
        levels = self.levels(batch, image.shape[0])
        if all(level is None for level in levels):
            return image
        if self.boxes == "given":
            boxes = self.given_boxes(batch, levels)
        elif self.box_cache is not None and self._in_training():  # boxes found once (MagCropBoxCache)
            boxes = self.given_boxes({**batch, "magcrop_boxes": self.box_cache.lookup(batch)}, levels)
        else:
            boxes = self.find_boxes(image, batch, levels)
        out = [
            x if level is None else self.compose(x, level, b).to(x.dtype) for x, level, b in zip(image, levels, boxes)
        ]
        return torch.stack(out)

    def compose(self, x: torch.Tensor, level: str, boxes: Sequence[Box] | None) -> torch.Tensor:
        """One sample ``C×H×W`` at ``level`` with its boxes (``[b₁]`` or ``[b₁, b₂]``) → ``C×H×W``."""
        factor = self.degrade_factor
        if level == "image":
            side = self.image_level_size
            small = resize_to(x, (side, side))
            return F.interpolate(small[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        b1 = check_box(boxes[0], *x.shape[-2:])
        first = crop(x, b1)
        if level == "region":  # C₁ ⊕ D(I)
            return paste(degrade(x, factor), first, b1)
        u1, v1, u2, v2 = check_box(boxes[1], *first.shape[-2:])  # pixel: C₂ ⊕ D(C₁) ⊕ D(D(I))
        out = paste(degrade(degrade(x, factor), factor), degrade(first, factor), b1)
        return paste(out, first[:, v1:v2, u1:u2], (b1[0] + u1, b1[1] + v1, b1[0] + u2, b1[1] + v2))

    # ------------------------------------------------------------------ batch fields
    def levels(self, batch: Mapping[str, Any], count: int) -> list[str | None]:
        """Each sample's granularity (``"image" | "region" | "pixel"``), ``None`` for skipped tasks."""
        tasks = batch.get("task")
        tasks = [tasks] * count if tasks is None or isinstance(tasks, str) else list(tasks)
        skipped = [task is not None and task in self.skip_tasks for task in tasks]
        if all(skipped):
            return [None] * count  # nothing to crop: no granularity needed
        field = self.granularity_field
        by_classifier = self.route == "classifier" and not self._in_training()
        if (batch.get(field) is None or by_classifier) and (predicted := self.routing(batch)) is not None:
            batch = {**batch, field: predicted}
        if batch.get(field) is None:
            raise ContractError(
                f"MagCrop needs the batch field {field!r} (image|region|pixel or 0|1|2 per sample), which the data left out"
            )
        values = _per_sample(batch[field], count, field)
        return [None if skip else _granularity(v, field, i) for i, (v, skip) in enumerate(zip(values, skipped))]

    def routing(self, batch: Mapping[str, Any]) -> list[str] | None:
        """The classifier's granularity for each sample's ``instruction``; None without either."""
        if self.classifier is None or batch.get("instruction") is None:
            return None
        was_training = self.classifier.training
        predicted = self.classifier.eval().predict(list(batch["instruction"]))
        self.classifier.train(was_training)
        return predicted

    def classifier_loss(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """Cross-entropy of the classifier on the batch's gold granularity (``train_classifier``);
        None when it is not trained here or the batch lacks instructions or gold labels."""
        gold = batch.get(self.granularity_field)
        if not self.train_classifier or gold is None or batch.get("instruction") is None:
            return None
        labels = list(self.classifier.labels)
        values = _per_sample(gold, len(batch["instruction"]), self.granularity_field)
        levels = [_granularity(v, self.granularity_field, i) for i, v in enumerate(values)]
        logits = self.classifier(list(batch["instruction"]))
        target = torch.tensor([labels.index(level) for level in levels], device=logits.device)
        return F.cross_entropy(logits, target)

    def _in_training(self) -> bool:
        """Whether the model being trained is in training mode (the bound VLM's flag: a frozen,
        parameter-free cropper sits in eval mode whatever the model does)."""
        model = self._model_ref() if self._model_ref is not None else None
        return bool(model.training if model is not None else self.training)

    def given_boxes(self, batch: Mapping[str, Any], levels: Sequence[str | None]) -> list[list[Box] | None]:
        """``batch["magcrop_boxes"]``: per sample ``None`` or ``[b₁]`` / ``[b₁, b₂]`` (``b₂`` in ``b₁``'s frame)."""
        if not any(level in CROPPED for level in levels):
            return [None] * len(levels)  # image level and skipped samples need no boxes
        if batch.get("magcrop_boxes") is None:
            raise ContractError("MagCrop(boxes='given') needs the batch field 'magcrop_boxes', which the data left out")
        entries = _per_sample(batch["magcrop_boxes"], len(levels), "magcrop_boxes")
        out: list[list[Box] | None] = []
        for i, (entry, level) in enumerate(zip(entries, levels)):
            need = 0 if level not in CROPPED else CROPPED.index(level) + 1
            found = [] if entry is None else _box_list(entry, i)
            if len(found) < need:
                raise ContractError(
                    f"batch field 'magcrop_boxes'[{i}] has {len(found)} box(es); {level} level needs {need}"
                )
            out.append(found[:need] or None)
        return out

    # ------------------------------------------------------------------ prompt-guided cropping
    def find_boxes(
        self, image: torch.Tensor, batch: Mapping[str, Any], levels: Sequence[str | None] | None = None
    ) -> list[list[Box] | None]:
        """PSC boxes per sample on the bound model: ``[b₁]`` (region), ``[b₁, b₂]`` (pixel), ``None``.

        Batched: one attention pass over the region and pixel samples' images, a second over the
        pixel samples' first crops. What :meth:`forward` uses online, and what a cache of
        ``magcrop_boxes`` stores.
        """
        levels = self.levels(batch, image.shape[0]) if levels is None else list(levels)
        ids, mask = _prompt_fields(batch)
        model = self.bound_model()
        out: list[list[Box] | None] = [None] * len(levels)
        rows = [i for i, level in enumerate(levels) if level in CROPPED]
        if not rows:
            return out
        height, width = image.shape[-2:]
        with _eval_mode(model):  # deterministic boxes: no dropout in the attention pass
            heat = self._heat(model, image[rows], ids[rows], mask[rows])
            for k, i in enumerate(rows):
                out[i] = [self._box(heat[k], width, height)]
            deep = [i for i in rows if levels[i] == "pixel"]
            if deep:
                crops = [crop(image[i], out[i][0]) for i in deep]
                # C₁ is seen as the VLM sees an image: resized to the model's input size
                views = torch.stack([resize_to(c, (height, width)).to(image.dtype) for c in crops])
                heat = self._heat(model, views, ids[deep], mask[deep])
                for k, (i, c) in enumerate(zip(deep, crops)):
                    out[i].append(self._box(heat[k], c.shape[-1], c.shape[-2]))
        return out

    def _heat(self, model: nn.Module, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``b×C×H×W`` images + prompts → ``b×g_h×g_w`` PSC maps. The visual tokens come from the
        encoder, fusion and projector called directly, not ``encode_image`` (which would run the
        cropper again); they need no graph: only the attention is differentiated."""
        with torch.no_grad():
            fused = model.fusion(model.encoder(images))
            visual = model.projector(fused.tokens)
        grid = _token_grid(tuple(fused.map.shape[-2:]), getattr(model.fusion, "token_pool", 1), visual.shape[1])
        with torch.inference_mode(False), torch.enable_grad():  # ∂ℓ/∂A, also under Lightning's no-grad steps
            return self.attention(model.llm, ids.to(visual.device), mask.to(visual.device), visual, grid)

    def _box(self, heat: torch.Tensor, width: int, height: int) -> Box:
        """The PSC box of a ``g_h×g_w`` map over a ``width×height`` parent."""
        return adaptive_box(
            heat.detach().float().cpu().numpy(), (width, height), self._base_side(width, height), self.ratios
        )

    def _base_side(self, width: int, height: int) -> float:
        """Base crop side: absolute, or ``bbox_fraction`` of the shorter side with the largest
        candidate (``base·max(ratios)``) capped at ``max_fraction`` of it."""
        if self.bbox_mode == "absolute":
            return float(self.bbox_size)
        shorter = min(width, height)
        return min(self.bbox_fraction * shorter, self.max_fraction * shorter / max(self.ratios))


# ---------------------------------------------------------------------- helpers
def _per_sample(value: Any, count: int, field: str) -> list[Any]:
    """A batch field as one entry per sample (a single str or int applies to all)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist() if value.ndim else value.item()
    if isinstance(value, (str, int)):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ContractError(f"batch field {field!r} has {len(values)} entries for {count} images")
    return values


def _box_list(entry: Any, index: int) -> list[Box]:
    """One sample's ``magcrop_boxes``: a ``K×4`` tensor or a list of 4-number boxes."""
    rows = entry.reshape(-1, 4).tolist() if isinstance(entry, torch.Tensor) else list(entry)
    boxes = [tuple(int(v) for v in box) for box in rows]
    if any(len(box) != 4 for box in boxes):
        raise ContractError(f"batch field 'magcrop_boxes'[{index}] holds a box without 4 numbers (x1, y1, x2, y2)")
    return boxes


def _granularity(value: Any, field: str, index: int) -> str:
    """``"image" | "region" | "pixel"`` from a label or its index in :data:`LABELS`."""
    if isinstance(value, str) and value in LABELS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(LABELS):
        return LABELS[value]
    raise ContractError(f"batch field {field!r}[{index}] is {value!r}; expected image|region|pixel or 0|1|2")


def _prompt_fields(batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The left-padded prompts PSC asks the model (``B×P`` ids and attention mask)."""
    for field in ("prompt_ids", "prompt_attention_mask"):
        if batch.get(field) is None:
            raise ContractError(f"MagCrop(boxes='online') needs the batch field {field!r}, which the data left out")
    return batch["prompt_ids"], batch["prompt_attention_mask"]


def _token_grid(map_size: tuple[int, int], token_pool: int, count: int) -> tuple[int, int]:
    """The ``g_h×g_w`` grid of ``count`` visual tokens pooled by ``token_pool`` from an ``h×w`` map."""
    grid = (math.ceil(map_size[0] / token_pool), math.ceil(map_size[1] / token_pool))
    if grid[0] * grid[1] != count:
        raise ContractError(
            f"MagCrop: the fusion gave {count} visual tokens, not the {grid[0]}×{grid[1]} grid of its map; "
            "PSC needs one token per grid cell"
        )
    return grid


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every submodule's own mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
