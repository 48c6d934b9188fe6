"""The batch contract of rsvlm's datamodules, and the base class they share.

Batch contract (:class:`Batch`; the models rely on it exactly)::

    image                  B×C×H×W float32, normalised per band (0 = band mean)
    mask                   B×1×H×W float32 in {0, 1}
    valid                  B×1×H×W bool (False: nodata, label "no data", or padding)
    category               list[str] (B)
    instruction            list[str] (B)
    response               list[str] (B)
    meta                   list[dict] (B): where each sample came from (see the datamodule)
    --- added by the text formatter (:meth:`RsvlmDataModule.set_text_formatter`), if set:
    input_ids              B×L long, prompt + response, right-padded
    attention_mask         B×L long, 1 on tokens, 0 on padding
    labels                 B×L long, -100 except the response tokens and the closing token
    response_mask          B×L bool, True on response tokens
    prompt_ids             B×P long, prompt only, left-padded (for generation)
    prompt_attention_mask  B×P long
    --- optional:
    task                   list[str] (B): the task of each sample, for datamodules that mix tasks
    visual_prompts         VisualPromptBatch: points / boxes / strokes / masks drawn on each image
                           (M slots, in the image's pixels; samples carry them as lists of
                           :class:`rsvlm.data.visual_prompts.VisualPrompt`)

Prediction batches hold ``image``, ``valid`` and ``meta`` and, with categories, ``category``,
``instruction`` and an empty ``response`` (plus the formatter's keys).

:class:`RsvlmDataModule` holds what every rsvlm datamodule shares: split-name aliases, the
seeded train loader that resumes mid-epoch (:mod:`rsvlm.data.loaders`), the text-formatter hook
and the DataLoader settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from rsvlm.contracts import VisualPromptBatch
from rsvlm.data.bands import BandSpec, band_spec
from rsvlm.data.loaders import (
    ResumableDataLoader,
    ResumableSampler,
    SeededSampler,
    TrainPosition,
    evaluation_sampler,
)


class TextFields(TypedDict, total=False):
    """The tensors a text formatter adds to a batch (shapes in the module docstring)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    response_mask: Tensor
    prompt_ids: Tensor
    prompt_attention_mask: Tensor


class _OptionalFields(TextFields, total=False):
    task: list[str]
    visual_prompts: VisualPromptBatch


class Batch(_OptionalFields):
    """One batch of the contract (shapes in the module docstring); the text fields are present
    once a text formatter is set, ``task`` only where a datamodule mixes tasks."""

    image: Tensor
    mask: Tensor
    valid: Tensor
    category: list[str]
    instruction: list[str]
    response: list[str]
    meta: list[dict[str, Any]]


#: Keys every sample carries (a text formatter must not return any of them).
CONTRACT_KEYS: tuple[str, ...] = tuple(k for k in Batch.__annotations__ if k in Batch.__required_keys__)
#: Keys a text formatter adds.
TEXT_KEYS: tuple[str, ...] = tuple(TextFields.__annotations__)

#: ``formatter(instructions, responses) -> {TEXT_KEYS: tensors}``.
TextFormatter = Callable[[list[str], list[str]], Mapping[str, Tensor]]

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_ALIASES: dict[str, str] = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}


def canonical_split(name: str) -> str:
    """``validation`` / ``valid`` → ``val``, ``training`` → ``train``, ``testing`` → ``test``."""
    return SPLIT_ALIASES.get(name, name)


class RsvlmDataModule(L.LightningDataModule):
    """What every rsvlm datamodule shares; subclasses fill :attr:`datasets` in ``setup``.

    Args:
        bands: bands fed to the model (preset name or list).
        batch_size, num_workers, pin_memory: DataLoader settings (pinned memory only with CUDA;
            persistent workers when ``num_workers > 0``).
        seed: shuffling and augmentation seed.

    The train loader draws ``(index, augmentation seed)`` pairs from a :class:`SeededSampler`
    and saves its position in the checkpoint (:class:`rsvlm.data.loaders.TrainPosition`), so a
    killed run resumes mid-epoch at the next unseen batch. Under distributed training the
    validation and test loaders shard their split without padding
    (:func:`rsvlm.data.loaders.evaluation_sampler`): metrics count every sample exactly once.
    """

    def __init__(
        self,
        bands: BandSpec | Sequence[str] | str = "demo",
        batch_size: int = 2,
        num_workers: int = 0,
        pin_memory: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._spec = band_spec(bands)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self._position = TrainPosition()
        self._formatter: TextFormatter | None = None
        self.datasets: dict[str, Dataset] = {}

    @property
    def num_bands(self) -> int:
        return len(self._spec)

    @property
    def band_names(self) -> list[str]:
        return list(self._spec.names)

    def set_text_formatter(self, formatter: TextFormatter | None) -> None:
        """Tokenise in the collate function: ``formatter(instructions, responses) -> tensors``.

        Called by the LightningModule in its ``setup``; dataloaders made afterwards add the
        formatter's outputs to every batch. It must be picklable when ``num_workers > 0``.
        """
        self._formatter = formatter

    def collate_fn(self) -> Callable[[Sequence[Any]], Any]:
        """The collate function of every loader (subclasses return theirs)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ loaders
    def _loader(
        self, split: str, sampler: Sampler | None = None, loader_class: type = DataLoader, drop_last: bool = False
    ) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before the {split} dataloader")
        return loader_class(
            self.datasets[split],
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(),
            drop_last=drop_last,
        )

    def _train_loader(self, drop_last: bool = False) -> DataLoader:
        n = len(self.datasets["train"]) if "train" in self.datasets else 0
        sampler = ResumableSampler(inner=SeededSampler(n, seed=self.seed, shuffle=True))
        return self._position.attach(self._loader("train", sampler, ResumableDataLoader, drop_last=drop_last))

    def train_dataloader(self) -> DataLoader:
        return self._train_loader()

    def _evaluation_loader(self, split: str) -> DataLoader:
        sampler = evaluation_sampler(self.datasets[split]) if split in self.datasets else None
        return self._loader(split, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return self._position.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._position.load_state_dict(state_dict)
