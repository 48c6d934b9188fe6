"""One-stage multi-domain sampling: a seeded, resumable mixture over (source, task) groups.

A mixed-task datamodule concatenates its groups' datasets (``ConcatDataset`` order: group ``g``
holds the flat indices ``offsets[g] … offsets[g] + n_g - 1``) and draws from them with a
:class:`MixtureSampler`. Each sample of an epoch picks its group with probability

    p_g ∝ m_g · n_g^α

(``α = 1``: proportional to size; ``α = 0``: uniform over groups; ``0 < α < 1``: temperature
sampling, LISA's ``sample_rates`` ∝ √n at ``α = 0.5``), where ``m_g`` is an optional per-group
multiplier times an optional per-task multiplier. Inside a group, samples are drawn without
replacement from a seeded permutation, reshuffled each time the group is exhausted before the
epoch ends. :class:`MixtureSpec` holds these numbers; :meth:`MixtureSpec.group_counts` and
:func:`marginal_counts` count what an epoch drew, for per-source and per-task logging.

The sampler is a :class:`rsvlm.data.loaders.ResumableSampler`, so it shards across DDP ranks,
works with :class:`rsvlm.data.loaders.ResumableDataLoader` / ``TrainPosition`` and resumes
mid-epoch with exactly the remaining order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rsvlm.data.loaders import ResumableSampler

#: A group's key: (source, task).
GroupKey = tuple[str, str]


def _check_names(field: str, names: Sequence[str], count: int) -> None:
    if len(names) != count:
        raise ValueError(f"MixtureSpec: {field} has {len(names)} entries for {count} groups")


def _check_sizes(sizes: Sequence[int], keys: Sequence[GroupKey]) -> None:
    for size, (source, task) in zip(sizes, keys):
        if int(size) != size or size <= 0:
            raise ValueError(f"MixtureSpec: sizes has {size} for group {source}/{task}; every group needs samples")


def _check_multipliers(multipliers: Sequence[float] | None, count: int) -> None:
    if multipliers is None:
        return
    if len(multipliers) != count:
        raise ValueError(f"MixtureSpec: multipliers has {len(multipliers)} entries for {count} groups")
    if any(not math.isfinite(m) or m < 0 for m in multipliers):
        raise ValueError(f"MixtureSpec: multipliers must be finite and >= 0, got {list(multipliers)}")


def _check_task_multipliers(task_multipliers: Mapping[str, float] | None, tasks: Sequence[str]) -> None:
    if not task_multipliers:
        return
    unknown = sorted(set(task_multipliers) - set(tasks))
    if unknown:
        raise ValueError(f"MixtureSpec: task_multipliers names unknown tasks {unknown} (tasks: {sorted(set(tasks))})")
    if any(not math.isfinite(m) or m < 0 for m in task_multipliers.values()):
        raise ValueError(f"MixtureSpec: task_multipliers must be finite and >= 0, got {dict(task_multipliers)}")


def mixture_weights(
    sizes: Sequence[int],
    alpha: float = 1.0,
    multipliers: Sequence[float] | None = None,
) -> list[float]:
    """Group probabilities ``p_g = m_g n_g^α / Σ_h m_h n_h^α`` (``m_g = 1`` without multipliers).

    Raises:
        ValueError: a negative or non-finite ``alpha``, or multipliers that leave no group a
            positive weight.
    """
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"mixture_weights: alpha must be finite and >= 0, got {alpha}")
    factors = [1.0] * len(sizes) if multipliers is None else [float(m) for m in multipliers]
    raw = [m * float(n) ** alpha for m, n in zip(factors, sizes)]
    total = sum(raw)
    if not total > 0:
        raise ValueError("mixture_weights: multipliers give every group weight 0; at least one must be positive")
    return [w / total for w in raw]


@dataclass(frozen=True)
class MixtureSpec:
    """The groups of a mixture, their sizes and how often each is drawn.

    Args:
        sources, tasks, sizes: one entry per group, in the order of the concatenated dataset.
        alpha: size exponent of the group weights (``p_g ∝ n_g^α``), ``>= 0``.
        multipliers: optional per-group factors on the weights (0 leaves a group out).
        task_multipliers: optional factors per task name, applied on top of ``multipliers``.
        epoch_size: samples per epoch (default ``Σ n_g``).

    Raises:
        ValueError: one line naming the offending field (lengths, empty groups, ``alpha``,
            multipliers, ``epoch_size``).
    """

    sources: tuple[str, ...]
    tasks: tuple[str, ...]
    sizes: tuple[int, ...]
    alpha: float = 1.0
    multipliers: tuple[float, ...] | None = None
    task_multipliers: Mapping[str, float] | None = None
    epoch_size: int | None = None

    def __post_init__(self) -> None:
        # Tuples, so a caller mutating its lists later cannot change a spec a sampler already uses.
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "sizes", tuple(self.sizes))
        if self.multipliers is not None:
            object.__setattr__(self, "multipliers", tuple(float(m) for m in self.multipliers))
        self._validate()

    def _validate(self) -> None:
        count = len(self.sizes)
        if count == 0:
            raise ValueError("MixtureSpec: sizes is empty; a mixture needs at least one group")
        _check_names("sources", self.sources, count)
        _check_names("tasks", self.tasks, count)
        if len(set(self.groups)) != count:
            raise ValueError(f"MixtureSpec: sources/tasks repeat a (source, task) group: {list(self.groups)}")
        _check_sizes(self.sizes, self.groups)
        if not math.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"MixtureSpec: alpha must be finite and >= 0, got {self.alpha}")
        _check_multipliers(self.multipliers, count)
        _check_task_multipliers(self.task_multipliers, self.tasks)
        if self.epoch_size is not None and (int(self.epoch_size) != self.epoch_size or self.epoch_size <= 0):
            raise ValueError(f"MixtureSpec: epoch_size must be a positive integer, got {self.epoch_size}")
        self.weights()  # raises when the multipliers zero every group

    @classmethod
    def from_groups(cls, groups: Mapping[GroupKey, int], **kwargs: Any) -> MixtureSpec:
        """A spec from ``{(source, task): size}`` in concatenation order; ``kwargs`` as the constructor."""
        keys = list(groups)
        return cls(
            sources=tuple(s for s, _ in keys), tasks=tuple(t for _, t in keys), sizes=tuple(groups.values()), **kwargs
        )

    @property
    def groups(self) -> list[GroupKey]:
        """The (source, task) keys, in concatenation order."""
        return list(zip(self.sources, self.tasks))

    @property
    def num_samples(self) -> int:
        """Samples per epoch: ``epoch_size`` or the total size."""
        return int(self.epoch_size) if self.epoch_size is not None else sum(self.sizes)

    @property
    def offsets(self) -> list[int]:
        """First flat index of each group (``ConcatDataset.cumulative_sizes`` shifted by one group)."""
        return [0, *itertools.accumulate(self.sizes)][:-1]

    def factors(self) -> list[float]:
        """Each group's multiplier: per-group times per-task (1 where none is given)."""
        per_group = self.multipliers or (1.0,) * len(self.sizes)
        per_task = self.task_multipliers or {}
        return [m * float(per_task.get(task, 1.0)) for m, task in zip(per_group, self.tasks)]

    def weights(self) -> list[float]:
        """Group probabilities ``p_g`` (see :func:`mixture_weights`)."""
        return mixture_weights(self.sizes, self.alpha, self.factors())

    def group_of(self, index: int) -> GroupKey:
        """The (source, task) group of a flat index."""
        return self.groups[self._group_ids(torch.tensor([int(index)]))[0]]

    def _group_ids(self, flat: torch.Tensor) -> list[int]:
        total = sum(self.sizes)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= total):
            raise IndexError(f"MixtureSpec: flat indices must lie in [0, {total}), got {flat.min()}..{flat.max()}")
        ends = torch.tensor(list(itertools.accumulate(self.sizes)))
        return torch.bucketize(flat, ends, right=True).tolist()

    def group_counts(self, indices: Iterable[Any]) -> dict[GroupKey, int]:
        """How many of ``indices`` (flat ints or ``(index, seed)`` pairs) fall in each group, zeros included."""
        flat = torch.tensor([_flat_index(i) for i in indices], dtype=torch.long)
        counts = dict.fromkeys(self.groups, 0)
        for g in self._group_ids(flat):
            counts[self.groups[g]] += 1
        return counts


