"""MixtureSampler: group weights, within-group draws, determinism, resume and DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from rsvlm.data.loaders import ResumableDataLoader
from rsvlm.data.mixing import MixtureSampler, MixtureSpec, marginal_counts, mixture_weights

SOURCES = ["optical", "optical", "sar", "ir"]
TASKS = ["caption", "vqa", "vqa", "refseg"]
SIZES = [10, 40, 250, 3]
OFFSETS = [0, 10, 50, 300]  # written out, not computed: the reference for the flat layout


def _sampler(**kwargs) -> MixtureSampler:
    return MixtureSampler(SOURCES, TASKS, SIZES, **kwargs)


def _group_of(index: int) -> int:
    """Reference group lookup by a plain scan of the written-out offsets."""
    return max(g for g, start in enumerate(OFFSETS) if index >= start)


class _Identity(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return sum(SIZES)

    def __getitem__(self, i: int) -> int:
        return i


# ------------------------------------------------------------------ weights
def test_weights_follow_the_formula_with_multipliers_and_task_multipliers():
    spec = MixtureSpec(
        SOURCES, TASKS, SIZES, alpha=0.5, multipliers=[1.0, 2.0, 0.5, 1.0], task_multipliers={"vqa": 3.0}
    )
    raw = np.array([1.0 * 10**0.5, 2.0 * 3.0 * 40**0.5, 0.5 * 3.0 * 250**0.5, 1.0 * 3**0.5])
    np.testing.assert_allclose(spec.weights(), raw / raw.sum(), rtol=1e-12)


def test_alpha_zero_is_uniform_and_alpha_one_is_proportional():
    np.testing.assert_allclose(mixture_weights(SIZES, alpha=0.0), [0.25] * 4, rtol=1e-12)
    np.testing.assert_allclose(mixture_weights(SIZES, alpha=1.0), [10 / 303, 40 / 303, 250 / 303, 3 / 303], rtol=1e-12)


def test_a_zero_multiplier_leaves_a_group_out():
    sampler = _sampler(multipliers=[1.0, 0.0, 1.0, 1.0], epoch_size=500)
    assert sampler.spec.weights()[1] == 0.0
    assert sampler.group_counts(sampler.order(0))[("optical", "vqa")] == 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_empirical_group_frequencies_lie_in_binomial_intervals(alpha):
    n = 20_000
    sampler = _sampler(alpha=alpha, epoch_size=n, seed=5)
    raw = np.array(SIZES, dtype=float) ** alpha
    expected = raw / raw.sum()  # independent of the library's weights
    groups = [_group_of(i) for i in sampler.order(0)]
    # The whole epoch, and its first tenth: each position draws its group, so a prefix is mixed too.
    for length in (n, n // 10):
        drawn = np.bincount(groups[:length], minlength=len(SIZES))
        for g, p in enumerate(expected):
            # Bonferroni over groups and windows, at a level a correct sampler essentially never misses.
            low, high = stats.binom.interval(1 - 1e-6 / (2 * len(SIZES)), length, p)
            assert low <= drawn[g] <= high, (alpha, length, g, drawn[g], length * p)


def test_epoch_size_defaults_to_the_total_size():
    assert len(_sampler()) == sum(SIZES) == len(_sampler().order(0))
    assert len(_sampler(epoch_size=17).order(3)) == 17


# ------------------------------------------------------------------ within a group
def test_a_group_repeats_no_sample_before_it_is_exhausted_and_reshuffles_each_cycle():
    # alpha 0: the 3-sample group is drawn ~2000 times (many cycles), the 250-sample one < 250.
    order = _sampler(alpha=0.0, epoch_size=800, seed=2).order(1)
    for g, size in enumerate(SIZES):
        drawn = [i for i in order if _group_of(i) == g]
        assert all(OFFSETS[g] <= i < OFFSETS[g] + size for i in drawn)
        cycles = [drawn[c : c + size] for c in range(0, len(drawn), size)]
        for cycle in cycles:
            assert len(set(cycle)) == len(cycle), (g, cycle)
        for cycle in cycles[:-1]:
            assert sorted(cycle) == list(range(OFFSETS[g], OFFSETS[g] + size))  # a whole permutation
        if len(cycles) > 3 and size > 2:
            assert len({tuple(c) for c in cycles[:-1]}) > 1  # reshuffled, not the same cycle repeated
    assert len([i for i in order if _group_of(i) == 3]) > 3 * SIZES[3]  # the small group did cycle


# ------------------------------------------------------------------ determinism
def test_the_order_is_a_function_of_seed_and_epoch():
    a, b = _sampler(seed=7), _sampler(seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # a pass does not advance anything
    assert a.order(2) != a.order(3)
    assert _sampler(seed=8).order(2) != a.order(2)


def test_seeds_pairs_keep_the_index_order():
    plain, paired = _sampler(seed=4).order(1), _sampler(seed=4, seeds=True).order(1)
    assert [i for i, _ in paired] == plain
    assert paired == _sampler(seed=4, seeds=True).order(1)
    assert len({s for _, s in paired}) > len(paired) // 2


def test_the_order_does_not_depend_on_the_number_of_workers():
    def batches(workers: int) -> list[list[int]]:
        sampler = _sampler(seed=3, epoch_size=40)
        sampler.set_epoch(1)
        loader = ResumableDataLoader(_Identity(), sampler=sampler, batch_size=4, num_workers=workers)
        return [b.tolist() for b in loader]

    single = batches(0)
    assert sum(single, []) == _sampler(seed=3, epoch_size=40).order(1)
    assert batches(2) == single


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("k", [0, 1, 37, 302, 303])
def test_resuming_at_k_yields_the_rest_of_the_uninterrupted_order(k):
    whole = _sampler(seed=9, seeds=True)
    whole.set_epoch(4)
    full = list(whole)
    resumed = _sampler(seed=9, seeds=True)
    resumed.set_epoch(4)
    resumed.skip_next(4, k)
    assert list(resumed) == full[k:]
    assert list(resumed) == full  # the skip is for one pass only


def test_a_restored_loader_continues_with_the_unseen_batches():
    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(_Identity(), sampler=_sampler(seed=1, epoch_size=50), batch_size=4)

    first = loader()
    first.sampler.set_epoch(3)
    full = [b.tolist() for b in first]
    it = iter(first)
    seen = [next(it).tolist() for _ in range(5)]
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    assert seen + [b.tolist() for b in second] == full


def test_a_sharded_rank_resumes_within_its_shard():
    ranks = [_sampler(seed=6, num_replicas=2, rank=r) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(0)
    shard = list(ranks[1])
    ranks[1].skip_next(0, 10)
    assert list(ranks[1]) == shard[10:]


# ------------------------------------------------------------------ DDP
@pytest.mark.parametrize(("epoch_size", "drop_last"), [(30, False), (31, False), (31, True)])
def test_ranks_partition_the_epoch(epoch_size, drop_last):
    world = 3
    full = _sampler(seed=2, epoch_size=epoch_size).order(5)
    ranks = [_sampler(seed=2, epoch_size=epoch_size, num_replicas=world, rank=r, drop_last=drop_last) for r in range(3)]
    for s in ranks:
        s.set_epoch(5)
    shards = [list(s) for s in ranks]
    assert len({len(s) for s in shards}) == 1 and all(len(s) == len(r) for s, r in zip(shards, ranks))
    # Positions, not indices, are the unit: a mixture repeats indices by design.
    interleaved = [shards[r][i] for i in range(len(shards[0])) for r in range(world)]
    if drop_last:
        assert interleaved == full[: epoch_size // world * world]
    else:
        covered = len(full)
        assert interleaved[:covered] == full  # every draw once, on exactly one rank
        assert interleaved[covered:] == full[: len(interleaved) - covered]  # padding repeats the first draws


# ------------------------------------------------------------------ counts
def test_group_counts_and_marginals_of_known_indices():
    spec = MixtureSpec(SOURCES, TASKS, SIZES)
    indices = [0, 9, 10, 49, 50, 299, 300, 302, (11, 123), (301, 4)]
    counts = spec.group_counts(indices)
    assert counts == {("optical", "caption"): 2, ("optical", "vqa"): 3, ("sar", "vqa"): 2, ("ir", "refseg"): 3}
    assert marginal_counts(counts, "source") == {"optical": 5, "sar": 2, "ir": 3}
    assert marginal_counts(counts, "task") == {"caption": 2, "vqa": 5, "refseg": 3}
    assert spec.group_counts([]) == dict.fromkeys(spec.groups, 0)
    assert spec.group_of(50) == ("sar", "vqa")
    with pytest.raises(IndexError, match="303"):
        spec.group_counts([303])


def test_group_counts_of_an_epoch_add_up_to_its_size():
    sampler = _sampler(alpha=0.5, epoch_size=400)
    order = sampler.order(0)
    counts = sampler.group_counts(order)
    assert sum(counts.values()) == 400
    reference = np.bincount([_group_of(i) for i in order], minlength=4)
    assert list(counts.values()) == reference.tolist()


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sizes": [10, 0, 250, 3]}, "sizes"),
        ({"sizes": []}, "sizes"),
        ({"alpha": -0.5}, "alpha"),
        ({"multipliers": [1.0, 2.0]}, "multipliers"),
        ({"multipliers": [1.0, -1.0, 1.0, 1.0]}, "multipliers"),
        ({"multipliers": [0.0, 0.0, 0.0, 0.0]}, "multipliers"),
        ({"task_multipliers": {"detection": 2.0}}, "task_multipliers"),
        ({"tasks": ["caption", "vqa"]}, "tasks"),
        ({"sources": ["optical", "optical", "sar", "sar"], "tasks": ["vqa", "vqa", "vqa", "vqa"]}, "sources/tasks"),
        ({"epoch_size": 0}, "epoch_size"),
    ],
)
def test_bad_mixtures_fail_with_one_line_naming_the_field(kwargs, field):
    args = {"sources": SOURCES, "tasks": TASKS, "sizes": SIZES, **kwargs}
    with pytest.raises(ValueError, match=field) as err:
        MixtureSampler(**args)
    assert "\n" not in str(err.value)


def test_from_groups_and_from_spec_build_the_same_sampler():
    groups = {(s, t): n for s, t, n in zip(SOURCES, TASKS, SIZES)}
    spec = MixtureSpec.from_groups(groups, alpha=0.5, task_multipliers={"vqa": 2.0}, epoch_size=60)
    assert spec == MixtureSpec(SOURCES, TASKS, SIZES, alpha=0.5, task_multipliers={"vqa": 2.0}, epoch_size=60)
    assert spec.offsets == OFFSETS and spec.groups == list(groups)
    direct = _sampler(alpha=0.5, task_multipliers={"vqa": 2.0}, epoch_size=60, seed=3)
    assert MixtureSampler.from_spec(spec, seed=3).order(2) == direct.order(2)
