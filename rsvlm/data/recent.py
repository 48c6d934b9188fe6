"""A memory of the values most recently read: :class:`RecentlyRead`.

For small datasets read many times an epoch (the generated demo scenes), where decoding the
files dominates a training step. Each DataLoader worker keeps its own memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


def check_memory_size(count: int, field: str) -> int:
    """``count`` when it is 0 (no memory) or positive, else a one-line ValueError naming ``field``."""
    if count < 0:
        raise ValueError(f"{field}: must be 0 (no memory) or a positive count, got {count}")
    return count


class RecentlyRead(Generic[V]):
    """``read()``'s value for the last ``capacity`` keys asked (least recently used forgotten first).

    The stored value itself is returned: callers that change arrays must copy them.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: must be a positive count, got {capacity}")
        self.capacity = capacity
        self.values: OrderedDict[Hashable, V] = OrderedDict()

    def __call__(self, key: Hashable, read: Callable[[], V]) -> V:
        if key in self.values:
            self.values.move_to_end(key)
        else:
            self.values[key] = read()
            if len(self.values) > self.capacity:
                self.values.popitem(last=False)
        return self.values[key]
