"""Counted places for long calls: a total for the node and a share per trainer.

Selections, model warm-ups, uploads and reflection streams each hold a place while they last.
A caller over either bound is refused at once with UNAVAILABLE (`Busy`), before any work and
without waiting, so no caller can make the node queue without limit or take every place.
"""

from __future__ import annotations

import threading
from collections import Counter

from owner_node.errors import Busy


class Place:
    """One held place; `release` is idempotent, so error paths may call it twice."""

    def __init__(self, limiter: Limiter, trainer: str):
        self._limiter = limiter
        self.trainer = trainer
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._limiter._give_back(self.trainer)

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class Limiter:
    """`total` places, at most `per_trainer` per trainer. The last `kept_for_first` places go
    only to trainers holding none: a few identities each taking their full share cannot fill
    the node, and every other trainer still gets its first place."""

    def __init__(self, what: str, total: int, per_trainer: int, kept_for_first: int = 0):
        self.what = what  # "selections and model warm-ups", "model uploads", ...
        self.total = total
        self.per_trainer = per_trainer
        self.kept_for_first = min(kept_for_first, total - 1)
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()
        self._count = 0

    def take(self, trainer: str) -> Place:
        """A place for `trainer`, or Busy (UNAVAILABLE) naming which bound was hit."""
        with self._lock:
            held = self._held[trainer]
            if held >= self.per_trainer:
                raise Busy(
                    f"trainer {trainer!r} already has {self.per_trainer} {self.what} in "
                    "progress (the owner's per-trainer limit); retry when one ends"
                )
            if self._count >= self.total:
                raise Busy(f"the owner is busy with other {self.what}; retry shortly")
            if held and self.total - self._count <= self.kept_for_first:
                raise Busy(
                    f"the owner keeps its last {self.kept_for_first} places for trainers with "
                    f"no {self.what} in progress; retry when one of yours ends"
                )
            self._held[trainer] = held + 1
            self._count += 1
        return Place(self, trainer)

    def in_use(self, trainer: str | None = None) -> int:
        with self._lock:
            return self._count if trainer is None else self._held[trainer]

    def _give_back(self, trainer: str) -> None:
        with self._lock:
            self._count -= 1
            self._held[trainer] -= 1
            if self._held[trainer] <= 0:
                del self._held[trainer]
