"""SeededSampler: per-epoch seeded order and augmentation seeds."""

from __future__ import annotations

from rsvlm.data.loaders import SeededSampler


def test_seeded_sampler_is_deterministic_and_varies_by_epoch():
    a, b = SeededSampler(10, seed=3), SeededSampler(10, seed=3)
    e0, e1 = list(a), list(a)
    assert e0 == list(b) and e0 != e1
    assert sorted(i for i, _ in e0) == list(range(10))
    b.set_epoch(1)
    assert list(b) == e1
