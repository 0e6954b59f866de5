"""What the notebook API (`mycroft.api`) shares: keyword settings written into a config table,
errors worded by the keyword the caller typed, arrays checked as a data source checks its file,
and progress shown only when asked for.

A keyword setting is one of two kinds: a shortcut for one config field (`budget=100` is the
owner's `[budget] default_cap`) or a whole section given as a dict (`selection={...}`). The
config is then validated by the same models as a TOML file, so a problem reads as it does on
the command line, with the field renamed to the keyword: `budget: must be >= 0, got -1`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from mycroft.errors import ConfigError

ConfigPath = tuple[str | int, ...]  # ("budget", "default_cap"), ("trainers", 0, "token")
T = TypeVar("T")


def dotted(path: ConfigPath) -> str:
    """A config path as errors name it: ("trainers", 0, "token") -> "trainers[0].token"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class Settings:
    """Keyword settings for one config: `shortcuts` map a keyword to the field it sets,
    `sections` are the tables a dict may be given for."""

    def __init__(self, shortcuts: Mapping[str, ConfigPath], sections: Sequence[str]) -> None:
        self.shortcuts = dict(shortcuts)
        self.sections = tuple(sections)

    def known(self) -> str:
        return ", ".join(sorted({*self.shortcuts, *self.sections}))

    def apply(self, raw: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
        """`raw` with `settings` written in; an unknown keyword is a ConfigError naming it.
        A setting given as None is left out: the config's default applies."""
        for key, value in settings.items():
            if value is None:
                continue
            if key in self.shortcuts:
                _set(raw, self.shortcuts[key], value)
            elif key in self.sections:
                if not isinstance(value, Mapping):
                    raise ConfigError(
                        f"{key}: must be a dict of the [{key}] table's fields, got "
                        f"{type(value).__name__}"
                    )
                raw[key] = {**raw.get(key, {}), **value}
            else:
                raise ConfigError(f"{key}: unknown setting; known: {self.known()}")
        return raw

    def validate(
        self, parse: Callable[[], T], renames: Mapping[str, ConfigPath] | None = None
    ) -> T:
        """`parse()`, its ConfigError naming the keyword that set the field when a shortcut
        (or one of `renames`: keyword -> config path) did."""
        try:
            return parse()
        except ConfigError as exc:
            names = {**self.shortcuts, **(renames or {})}
            raise ConfigError(self.reworded(str(exc), names)) from None

    @staticmethod
    def reworded(message: str, names: Mapping[str, ConfigPath]) -> str:
        # Longest path first: "budget.default_queries" is not "budget.default_cap".
        for keyword, path in sorted(names.items(), key=lambda kv: -len(dotted(kv[1]))):
            field = dotted(path)
            if message.startswith(field) and message[len(field) : len(field) + 1] in ":.[":
                return keyword + message[len(field) :]
        return message


def _set(raw: dict[str, Any], path: ConfigPath, value: Any) -> None:
    table: Any = raw
    for part, below in zip(path[:-1], path[1:], strict=True):
        if isinstance(table, list):
            table = table[part]
        else:
            table = table.setdefault(part, [] if isinstance(below, int) else {})
    table[path[-1]] = value


def labeled_arrays(
    features: Any,
    labels: Any,
    class_names: Sequence[str] | None,
    row_ids: Any,
    name: str,
    where: str = "",
) -> Any:
    """A `LabeledData` from in-memory arrays, checked as the NPZ source checks its file:
    numeric finite features of shape (N, ...), labels as class indices or names, unique ids.
    Problems are DataErrors naming the argument ("features", or "train features" with
    `where` = "train")."""
    from mycroft.data._checks import as_class_names, check_features, check_row_ids, encode_labels
    from mycroft.data.base import LabeledData
    from mycroft.errors import DataError

    def named(argument: str) -> str:
        return f"{where} {argument}" if where else argument

    x = check_features(np.asarray(features), named("features"))
    if len(x) == 0:
        raise DataError(f"{named('features')}: no rows")
    names = as_class_names(class_names, "class_names")
    y, names = encode_labels(labels, names, named("labels"))
    if len(y) != len(x):
        raise DataError(f"{named('labels')}: {len(y)} labels for {len(x)} feature rows")
    ids = (
        np.arange(len(x), dtype=np.int64)
        if row_ids is None
        else check_row_ids(np.asarray(row_ids), len(x), named("row_ids"))
    )
    return LabeledData(x, y, names, ids, name)


@contextlib.contextmanager
def progress_shown(enabled: bool) -> Iterator[Any]:
    """The trainer's progress callback: None (quiet, the default in a notebook), or the CLI's
    stage bars with the run's INFO lines, on stderr, while the block runs. Where the caller has
    configured logging (a root handler), the lines go to it instead."""
    if not enabled:
        yield None
        return
    from mycroft.progress import StageBars

    logger, root = logging.getLogger("mycroft"), logging.getLogger()
    level, handler = logger.level, None
    if not root.handlers:
        # On the root logger, where the terminal bars keep log lines above themselves. Only
        # mycroft's INFO lines pass: other loggers still stop at the root's WARNING level.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with StageBars() as bars:
            yield bars
    finally:
        logger.setLevel(level)
        if handler is not None:
            root.removeHandler(handler)
