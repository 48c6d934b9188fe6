"""Data loaders whose position inside an epoch is part of Lightning's checkpoint.

:class:`ResumableSampler` and :class:`ResumableDataLoader` let a run killed mid-epoch resume with
the next unseen batch instead of restarting the epoch; :class:`TrainPosition` carries that
position between a datamodule and the checkpoint (see their docstrings). :class:`SeededSampler`
gives each sample of an epoch its own augmentation seed. :func:`evaluation_sampler` shards
validation and test sets across processes without the padding duplicates of a
``DistributedSampler``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler, Sampler


def _dist_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def evaluation_sampler(
    dataset: Sized, num_replicas: int | None = None, rank: int | None = None
) -> DistributedSampler | None:
    """The sampler of a validation / test loader: every sample exactly once over all processes.

    ``DistributedSampler`` (what Lightning inserts by default) pads every shard to the same
    length with repeated samples, so metrics would count some samples twice whenever
    ``len(dataset)`` is not a multiple of the world size. This returns Lightning's
    ``UnrepeatedDistributedSampler`` instead: rank ``r`` takes samples ``r, r + W, r + 2W, …``
    in order, so shards differ by at most one sample. Being a ``DistributedSampler``, the
    Trainer keeps it as it is. The metrics stay correct with unequal shards because their
    states are sums (or concatenations) synchronised once per epoch, not per-rank means.

    Args:
        dataset: the split's dataset.
        num_replicas, rank: default from ``torch.distributed`` (None is returned when it is
            not initialised or has one process: a plain sequential loader is right then).

    Raises:
        ValueError: fewer samples than processes (a process without a batch would stall the
            first forward pass, which synchronises buffers across processes).
    """
    world, current = _dist_world()
    num_replicas = world if num_replicas is None else num_replicas
    rank = current if rank is None else rank
    if num_replicas <= 1:
        return None
    if 0 < len(dataset) < num_replicas:
        raise ValueError(
            f"evaluation_sampler: {len(dataset)} samples cannot give each of {num_replicas} processes one; "
            "evaluate on fewer devices"
        )
    return UnrepeatedDistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)


class SeededSampler(Sampler):
    """Yields ``(index, augmentation seed)`` pairs, shuffled or in order.

    Each epoch draws a permutation and per-sample seeds from ``seed`` and the epoch, so
    training is reproducible whatever the number of workers (the sampler runs in the main
    process). Lightning calls :meth:`set_epoch`; without it the epoch advances per pass.
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        order = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
        seeds = torch.randint(0, 2**31 - 1, (self.length,), generator=g)
        yield from zip(order.tolist(), seeds.tolist())


