"""One bounded cache for every cache warden keeps: at most ``max_entries`` values, each until a
deadline of its own; the least recently used goes first when full."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FOREVER = math.inf


class BoundedCache(Generic[K, V]):
    """A size-bounded LRU whose entries also end at their own ``until`` (any clock the caller
    uses consistently; entries put without one never expire)."""

    __slots__ = ("_entries", "max_entries")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("a cache holds at least one entry")
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """The keys held, least recently used first."""
        return iter(list(self._entries))

    def get(self, key: K, now: float = -FOREVER) -> V | None:
        """The value of ``key`` while ``now`` is before its deadline, else None."""
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V, until: float = FOREVER) -> None:
        """Keep ``value`` until ``until``; the least recently used entry goes when full."""
        self._entries[key] = (value, until)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        """Forget ``key``, if held."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
