"""Progress for long runs: rich bars on a terminal, periodic plain lines elsewhere, none with --quiet.

Nodes pass a `StageBars` as their progress callback without caring how (or whether) it is shown.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("mycroft.progress")

# How often a stage's plain progress line is repeated when nobody watches a terminal.
REPORT_EVERY_SECONDS = 10.0

_enabled = True


def configure(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def active() -> bool:
    """Bars are drawn only for a person watching a terminal."""
    return _enabled and sys.stderr.isatty()


class Event(Protocol):
    """trainer_node.acquire.ProgressEvent, without importing the trainer here."""

    stage: str
    message: str
    owner: str | None
    done: int | None
    total: int | None


def _label(event: Event) -> str:
    return event.stage if event.owner is None else f"{event.stage} {event.owner}"


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _Sink(Protocol):
    def show(self, event: Event) -> None: ...

    def close(self) -> None: ...


class StageBars:
    """A progress callback for long runs: one bar (or line) per stage, per owner while acquiring.

    Takes events with `stage`, `message`, `owner`, `done`, `total` (trainer_node's
    ProgressEvent); events may come from worker threads, so they are shown one at a time.
    On a terminal: rich bars with "k of N", elapsed time and ETA. Elsewhere (logs, CI, docker):
    a plain "k of N" line per stage every `report_every` seconds and when the stage ends.
    Nothing after progress.configure(False) (--quiet).
    """

    def __init__(
        self,
        report_every: float = REPORT_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._report_every, self._clock = report_every, clock
        self._sink: _Sink | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> StageBars:
        if active():
            self._sink = _TerminalBars()
        elif _enabled:
            self._sink = _PeriodicLines(self._report_every, self._clock)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    def __call__(self, event: Event) -> None:
        if self._sink is not None:
            with self._lock:
                self._sink.show(event)


@dataclass
class _Counted:
    started: float
    reported: float
    done: int = 0


class _PeriodicLines:
    """Plain lines through logging: stage messages are already logged, so only counts are."""

    def __init__(self, every: float, clock: Callable[[], float]) -> None:
        self._every, self._clock = every, clock
        self._stages: dict[tuple[str, str | None], _Counted] = {}

    def show(self, event: Event) -> None:
        if event.done is None or not event.total:
            return
        now = self._clock()
        key = (event.stage, event.owner)
        state = self._stages.setdefault(key, _Counted(started=now, reported=now))
        finished = event.done >= event.total
        if finished and state.done >= event.total:
            return  # the end of this stage was reported already
        state.done = event.done
        if finished or now - state.reported >= self._every:
            state.reported = now
            log.info("%s", self._line(_label(event), event.done, event.total, now - state.started))

    @staticmethod
    def _line(label: str, done: int, total: int, elapsed: float) -> str:
        line = f"{label}: {done} of {total} ({100 * done // total}%), elapsed "
        line += format_duration(elapsed)
        if done >= total:
            return line + ", done"
        if done == 0:
            return line + ", ETA unknown"
        return line + f", ETA {format_duration(elapsed / done * (total - done))}"

    def close(self) -> None:
        pass


class _TerminalBars:
    """rich bars on stderr. Log lines written meanwhile are drawn above the bars, not through
    them, by pointing the root logger's stderr handlers at rich's stderr proxy while live."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import Progress

        original_stderr = sys.stderr
        self._progress = Progress(
            *_bar_columns(),
            console=Console(file=original_stderr),
            # Proxy stdout only when it is the terminal too: a redirected stdout stays a file.
            redirect_stdout=sys.stdout.isatty(),
        )
        self._tasks: dict[tuple[str, str | None], Any] = {}
        self._uncounted: dict[Any, str] = {}  # task -> stage, for stage messages without counts
        self._progress.start()
        self._restore_stream = original_stderr
        self._moved = _point_stderr_handlers(original_stderr, sys.stderr)

    def show(self, event: Event) -> None:
        self._finish_uncounted(other_than=event.stage)
        key = (event.stage, event.owner)
        # Acquisition messages name their owner already; the label says it once.
        message = event.message.removeprefix(f"{event.owner}: ")
        description = f"{_label(event)}: {message}"[:70]
        counted = event.total is not None
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(description, total=event.total)
        task = self._tasks[key]
        if counted:
            self._uncounted.pop(task, None)
        else:
            self._uncounted[task] = event.stage
        self._progress.update(
            task,
            description=description,
            completed=event.done or 0,
            total=event.total,
            counted=counted,
        )

    def _finish_uncounted(self, other_than: str) -> None:
        """A stage that only said what it was doing is over once another stage speaks."""
        for task, stage in list(self._uncounted.items()):
            if stage != other_than:
                self._progress.update(task, total=1, completed=1)
                del self._uncounted[task]

    def close(self) -> None:
        self._finish_uncounted(other_than="")
        for handler in self._moved:
            handler.setStream(self._restore_stream)
        self._progress.stop()


def _point_stderr_handlers(old: Any, new: Any) -> list[logging.StreamHandler]:
    if new is old:
        return []
    moved = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is old
    ]
    for handler in moved:
        handler.setStream(new)
    return moved


def _bar_columns() -> list[Any]:
    """rich is imported only when bars are drawn: every CLI start imports this module."""
    from rich.progress import (
        BarColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class CountColumn(ProgressColumn):
        """ "k of N" for stages that count, blank for stages that only say what they do."""

        def render(self, task: Any) -> Text:
            if not task.fields.get("counted") or task.total is None:
                return Text("")
            return Text(f"{int(task.completed)} of {int(task.total)}", style="progress.download")

    class EtaColumn(TimeRemainingColumn):
        def render(self, task: Any) -> Text:
            if not task.fields.get("counted") or task.finished:
                return Text("")
            return Text.assemble("ETA ", super().render(task))

    return [
        TextColumn("{task.description}"),
        BarColumn(),
        CountColumn(),
        TimeElapsedColumn(),
        EtaColumn(),
    ]
