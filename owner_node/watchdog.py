"""Cancels calls that stop making progress: a stalled upload, an unread Select, an idle stream.

gRPC's Python server gives each call a handler thread for as long as the call lasts. A client
that opens a stream and then neither sends nor reads would hold that thread forever; the
watchdog cancels such a call after `idle` seconds without progress (or `total` seconds in all),
which wakes the handler with an error so it releases the thread and every place it holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, TypeVar

log = logging.getLogger("owner_node.watchdog")
T = TypeVar("T")


class Watch:
    def __init__(self, dog: Watchdog, context: Any, what: str, idle: float, total: float | None):
        self._dog = dog
        self.context = context
        self.what = what
        self.idle = idle
        self.total = total
        self.started = self.last = time.monotonic()
        self.expired = ""  # why it was cancelled, once it was

    def touch(self) -> None:
        """Progress: a chunk arrived or was sent."""
        self.last = time.monotonic()

    def close(self) -> None:
        self._dog._forget(self)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def iterate(self, items: Iterator[T]) -> Iterator[T]:
        """`items`, touching on each one (for request streams). The watch ends with the
        stream: what the handler does after the last item (verifying an upload) is its own."""
        for item in items:
            self.touch()
            yield item
        self.close()

    def _overdue(self, now: float) -> str:
        if now - self.last > self.idle:
            return f"no progress for {self.idle:g} s"
        if self.total is not None and now - self.started > self.total:
            return f"longer than {self.total:g} s in all"
        return ""


class Watchdog:
    def __init__(self, period: float = 0.25):
        self._period = period
        self._watches: set[Watch] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def watch(self, context: Any, what: str, idle: float, total: float | None = None) -> Watch:
        w = Watch(self, context, what, idle, total)
        with self._lock:
            self._watches.add(w)
        return w

    def active(self) -> int:
        with self._lock:
            return len(self._watches)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _forget(self, w: Watch) -> None:
        with self._lock:
            self._watches.discard(w)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            now = time.monotonic()
            with self._lock:
                due = [(w, why) for w in self._watches if (why := w._overdue(now))]
                for w, _ in due:
                    self._watches.discard(w)
            for w, why in due:
                w.expired = why
                log.warning("cancelling %s: %s", w.what, why)
                w.context.cancel()
