"""One bounded cache for every cache warden keeps: at most ``max_entries`` values, each until a
deadline of its own; the least recently used goes first when full.

A cache may also be given an *admission policy* (TinyLFU): a compact sketch counts how often each
key was asked for, and a new key takes the place of the least recently used one only when it was
asked for more often. Without it, more distinct keys cycling than the cache holds evict each
other before they are asked for again (a hit rate of zero); with it, the cache keeps the keys it
holds and serves its share of them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

FOREVER = math.inf

_ROWS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5)
"""Odd multipliers, one per row of the sketch: each spreads a key's hash differently."""
_MASK64 = 2**64 - 1
_HALVED = bytes(count >> 1 for count in range(256))


class FrequencySketch:
    """How often each key was seen lately, approximately, in a fixed few bytes per entry the
    cache holds (a count-min sketch of four rows of counters capped at 15). Every
    ``10 * capacity`` additions every counter is halved, so that old popularity fades."""

    __slots__ = ("_added", "_counters", "_sample", "_shift", "_width")

    def __init__(self, capacity: int) -> None:
        width = 1 << max(4, (max(capacity, 1) * 8 - 1).bit_length())
        self._width = width
        self._shift = 64 - (width.bit_length() - 1)
        self._counters = [bytearray(width) for _ in _ROWS]
        self._sample = 10 * max(capacity, 1)
        self._added = 0

    def _slots(self, key: Hashable) -> list[int]:
        h = hash(key) & _MASK64
        return [((h * m) & _MASK64) >> self._shift for m in _ROWS]

    def frequency(self, key: Hashable) -> int:
        """The (over-)estimate of how often ``key`` was seen lately."""
        return min(row[slot] for row, slot in zip(self._counters, self._slots(key), strict=True))

    def add(self, key: Hashable) -> None:
        """Count one more sighting of ``key``."""
        for row, slot in zip(self._counters, self._slots(key), strict=True):
            if row[slot] < 15:
                row[slot] += 1
        self._added += 1
        if self._added >= self._sample:
            self._added //= 2
            for row in self._counters:
                row[:] = row.translate(_HALVED)


class BoundedCache(Generic[K, V]):
    """A size-bounded LRU whose entries also end at their own ``until`` (any clock the caller
    uses consistently; entries put without one never expire). With ``admission``, a new key
    displaces the least recently used one only when the sketch saw it more often."""

    __slots__ = ("_entries", "_sketch", "max_entries")

    def __init__(self, max_entries: int, *, admission: bool = False) -> None:
        if max_entries < 1:
            raise ValueError("a cache holds at least one entry")
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self.max_entries = max_entries
        self._sketch = FrequencySketch(max_entries) if admission else None

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """The keys held, least recently used first."""
        return iter(list(self._entries))

    def get(self, key: K, now: float = -FOREVER) -> V | None:
        """The value of ``key`` while ``now`` is before its deadline, else None."""
        if self._sketch is not None:
            self._sketch.add(key)
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V, until: float = FOREVER) -> None:
        """Keep ``value`` until ``until``; the least recently used entry goes when full (with
        admission: unless the new key was asked for no more often than that one, and then the
        new one is not kept)."""
        entries = self._entries
        if key not in entries and len(entries) >= self.max_entries and self._sketch is not None:
            # The key's own count includes the request that missed it: compare what came before.
            victim = next(iter(entries))
            if self._sketch.frequency(key) - 1 <= self._sketch.frequency(victim):
                return
        entries[key] = (value, until)
        entries.move_to_end(key)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)

    def pop(self, key: K) -> None:
        """Forget ``key``, if held."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
