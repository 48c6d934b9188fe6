"""MVPNet: multispectral visual pre-training of an encoder with a UperNet segmentation head.

Data flow (B batch, C bands, H×W pixels, K classes)::

    image B×C×H×W ─ encoder ─> pyramid ─ UperNet head ─> logits B×K×H/4×W/4 ─ bilinear ─> B×K×H×W

It trains with pixel-wise multi-class cross-entropy over the source datasets' classes
(pixels whose class is 255 or whose ``valid`` is False are ignored). Its purpose is the
encoder: the checkpoint's ``encoder.*`` tensors are what SPEX's ``encoder_init`` loads
(:func:`rsvlm.models.transfer.load_encoder_weights`), so the MVPNet encoder must be built with
the same arguments as the SPEX encoder it initialises.

Metrics (torchmetrics, one confusion matrix over the whole split, so DDP gives the same
numbers as one process):

* ``{val,test}/mIoU`` — ``MulticlassJaccardIndex(average="macro")``: the mean IoU over the
  classes that occur in the targets or predictions of the split (a class absent from both is
  left out, not counted as 0 or 1);
* ``{val,test}/class_IoU/<class>`` — per-class IoU (``average="none"``; 0 for an absent class);
* ``{val,test}/accuracy`` — multi-class overall pixel accuracy (``MulticlassAccuracy``,
  micro). It is not called ``OA`` because that name belongs to the binary scores below.

MVPNet is also a baseline row in SPEX's tables (Table XI: MVPNet vs SPEX), which score one
binary mask per category. So, for each target category (vegetation, water, building by
default, see ``target_categories``), the prediction is turned one-vs-rest into a binary mask
(predicted class in the category's classes) and scored against the one-vs-rest target with
:class:`rsvlm.training.metrics.BinarySegmentationMetrics`, the metric SPEX uses (global
confusion matrix over the split). They are logged as ``{val,test}/<category>/<metric>`` and,
averaged over the categories with equal weight, under SPEX's names ``test/F1``,
``test/Recall``, ``test/Precision``, ``test/OA`` and ``test/IoU`` (and ``val/...``), which
``rsvlm table`` reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from rsvlm.contracts import ContractError, Encoder
from rsvlm.heads.upernet import UperNetSegHead
from rsvlm.models.base import ComposedModule, Link, OptimizerGroup
from rsvlm.models.output_checks import check_finite_logits
from rsvlm.training.image_logging import send_picture
from rsvlm.training.metrics import METRIC_NAMES, BinarySegmentationMetrics
from rsvlm.training.optim import OptimSettings

IGNORE_INDEX = 255
#: SPEX's target categories; matched against ``class_names`` when ``target_categories`` is None.
TARGET_CATEGORIES = ("vegetation", "water", "building")


def default_target_categories(class_names: list[str] | None) -> dict[str, list[int]]:
    """Category → class indices for the SPEX categories whose name is a class name
    (case-insensitive); empty without class names."""
    names = [n.strip().lower() for n in class_names or []]
    return {c: [names.index(c)] for c in TARGET_CATEGORIES if c in names}


def _key(name: str) -> str:
    return name.strip().replace(" ", "_").replace("/", "_")


class MVPNet(ComposedModule):
    """Encoder + UperNet head trained for multi-class segmentation (one stage, both components).

    Args:
        encoder: image ``B×C×H×W`` → pyramid (the encoder SPEX later reuses).
        head: a :class:`rsvlm.heads.upernet.UperNetSegHead` with ``in_channels`` equal to the
            encoder's ``channels`` and ``num_classes`` classes.
        num_classes: K, the number of classes of the source datasets' legend.
        class_names: K names (for per-class metrics and the default target categories).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: share of the optimisation steps spent warming up linearly before the
            cosine decay (``transformers.get_cosine_schedule_with_warmup``).
        log_images: how many validation samples to draw per epoch as
            [composite | prediction | target] rows (0 turns it off; TensorBoard only).
        target_categories: category → class indices scored one-vs-rest with SPEX's binary
            metrics; None matches ``vegetation``, ``water``, ``building`` in ``class_names``.
            ``{}`` turns the binary metrics off.
    """

    links = (Link("encoder", "channels", "head", "in_channels", what="channels"),)

    def __init__(
        self,
        encoder: Encoder,
        head: UperNetSegHead,
        num_classes: int,
        class_names: list[str] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-2,
        warmup_ratio: float = 0.05,
        log_images: int = 0,
        target_categories: dict[str, list[int]] | None = None,
    ) -> None:
        super().__init__(
            stages={"train": ["encoder", "head"]},
            stage="train",
            optimizer_groups={"all": OptimizerGroup(["encoder", "head"], lr=lr, weight_decay=weight_decay)},
            optim=OptimSettings(weight_decay=weight_decay, warmup_ratio=warmup_ratio),
        )
        self.save_hyperparameters(ignore=["encoder", "head"])
        if head.num_classes != num_classes:
            raise ContractError(
                f"MVPNet.num_classes={num_classes} but {type(head).__name__}.num_classes={head.num_classes}; "
                f"set both to the number of classes"
            )
        if not 1 < num_classes <= IGNORE_INDEX:
            raise ValueError(f"MVPNet.num_classes must be in 2..{IGNORE_INDEX}, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(
                f"MVPNet.class_names has {len(class_names)} names {list(class_names)} but num_classes={num_classes}"
            )
        targets = default_target_categories(class_names) if target_categories is None else dict(target_categories)
        for category, indices in targets.items():
            if not indices or not all(0 <= int(i) < num_classes for i in indices):
                raise ValueError(
                    f"MVPNet.target_categories[{category!r}]={list(indices)}: need class indices in 0..{num_classes - 1}"
                )
        self.assemble({"encoder": encoder, "head": head})
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.target_categories = {c: [int(i) for i in v] for c, v in targets.items()}
        self.metric_average = "global"  # the binary scores: one confusion matrix over the split
        self.metrics = nn.ModuleDict({stage: self._multiclass_metrics() for stage in ("val", "test")})
        self.binary = nn.ModuleDict(
            {
                stage: nn.ModuleDict(
                    {_key(c): BinarySegmentationMetrics(from_logits=False) for c in self.target_categories}
                )
                for stage in ("val", "test")
            }
        )

    def _multiclass_metrics(self) -> MetricCollection:
        k = self.num_classes
        return MetricCollection(
            {
                "mIoU": MulticlassJaccardIndex(k, average="macro", ignore_index=IGNORE_INDEX),
                "class_IoU": MulticlassJaccardIndex(k, average="none", ignore_index=IGNORE_INDEX),
                "accuracy": MulticlassAccuracy(k, average="micro", ignore_index=IGNORE_INDEX),
            }
        )

    # ------------------------------------------------------------------ model
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` → class logits ``B×K×H×W`` at the image's resolution."""
        if image.ndim != 4 or image.shape[1] != self.encoder.in_bands:
            raise ContractError(
                f"batch field 'image' has shape {tuple(image.shape)} but {type(self.encoder).__name__} "
                f"expects B×{self.encoder.in_bands}×H×W (in_bands={self.encoder.in_bands})"
            )
        logits = self.head(self.encoder(image))
        return self.head.upsample(logits, tuple(image.shape[-2:]))

    @staticmethod
    def targets(classes: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``B×H×W`` class indices with 255 wherever ``valid`` (``B×1×H×W``) is False."""
        if valid is None:
            return classes.long()
        return torch.where(valid[:, 0], classes.long(), torch.full_like(classes, IGNORE_INDEX, dtype=torch.long))

    def loss(self, logits: torch.Tensor, classes: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy over the valid pixels (``F.cross_entropy`` with ``ignore_index=255``).

        A batch without a single valid pixel gives a zero loss that still reaches every
        parameter (instead of the NaN of a mean over nothing).
        """
        target = self.targets(classes, valid)
        if not (target != IGNORE_INDEX).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        bands = getattr(datamodule, "num_bands", None)
        if bands is not None and bands != self.encoder.in_bands:
            raise ContractError(
                f"{type(datamodule).__name__} gives {bands} bands ({getattr(datamodule, 'band_names', '')}) but "
                f"{type(self.encoder).__name__} expects in_bands={self.encoder.in_bands}"
            )
        classes = getattr(datamodule, "num_classes", None)
        if classes is not None and classes != self.num_classes:
            raise ContractError(
                f"{type(datamodule).__name__} gives {classes} classes ({getattr(datamodule, 'class_names', '')}) "
                f"but MVPNet.num_classes={self.num_classes}"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["classes"], batch.get("valid"))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def _evaluate(self, stage: str, batch: dict[str, Any]) -> torch.Tensor:
        logits = check_finite_logits(self(batch["image"]), batch, what="class logits")  # argmax would pick a class
        target = self.targets(batch["classes"], batch.get("valid"))
        loss = self.loss(logits, target)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=target.shape[0], sync_dist=True)
        preds = logits.argmax(dim=1)
        self.metrics[stage].update(preds, target)
        labelled = (target != IGNORE_INDEX)[:, None]
        for category, indices in self.target_categories.items():
            codes = torch.tensor(indices, device=preds.device)
            pred = torch.isin(preds, codes)[:, None].float()
            true = torch.isin(target, codes)[:, None].float()
            self.binary[stage][_key(category)].update(pred, true, labelled)
        return logits

    def _log_epoch(self, stage: str) -> None:
        values = self.metrics[stage].compute()
        out = {f"{stage}/mIoU": values["mIoU"], f"{stage}/accuracy": values["accuracy"]}
        for name, iou in zip(self.class_names, values["class_IoU"]):
            out[f"{stage}/class_IoU/{_key(name)}"] = iou
        per_category = {c: m.compute() for c, m in self.binary[stage].items()}
        for category, scores in per_category.items():
            out.update({f"{stage}/{category}/{k}": v for k, v in scores.items()})
        if per_category:
            for k in METRIC_NAMES:
                out[f"{stage}/{k}"] = torch.stack([s[k] for s in per_category.values()]).mean()
        self.log_dict(out)
        self.metrics[stage].reset()
        for m in self.binary[stage].values():
            m.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self._evaluate("val", batch)
        if batch_idx == 0 and self.hparams.log_images:
            self._log_class_maps(batch, logits)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """``classes`` ``B×H×W`` (argmax) and ``logits`` ``B×K×H×W`` (NaN/inf: an error)."""
        logits = check_finite_logits(self(batch["image"]), batch, what="class logits")
        return {"classes": logits.argmax(dim=1), "logits": logits}

    # ------------------------------------------------------------------ pictures
    def _log_class_maps(self, batch: dict[str, Any], logits: torch.Tensor) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        band_names = list(getattr(datamodule, "band_names", []) or []) or None
        grid = class_map_grid(
            batch["image"],
            logits.argmax(dim=1),
            self.targets(batch["classes"], batch.get("valid")),
            self.num_classes,
            band_names,
            self.hparams.log_images,
        )
        send_picture(self, "val/class_maps", grid)


def palette(num_classes: int) -> np.ndarray:
    """``(K+1)×3`` uint8 colours: matplotlib's ``tab20`` per class, black last (for 255)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    colours = [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(num_classes)]
    return np.asarray([*colours, (0, 0, 0)], dtype=np.uint8)


def class_map_grid(
    image: torch.Tensor,
    preds: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    band_names: list[str] | None,
    limit: int,
) -> np.ndarray:
    """Rows of [colour composite | predicted classes | target classes] for the first ``limit``
    samples of ``image`` ``B×C×H×W``, ``preds`` and ``target`` ``B×H×W``: an
    ``(rows·H)×(3·W)×3`` uint8 array; target pixels 255 (invalid) are black."""
    from rsvlm.io.pictures import composite_or_stretch

    colours = palette(num_classes)
    rows = []
    for img, p, t in zip(
        image[:limit].detach().float().cpu().numpy(), preds[:limit].cpu().numpy(), target[:limit].cpu().numpy()
    ):
        rgb = composite_or_stretch(img, band_names)
        t = np.where(t == IGNORE_INDEX, num_classes, t)
        rows.append(np.concatenate([rgb, colours[p], colours[t]], axis=1))
    return np.concatenate(rows, axis=0)
