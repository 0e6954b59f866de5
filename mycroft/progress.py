"""Progress bars (rich) that switch off when output is not a terminal or with --quiet.

Nodes pass a `StageBars` as their progress callback without caring whether anything is drawn.
"""

from __future__ import annotations

import sys

_enabled = True


def configure(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def active() -> bool:
    """Bars are drawn only for a person watching a terminal."""
    return _enabled and sys.stderr.isatty()


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
