"""The owner's work queue for computations over its rows: selections and model warm-ups.

Bounded and fair. Every job runs in a place taken from a `Limiter` (running + queued, in total
and per trainer, half of them kept for trainers with nothing in progress), so the queue cannot
grow without limit and a few trainers cannot fill it. The
workers serve trainers in turn (round robin over trainers with queued jobs), not first come
first served: a trainer that queues many jobs delays another trainer's next job by at most one
of its own per worker.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from owner_node.limits import Limiter, Place

log = logging.getLogger("owner_node.scheduler")
T = TypeVar("T")


class FairScheduler:
    def __init__(self, workers: int, queue: int, per_trainer: int):
        # Up to half the places are kept for trainers with nothing in progress (see Limiter);
        # never so many that one trainer alone could not reach its own limit.
        total = workers + queue
        kept = min(total // 2, total - per_trainer)
        self.places = Limiter("selections and model warm-ups", total, per_trainer, kept)
        self._cv = threading.Condition()
        self._queues: OrderedDict[str, deque[tuple[Future[Any], Callable[[], Any]]]] = OrderedDict()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"select-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def reserve(self, trainer: str) -> Place:
        """A place for one job of `trainer`; Busy (UNAVAILABLE) when the bounds are reached."""
        return self.places.take(trainer)

    def submit(
        self, place: Place, fn: Callable[..., T], *args: Any, release: bool = True
    ) -> Future[T]:
        """Queue `fn(*args)` in its trainer's turn. With `release`, the place is given back
        when the job ends or is cancelled (a Select keeps it while it streams, and releases it
        itself). RuntimeError once the scheduler is closed."""
        future: Future[T] = Future()
        if release:
            future.add_done_callback(lambda _: place.release())
        with self._cv:
            if self._closed:
                if release:
                    place.release()
                raise RuntimeError("the owner is shutting down")
            # The job runs in a copy of the caller's context: its log lines keep the owner,
            # trainer and request they are for (mycroft.logs).
            context = contextvars.copy_context()
            job = (future, lambda: context.run(fn, *args))
            self._queues.setdefault(place.trainer, deque()).append(job)
            self._cv.notify()
        return future

    def queued(self) -> int:
        with self._cv:
            return sum(len(q) for q in self._queues.values())

    def close(self) -> None:
        """Cancel queued jobs and wait for running ones."""
        with self._cv:
            self._closed = True
            pending = [f for q in self._queues.values() for f, _ in q]
            self._queues.clear()
            self._cv.notify_all()
        for future in pending:
            future.cancel()
        for t in self._threads:
            t.join()

    def _next(self) -> tuple[Future[Any], Callable[[], Any]] | None:
        with self._cv:
            while not self._queues and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            trainer, jobs = next(iter(self._queues.items()))
            job = jobs.popleft()
            del self._queues[trainer]
            if jobs:  # back of the line: the other trainers go first
                self._queues[trainer] = jobs
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                result = call()
            except BaseException as e:  # noqa: BLE001 - the waiter gets the error
                future.set_exception(e)
            else:
                future.set_result(result)
