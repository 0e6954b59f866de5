"""One logging configuration for every Mycroft process: today's text lines, or JSON lines.

`configure(level, fmt)` installs a single stderr handler on the root logger. The format is the
`--log-format` flag, else the `MYCROFT_LOG_FORMAT` environment variable, else "text"; processes
a command starts (the owners of `mycroft simulate`) get the variable and log the same way.

JSON is one object per line: `ts` (ISO 8601, UTC), `level`, `logger`, `message` (the same text
a text line holds) and, when known, `owner`, `trainer_id`, `request_id`, and `exception` (the
traceback text). Those fields come from context variables that the code doing the work binds:
an owner's gRPC calls each run in their own context (gRPC gives every call one), so a value
bound during a call never leaks into another; `bound()` scopes one for a block on a thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextvars import ContextVar

from mycroft.errors import ConfigError

ENV_VAR = "MYCROFT_LOG_FORMAT"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The fields JSON lines carry when known; a record's `extra=` of the same name wins.
_FIELDS: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"mycroft_log_{name}", default=None)
    for name in ("owner", "trainer_id", "request_id")
}
# Values for the whole process (an owner process serves one owner), used where no context
# variable is set: threads start with an empty context.
_process_fields: dict[str, str] = {}
_current_format = "text"


def _check_fields(fields: dict[str, str | None]) -> None:
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields {sorted(unknown)}; known: {sorted(_FIELDS)}")


def bind(**fields: str | None) -> None:
    """Set fields for the rest of the current context (a gRPC call, a thread's job)."""
    _check_fields(fields)
    for name, value in fields.items():
        _FIELDS[name].set(value)


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Set fields for the block, restoring the previous values after it."""
    _check_fields(fields)
    tokens = [(_FIELDS[name], _FIELDS[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def set_process_fields(**fields: str | None) -> None:
    """Fields for every line of this process that has no context value for them."""
    _check_fields(fields)
    for name, value in fields.items():
        if value is None:
            _process_fields.pop(name, None)
        else:
            _process_fields[name] = value


def current_fields() -> dict[str, str]:
    """The fields known here and now (context first, then the process's)."""
    known = dict(_process_fields)
    for name, var in _FIELDS.items():
        value = var.get()
        if value is not None:
            known[name] = value
    return known


class _ContextFields(logging.Filter):
    """Stamps each record with the fields of the context that logged it (filters run on the
    logging thread, before any handler could pass the record on to another thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_fields().items():
            if getattr(record, name, None) in (None, "-"):  # "-": the owner's "not known"
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "-":  # "-": the owner's marker for "not known"
                entry[name] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def resolve_format(given: str | None = None) -> str:
    """The flag's value, else the environment's, else "text"; a bad value names its source."""
    if given is not None:
        source, value = "--log-format", given
    else:
        source, value = ENV_VAR, os.environ.get(ENV_VAR, "").strip() or "text"
    if value.lower() not in FORMATS:
        raise ConfigError(f"{source}: must be one of {', '.join(FORMATS)}, got {value!r}")
    return value.lower()


def configure(level: int | str = logging.INFO, fmt: str | None = None) -> str:
    """Log to stderr at `level` in `fmt` (see `resolve_format`); returns the format used.

    Replaces the handler an earlier call installed, and leaves any other handler (a test's
    capture) alone. Child processes inherit the format through `child_environment()`."""
    global _current_format
    chosen = resolve_format(fmt)
    handler = formatted(_StderrHandler(), chosen)
    handler.set_name("mycroft")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "mycroft"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    _current_format = chosen
    return chosen


class _StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is when a line is logged, not as it was when logging was
    configured: a notebook or a test that swaps the stream (and closes the old one) gets the
    lines, where a fixed stream would raise "I/O operation on closed file"."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - a text stream, whatever sys.stderr is now
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:  # StreamHandler sets it; it is always stderr
        pass


def formatted(handler: logging.Handler, fmt: str) -> logging.Handler:
    """`handler` writing `fmt` ("text" or "json") lines with the context fields: for a log
    file of a process that is not configured by `configure` (an owner as a Ray actor)."""
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(_ContextFields())
    return handler


def current_format() -> str:
    """The format this process logs in, to pass on to processes it starts."""
    return _current_format


def configured() -> bool:
    """Whether the root logger has a handler (ours or the embedding program's)."""
    return bool(logging.getLogger().handlers)


def child_environment() -> dict[str, str]:
    """This process's environment with the log format it uses, for processes it starts."""
    return {**os.environ, ENV_VAR: _current_format}


def report_error(text: str) -> None:
    """A `mycroft: error: ...` line for the user: as today in text, one JSON record in JSON
    (so a log collector reading stderr sees only JSON)."""
    line = f"mycroft: error: {text}"
    if _current_format == "json":
        record = logging.LogRecord("mycroft", logging.ERROR, __file__, 0, line, None, None)
        _ContextFields().filter(record)
        print(JsonFormatter().format(record), file=sys.stderr)
    else:
        print(line, file=sys.stderr)