def _flat_index(item: Any) -> int:
    # The sampler may yield (index, augmentation seed) pairs, as SeededSampler does.
    return int(item[0]) if isinstance(item, (tuple, list)) else int(item)


def marginal_counts(counts: Mapping[GroupKey, int], by: Literal["source", "task"]) -> dict[str, int]:
    """Sum :meth:`MixtureSpec.group_counts` over tasks (``by="source"``) or sources (``by="task"``)."""
    if by not in ("source", "task"):
        raise ValueError(f"marginal_counts: by must be 'source' or 'task', got {by!r}")
    out: dict[str, int] = {}
    for (source, task), n in counts.items():
        key = source if by == "source" else task
        out[key] = out.get(key, 0) + int(n)
    return out


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # The same mixing of seed and epoch as SeededSampler, so (seed, epoch) alone fixes the order.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _draw_within(size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` local indices: whole permutations of ``range(size)`` back to back, cut to ``count``."""
    cycles = math.ceil(count / size)
    return torch.cat([torch.randperm(size, generator=generator) for _ in range(cycles)])[:count]


def mixture_order(spec: MixtureSpec, seed: int, epoch: int) -> list[int]:
    """The flat indices of one epoch, before sharding; a function of ``(spec, seed, epoch)`` only."""
    return _draw_order(spec, _epoch_generator(seed, epoch)).tolist()


