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
