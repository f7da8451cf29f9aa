"""A bounded least-recently-used cache of loaded documents.

Documents are loaded lazily and evicted when the cache holds more than ``max_items`` entries
or more than ``max_bytes`` of encoded state (the encoded size stands in for the memory a
decoded document takes, which is a roughly constant multiple of it: 40 to 120 times).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """Least-recently-used mapping with an item and a weight budget."""

    def __init__(
        self, max_items: int, max_bytes: int, on_drop: Callable[[V], None] | None = None
    ) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError("cache budgets must be positive")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        """Called with each value evicted or cleared (not one replaced by a put)."""
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached (without marking it used)."""
        return key in self._data

    @property
    def weight(self) -> int:
        """The total weight held."""
        return self._bytes

    def weight_of(self, key: K) -> int:
        """The weight of ``key`` (0 if not cached), without marking it used."""
        hit = self._data.get(key)
        return 0 if hit is None else hit[1]

    def peek(self, key: K) -> V | None:
        """The cached value without marking it used, or None."""
        hit = self._data.get(key)
        return None if hit is None else hit[0]

    def get(self, key: K) -> V | None:
        """The cached value (marking it recently used), or None."""
        hit = self._data.get(key)
        if hit is None:
            return None
        self._data.move_to_end(key)
        return hit[0]

    def put(self, key: K, value: V, weight: int) -> None:
        """Insert or replace ``key``, then evict the least recently used beyond the budgets."""
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._data[key] = (value, weight)
        self._bytes += weight
        while len(self._data) > self.max_items or (
            self._bytes > self.max_bytes and len(self._data) > 1
        ):
            _, (dropped, w) = self._data.popitem(last=False)
            self._bytes -= w
            if self._on_drop is not None:
                self._on_drop(dropped)

    def clear(self) -> None:
        """Forget everything."""
        dropped = [value for value, _ in self._data.values()]
        self._data.clear()
        self._bytes = 0
        if self._on_drop is not None:
            for value in dropped:
                self._on_drop(value)