def _draw_order(spec: MixtureSpec, g: torch.Generator) -> torch.Tensor:
    """One epoch's flat indices from ``g``.

    Each position draws its group from ``spec.weights()`` independently (so a group's count is
    binomial around ``p_g · epoch_size``); each group's positions then take its permuted samples
    in turn. Every epoch starts fresh permutations, so resuming never depends on earlier epochs.
    """
    probs = torch.tensor(spec.weights(), dtype=torch.float64)
    group_ids = torch.multinomial(probs, spec.num_samples, replacement=True, generator=g)
    counts = torch.bincount(group_ids, minlength=len(spec.sizes)).tolist()
    drawn = [
        offset + _draw_within(size, count, g) for size, offset, count in zip(spec.sizes, spec.offsets, counts) if count
    ]
    # A stable sort lists each group's positions in epoch order; they take the group's draws in turn.
    positions = torch.argsort(group_ids, stable=True)
    order = torch.empty(spec.num_samples, dtype=torch.long)
    order[positions] = torch.cat(drawn)
    return order


class MixtureSampler(ResumableSampler):
    """Draws an epoch of flat indices from (source, task) groups; seeded, sharded, resumable.

    Deterministic given ``(seed, epoch)`` and independent of the number of workers (the order is
    computed in the main process). Being a :class:`ResumableSampler`, it shards the epoch across
    DDP ranks as ``DistributedSampler`` does (rank ``r`` takes positions ``r, r + W, …``; every
    rank gets the same length, padded with the epoch's first draws unless ``drop_last``), goes
    into a :class:`rsvlm.data.loaders.ResumableDataLoader`, and resumes mid-epoch through
    ``skip_next``. For evaluation use :func:`rsvlm.data.loaders.evaluation_sampler` instead: a
    mixture draws with repeats.

    Args:
        sources, tasks, sizes, alpha, multipliers, task_multipliers, epoch_size: the mixture
            (see :class:`MixtureSpec`).
        seed: seed of the group draws, permutations and augmentation seeds.
        seeds: yield ``(index, augmentation seed)`` pairs, as :class:`SeededSampler` does, for
            rsvlm datasets that augment per sample (plain indices otherwise).
        num_replicas, rank: default from ``torch.distributed``.
        drop_last: drop the tail instead of padding to a multiple of the number of ranks.
    """

    def __init__(
        self,
        sources: Sequence[str],
        tasks: Sequence[str],
        sizes: Sequence[int],
        alpha: float = 1.0,
        multipliers: Sequence[float] | None = None,
        task_multipliers: Mapping[str, float] | None = None,
        epoch_size: int | None = None,
        seed: int = 0,
        seeds: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        self.spec = MixtureSpec(
            sources=tuple(sources),
            tasks=tuple(tasks),
            sizes=tuple(sizes),
            alpha=alpha,
            multipliers=None if multipliers is None else tuple(multipliers),
            task_multipliers=None if task_multipliers is None else dict(task_multipliers),
            epoch_size=epoch_size,
        )
        self.seeds = seeds
        super().__init__(
            length=self.spec.num_samples,
            shuffle=True,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
            drop_last=drop_last,
        )

    @classmethod
    def from_spec(cls, spec: MixtureSpec, **kwargs: Any) -> MixtureSampler:
        """A sampler for an existing spec; ``kwargs``: ``seed``, ``seeds``, ``num_replicas``, ``rank``, ``drop_last``."""
        return cls(
            sources=spec.sources,
            tasks=spec.tasks,
            sizes=spec.sizes,
            alpha=spec.alpha,
            multipliers=spec.multipliers,
            task_multipliers=spec.task_multipliers,
            epoch_size=spec.epoch_size,
            **kwargs,
        )

    def order(self, epoch: int) -> list[Any]:
        """The whole epoch's order before sharding: flat indices, or ``(index, seed)`` pairs."""
        g = _epoch_generator(self.seed, epoch)
        indices = _draw_order(self.spec, g).tolist()
        if not self.seeds:
            return indices
        # Drawn after the order from the same generator, so turning seeds on leaves the indices unchanged.
        augment = torch.randint(0, 2**31 - 1, (len(indices),), generator=g).tolist()
        return list(zip(indices, augment))

    def group_counts(self, indices: Iterable[Any]) -> dict[GroupKey, int]:
        """See :meth:`MixtureSpec.group_counts`."""
        return self.spec.group_counts(indices)