class ResumableSampler(DistributedSampler):
    """A seeded, rank-sharded sampler that can start an epoch part-way (after a resume).

    Being a ``DistributedSampler``, Lightning uses it as it is under DDP instead of wrapping it.
    Each epoch's order is either a seeded permutation of ``range(length)`` or the order of an
    ``inner`` sampler (e.g. one yielding ``(index, augmentation seed)`` pairs, whose
    ``set_epoch`` is forwarded); it is then sharded across ranks as ``DistributedSampler`` does
    (padded with repeats to equal lengths unless ``drop_last``).

    Args:
        length: dataset length (ignored when ``inner`` is given).
        inner: a sampler whose per-epoch order to shard and resume.
        shuffle: shuffle ``range(length)`` (without ``inner``).
        seed: permutation seed; the permutation of epoch e uses ``seed + e``.
        num_replicas, rank: default from ``torch.distributed`` (1 and 0 when not initialised).
        drop_last: drop the tail instead of padding to a multiple of the number of ranks.
    """

    def __init__(
        self,
        length: int = 0,
        inner: Sampler | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        world, me = _dist_world()
        self.inner = inner
        n = len(inner) if inner is not None else length
        super().__init__(
            range(n),
            num_replicas=world if num_replicas is None else num_replicas,
            rank=me if rank is None else rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.length = n
        self._skip: tuple[int, int] | None = None  # (epoch, samples of this rank to skip)

    def order(self, epoch: int) -> list[Any]:
        """The whole epoch's order before sharding."""
        if self.inner is not None:
            if hasattr(self.inner, "set_epoch"):
                self.inner.set_epoch(epoch)
            return list(iter(self.inner))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            return torch.randperm(self.length, generator=g).tolist()
        return list(range(self.length))

    def shard(self, epoch: int) -> list[Any]:
        """This rank's items for ``epoch``."""
        items = self.order(epoch)
        if self.drop_last:
            items = items[: self.total_size]
        elif items:
            pad = self.total_size - len(items)
            items = items + (items * math.ceil(pad / len(items)))[:pad]
        return items[self.rank : self.total_size : self.num_replicas]

    def skip_next(self, epoch: int, samples: int) -> None:
        """Start the next pass over ``epoch`` after ``samples`` of this rank's items."""
        self._skip = (epoch, samples)

    def pending_skip(self) -> int:
        """Items the next pass will skip (0 unless it is the resumed epoch)."""
        if self._skip is None or self._skip[0] != self.epoch:
            return 0
        return self._skip[1]

    def __iter__(self) -> Iterator[Any]:
        skip = self.pending_skip()
        self._skip = None
        return iter(self.shard(self.epoch)[skip:])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in Lightning's checkpoint.

    Lightning stores the ``state_dict`` of a training DataLoader that has one (under the fit
    loop's ``combined_loader`` state) and calls ``load_state_dict`` before iterating on resume.
    The position is the number of batches this loader has *returned* in the current epoch,
    counted in the main process, so it is exact whatever the number of workers and their
    prefetching (Lightning itself does not prefetch from loaders of known length). On resume
    the sampler skips that many batches' worth of indices without loading them, so training
    continues with the next unseen batch of the same seeded epoch order.

    Args:
        dataset: the dataset.
        sampler: a :class:`ResumableSampler` (required).
        batch_size: batch size (a custom ``batch_sampler`` is not supported).
        **kwargs: any other DataLoader argument (workers, collate_fn, pin_memory, drop_last...).

    A state saved with another dataset length, batch size or number of ranks cannot be mapped
    onto this loader: the epoch then restarts from its beginning, with a warning.
    """

    def __init__(self, dataset, sampler: ResumableSampler, batch_size: int = 1, **kwargs: Any) -> None:
        if not isinstance(sampler, ResumableSampler):
            raise TypeError(
                f"ResumableDataLoader: sampler must be a rsvlm.data.loaders.ResumableSampler, got {type(sampler).__name__}"
            )
        if kwargs.get("batch_sampler") is not None:
            raise TypeError("ResumableDataLoader: a custom batch_sampler is not supported; give batch_size")
        kwargs.pop("shuffle", None)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, **kwargs)
        self._epoch = 0
        self._batches = 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing runs until the first batch is asked for, after Lightning's set_epoch.
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        self._epoch = sampler.epoch
        self._batches = sampler.pending_skip() // self.batch_size
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        return {
            "epoch": int(self._epoch),
            "batches": int(self._batches),
            "batch_size": int(self.batch_size),
            "length": int(sampler.length),
            "num_replicas": int(sampler.num_replicas),
            "seed": int(sampler.seed),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        now = {
            "batch_size": self.batch_size,
            "length": sampler.length,
            "num_replicas": sampler.num_replicas,
            "seed": sampler.seed,
        }
        differs = {k: (state.get(k), v) for k, v in now.items() if state.get(k) != v}
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if differs:
            warnings.warn(
                "ResumableDataLoader: the checkpoint's data position was saved with "
                + ", ".join(f"{k}={a} (now {b})" for k, (a, b) in differs.items())
                + f"; epoch {epoch} restarts from its first batch",
                stacklevel=2,
            )
            sampler.set_epoch(epoch)
            return
        if batches >= len(self):
            sampler.set_epoch(epoch + 1)  # that epoch was complete
            return
        sampler.set_epoch(epoch)
        sampler.skip_next(epoch, batches * self.batch_size)


class TrainPosition:
    """Carries a training loader's position through a LightningDataModule's checkpoint hooks.

    Lightning saves a DataLoader's own ``state_dict`` in the fit loop, but it loads it only if
    the loader is created after the loop state is restored, which is not the case when
    ``configure_optimizers`` asks for ``trainer.estimated_stepping_batches`` (the loader is then
    built during strategy set-up). A datamodule's ``state_dict``/``load_state_dict`` are restored
    before any loader is built, so a datamodule that holds a ``TrainPosition`` resumes exactly::

        def __init__(self, ...):
            self._position = TrainPosition()

        def state_dict(self):
            return self._position.state_dict()

        def load_state_dict(self, state):
            self._position.load_state_dict(state)

        def train_dataloader(self):
            sampler = ResumableSampler(len(self.train_set), seed=self.seed)
            return self._position.attach(ResumableDataLoader(self.train_set, sampler=sampler, ...))
    """

    def __init__(self) -> None:
        self.loader: ResumableDataLoader | None = None
        self.pending: dict[str, Any] | None = None

    def attach(self, loader: ResumableDataLoader) -> ResumableDataLoader:
        """Remember ``loader`` (its position is saved) and apply a restored position to it."""
        if not isinstance(loader, ResumableDataLoader):
            raise TypeError(f"TrainPosition.attach needs a ResumableDataLoader, got {type(loader).__name__}")
        if self.pending is not None:
            loader.load_state_dict(self.pending)
            self.pending = None
        self.loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        return {"train_position": self.loader.state_dict()} if self.loader is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        position = state.get("train_position")
        if position is None:
            return
        if self.loader is not None:
            self.loader.load_state_dict(position)
        else:
            self.pending = dict(position)
