"""Progress bars (rich) that switch off when output is not a terminal or with --quiet.

Nodes call `track(...)` / `task(...)` without caring whether anything is drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
_enabled = True


def configure(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def active() -> bool:
    """Bars are drawn only for a person watching a terminal."""
    return _enabled and sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if not active():
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, transient=True)


class _Task:
    def __init__(self, progress, task_id) -> None:
        self._progress, self._task_id = progress, task_id

    def advance(self, amount: float = 1.0) -> None:
        if self._progress is not None:
            self._progress.advance(self._task_id, amount)

    def update(self, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task_id, **fields)


@contextmanager
def task(description: str, total: float | None = None) -> Iterator[_Task]:
    """A bar to advance by hand (training steps, streamed bytes)."""
    if not active():
        yield _Task(None, None)
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        transient=True,
        file=sys.stderr,
    ) as progress:
        yield _Task(progress, progress.add_task(description, total=total))


class StageBars:
    """A progress callback for long runs: one bar per stage (and per owner while acquiring).

    Takes events with `stage`, `message`, `owner`, `done`, `total` (trainer_node's
    ProgressEvent); events may come from worker threads (rich's Progress is thread-safe).
    Draws nothing unless a person is watching a terminal.
    """

    def __init__(self) -> None:
        self._progress = None
        self._tasks: dict[tuple[str, str | None], object] = {}

    def __enter__(self) -> StageBars:
        if active():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                file=sys.stderr,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event) -> None:
        if self._progress is None:
            return
        key = (event.stage, event.owner)
        label = event.stage if event.owner is None else f"{event.stage} {event.owner}"
        description = f"{label}: {event.message}"[:70]
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(description, total=event.total)
        self._progress.update(
            self._tasks[key], description=description, completed=event.done or 0, total=event.total
        )
