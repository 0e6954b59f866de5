"""A thread-safe LRU cache bounded by bytes, not by entry count.

The owner keeps parsed models, the owner's rows embedded with them and search indexes in one
`ByteLRU`: their sizes differ by orders of magnitude (a 10 KB model, a 2 GB embedding), so only a
byte bound keeps memory predictable whatever trainers send. Eviction only drops the cache's
reference: a job that still holds an object keeps it alive until it ends.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """get/put/pop/discard, each entry with its size; least recently used entries are evicted
    until the total is at most `max_bytes`. An entry larger than the whole budget is never kept
    (`put` still returns it, so the caller uses it once). `on_evict(key, value)` runs for each
    entry evicted for room, outside the lock (it may call back into the cache)."""

    def __init__(self, max_bytes: int, on_evict: Callable[[K, V], None] | None = None):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0  # entries dropped for room (tests and logs)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def keys(self) -> list[K]:
        """A snapshot, least recently used first."""
        with self._lock:
            return list(self._items)

    def items(self) -> Iterator[tuple[K, V]]:
        with self._lock:
            snapshot = [(k, v) for k, (v, _) in self._items.items()]
        return iter(snapshot)

    def totals_by(self, group: Callable[[K], str]) -> dict[str, tuple[int, int]]:
        """(entries, bytes) per `group(key)`: what the cache holds, read when scraped."""
        totals: dict[str, tuple[int, int]] = {}
        with self._lock:
            for key, (_, nbytes) in self._items.items():
                count, size = totals.get(group(key), (0, 0))
                totals[group(key)] = (count + 1, size + nbytes)
        return totals

    def view(self, prefix: tuple) -> PrefixView:
        """Read-only mapping of the entries whose (tuple) key starts with `prefix`."""
        return PrefixView(self, prefix)

    def size_of(self, key: K) -> int | None:
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[1]

    def get(self, key: K, default: Any = None) -> V | Any:
        """The value, marked most recently used; `default` if absent."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return default
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V, nbytes: int) -> V:
        """Insert or replace (and re-account) `key`; returns `value` whether or not it is kept."""
        evicted = self._put(key, value, nbytes, replace=True)
        self._notify(evicted)
        return value

    def setdefault(self, key: K, value: V, nbytes: int) -> V:
        """The cached value if present (marked used), else `value`, kept if it fits."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                return item[0]
        evicted = self._put(key, value, nbytes, replace=False)
        self._notify(evicted)
        with self._lock:  # another thread may have won the race: share its value
            item = self._items.get(key)
        return value if item is None else item[0]

    def pop(self, key: K, default: Any = None) -> V | Any:
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return default
            self._bytes -= item[1]
            return item[0]

    def discard(self, key: K) -> None:
        self.pop(key)

    def discard_where(self, predicate: Callable[[K], bool]) -> int:
        """Drop every entry whose key matches; returns how many (no on_evict: not for room)."""
        with self._lock:
            doomed = [k for k in self._items if predicate(k)]
            for k in doomed:
                self._bytes -= self._items.pop(k)[1]
        return len(doomed)

    def _put(self, key: K, value: V, nbytes: int, *, replace: bool) -> list[tuple[K, V]]:
        nbytes = max(0, int(nbytes))
        with self._lock:
            old = self._items.get(key)
            if old is not None and not replace:
                self._items.move_to_end(key)
                return []
            if old is not None:
                self._bytes -= self._items.pop(key)[1]
            if nbytes > self.max_bytes:
                return []  # would evict everything and still not fit: not kept
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            evicted: list[tuple[K, V]] = []
            while self._bytes > self.max_bytes:
                k, (v, size) = self._items.popitem(last=False)
                self._bytes -= size
                self.evictions += 1
                evicted.append((k, v))
            return evicted

    def _notify(self, evicted: list[tuple[K, V]]) -> None:
        if self._on_evict is not None:
            for k, v in evicted:
                self._on_evict(k, v)


class PrefixView(Mapping):
    """Entries of a ByteLRU with tuple keys starting with `prefix`, keyed by the rest; a live,
    read-only view (e.g. one model's search indexes) that never marks anything used."""

    def __init__(self, cache: ByteLRU, prefix: tuple):
        self._cache, self._prefix = cache, prefix

    def _entries(self) -> dict[tuple, Any]:
        n = len(self._prefix)
        return {k[n:]: v for k, v in self._cache.items() if k[:n] == self._prefix}

    def __getitem__(self, key: tuple) -> Any:
        return self._entries()[key]

    def __iter__(self) -> Iterator[tuple]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


def measured_nbytes(obj: Any) -> int:
    """An object's own `nbytes` (numpy arrays, feature-matching index caches); 0 for objects
    that cannot tell (plugin caches), which are then kept without counting."""
    try:
        return max(0, int(getattr(obj, "nbytes", 0) or 0))
    except (TypeError, ValueError):
        return 0


class KeyedLocks:
    """A lock per key, held by whoever loads that key; dropped once nobody holds or waits for
    it, so the map never grows with the keys ever seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[Hashable, list[Any]] = {}  # key -> [lock, holders and waiters]

    def __len__(self) -> int:
        return len(self._slots)

    @contextlib.contextmanager
    def __call__(self, key: Hashable) -> Iterator[None]:
        with self._lock:
            slot = self._slots.setdefault(key, [threading.Lock(), 0])
            slot[1] += 1
        try:
            with slot[0]:
                yield
        finally:
            with self._lock:
                slot[1] -= 1
                if slot[1] == 0:
                    del self._slots[key]
