"""L1: the worker's in-process LRU of exact entries (zero round trips).

Bounded by entry count and by bytes (each entry's compressed size), and by
each entry's own expiry. A flush (``DELETE /api/cache``) reaches every
worker's L1 through a Redis channel (``cache.runtime``); until then an entry
lives at most ``l1_ttl`` seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class LruCache(Generic[V]):
    __slots__ = ("_bytes", "_clock", "_entries", "_max_bytes", "_max_entries")

    def __init__(self, max_entries: int, max_bytes: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[float, int, V]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> V | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires, size, value = item
        if expires <= self._clock():
            del self._entries[key]
            self._bytes -= size
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: V, size: int, ttl_s: float) -> None:
        if size > self._max_bytes or self._max_entries <= 0 or ttl_s <= 0:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (self._clock() + ttl_s, size, value)
        self._bytes += size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, (_, dropped, _) = self._entries.popitem(last=False)
            self._bytes -= dropped

    def discard(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]

    def clear(self, keep: Callable[[V], bool] | None = None) -> int:
        """Drop every entry (or those ``keep`` refuses); the number dropped."""
        if keep is None:
            count = len(self._entries)
            self._entries.clear()
            self._bytes = 0
            return count
        dropped = [k for k, (_, _, v) in self._entries.items() if not keep(v)]
        for key in dropped:
            self.discard(key)
        return len(dropped)
