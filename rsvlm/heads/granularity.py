"""GeoMag's task-granularity classifier: a query → image, region or pixel level.

A frozen BERT-base (transformers) reads the query; the ``[CLS]`` state of its last layer
(768-d, no pooler) goes through fully connected layers 768 → 256 → 128 → 3 (the paper's two hidden
layers), one logit per granularity. MagCrop uses the predicted level to pick the resolution
adjustment (image: 100×100; region: one crop; pixel: two nested crops).

Shapes: B queries → ids ``B×≤max_length`` → BERT ``B×L×768`` → ``B×768`` → ``B×3`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from rsvlm.io.state_dicts import check_state_dict, read_state_dict
from rsvlm.llm.loading import on_meta_device
from rsvlm.llm.tokenizer import TokenizerSource

LABELS: tuple[str, ...] = ("image", "region", "pixel")


class TaskGranularityClassifier(nn.Module):
    """Frozen text encoder + FC head (see the module docstring).

    Args:
        text_encoder: Hugging Face id or folder of a BERT model, or a ``BertConfig`` dict (random
            weights: tests and offline demos).
        tokenizer: Hugging Face id or folder, or a :class:`rsvlm.llm.tokenizer.TokenizerSource`
            (e.g. the offline demo tokenizer); default ``text_encoder`` when it is a name.
        hidden_dims: widths of the hidden layers (the paper's 256, 128).
        labels: the classes, in logit order.
        pooling: ``"cls"`` (the ``[CLS]`` state) or ``"mean"`` (mean over the query's tokens).
        activation: ``"relu"`` or ``"gelu"`` between the layers.
        dropout: before each hidden layer.
        freeze_encoder: no gradients into the text encoder, which stays in eval mode.
        max_length: longest query in tokens (longer ones are cut).
        checkpoint: a checkpoint of the classifier trained alone (``rsvlm fit`` with
            :class:`rsvlm.models.granularity.GranularityTask`): its ``classifier.*`` weights load.
    """

    def __init__(
        self,
        text_encoder: str | dict[str, Any] = "bert-base-uncased",
        tokenizer: str | TokenizerSource | None = None,
        hidden_dims: list[int] = [256, 128],
        labels: list[str] = list(LABELS),
        pooling: Literal["cls", "mean"] = "cls",
        activation: Literal["relu", "gelu"] = "relu",
        dropout: float = 0.1,
        freeze_encoder: bool = True,
        max_length: int = 128,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer, BertConfig, BertModel

        if pooling not in ("cls", "mean") or activation not in ("relu", "gelu"):
            raise ValueError(
                f"TaskGranularityClassifier: pooling cls|mean, activation relu|gelu; got {pooling}, {activation}"
            )
        if isinstance(text_encoder, str):
            self.encoder = BertModel.from_pretrained(text_encoder, add_pooling_layer=False)
            self.encoder.weights_source = text_encoder  # trained-only checkpoints leave it out
        else:
            self.encoder = BertModel(BertConfig(**text_encoder), add_pooling_layer=False)
        source = tokenizer if tokenizer is not None else text_encoder
        if isinstance(source, dict) and on_meta_device():
            self.tokenizer = None  # counting parameters (rsvlm summarize) reads no text
        elif isinstance(source, dict):
            raise ValueError(
                "TaskGranularityClassifier: a text_encoder config needs tokenizer= (an id, folder or source)"
            )
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(source) if isinstance(source, str) else source.load()
        if self.tokenizer is not None and len(self.tokenizer) > self.encoder.config.vocab_size:
            raise ValueError(
                f"TaskGranularityClassifier: the tokenizer has {len(self.tokenizer)} tokens but the text encoder's "
                f"vocab_size is {self.encoder.config.vocab_size}"
            )
        self.labels = list(labels)
        self.pooling = pooling
        self.max_length = max_length
        widths = [self.encoder.config.hidden_size, *hidden_dims]
        act = nn.ReLU if activation == "relu" else nn.GELU
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Dropout(dropout), nn.Linear(width_in, width_out), act()]
        layers.append(nn.Linear(widths[-1], len(self.labels)))
        self.head = nn.Sequential(*layers)
        self.freeze_encoder = freeze_encoder
        if checkpoint is not None:
            self.load_classifier_checkpoint(checkpoint)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def load_classifier_checkpoint(self, path: str) -> None:
        """Load the ``classifier.*`` weights of a :class:`rsvlm.models.granularity.GranularityTask`
        checkpoint (``rsvlm fit`` of the classifier alone, GeoMag's stage A). The head must be
        there; the text encoder's weights may be left out when they are the frozen source's."""
        prefix = "classifier."
        given = {
            k[len(prefix) :]: v
            for k, v in read_state_dict(path, "TaskGranularityClassifier.checkpoint").items()
            if k.startswith(prefix)
        }
        expected = self.state_dict()
        absent_encoder = [k for k in expected if k.startswith("encoder.") and k not in given]
        header = f"TaskGranularityClassifier.checkpoint: {path} does not fit this classifier:"
        check_state_dict(expected, given, header, module_name="classifier", ignore=absent_encoder)
        self.load_state_dict(given, strict=False)

    def train(self, mode: bool = True) -> TaskGranularityClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # frozen: dropout off, whatever the mode
        return self

    def tokenize(self, queries: Sequence[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, ``B×L`` (right-padded, at most ``max_length``)."""
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        batch = self.tokenizer(
            list(queries), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: batch[k] for k in ("input_ids", "attention_mask")}

    def features(self, queries: Sequence[str]) -> torch.Tensor:
        """``B×D`` query representations (``[CLS]`` state or masked mean of the last layer)."""
        device = next(self.encoder.parameters()).device
        inputs = {k: v.to(device) for k, v in self.tokenize(queries).items()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            hidden = self.encoder(**inputs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)

    def forward(self, queries: Sequence[str]) -> torch.Tensor:
        """``B×len(labels)`` logits."""
        return self.head(self.features(queries))

    @torch.no_grad()
    def predict(self, queries: Sequence[str]) -> list[str]:
        """The most likely granularity of each query."""
        return [self.labels[i] for i in self(queries).argmax(dim=-1).tolist()]
