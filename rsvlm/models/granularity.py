"""Training the task-granularity classifier on its own (``rsvlm fit --config recipes/granularity-demo.yaml``).

Cross-entropy over the three levels; AdamW on the FC head (the text encoder is frozen). Logged:
``{split}/loss``, ``{split}/accuracy`` (micro) and ``{split}/F1/<label>`` per class (torchmetrics,
one confusion matrix over the split, so DDP gives the numbers of one process).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from rsvlm.heads.granularity import TaskGranularityClassifier


class GranularityTask(L.LightningModule):
    """Lightning wrapper of a :class:`TaskGranularityClassifier`.

    Args:
        classifier: the classifier (its ``labels`` name the classes of the data's ``granularity``).
        lr: AdamW learning rate of the trainable parameters.
        weight_decay: AdamW weight decay.
    """

    def __init__(self, classifier: TaskGranularityClassifier, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.classifier = classifier
        self.lr, self.weight_decay = lr, weight_decay
        count = len(classifier.labels)
        self.metrics = nn.ModuleDict(
            {
                split: MetricCollection(
                    {
                        "accuracy": MulticlassAccuracy(count, average="micro"),
                        "F1": MulticlassF1Score(count, average="none"),
                    }
                )
                for split in ("val", "test")
            }
        )

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        labels = self.classifier.labels
        unknown = sorted({g for g in batch["granularity"] if g not in labels})
        if unknown:
            raise ValueError(f"granularity {unknown[0]!r} is not one of the classifier's labels {labels}")
        return torch.tensor([labels.index(g) for g in batch["granularity"]], device=self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.classifier(batch["query"]), self.targets(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["query"]))
        return loss

    def _evaluate(self, split: str, batch: dict[str, Any]) -> None:
        logits, target = self.classifier(batch["query"]), self.targets(batch)
        self.log(f"{split}/loss", F.cross_entropy(logits, target), batch_size=len(target))
        self.metrics[split].update(logits, target)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _log_epoch(self, split: str) -> None:
        scores = self.metrics[split].compute()
        self.log(f"{split}/accuracy", scores["accuracy"], prog_bar=True)
        for label, value in zip(self.classifier.labels, scores["F1"]):
            self.log(f"{split}/F1/{label}", value)
        self.metrics[split].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
