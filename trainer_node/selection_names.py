"""Selection method and parameter names in the trainer config, checked at load time.

A misspelt method used to be sent to every owner, refused there, and mentioned only deep in
report.json while the run exited 0. The names are checked against the strategies this install
registers (built-ins plus `mycroft.selection` plugins), so a plugin method must be installed
where the trainer runs too.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from mycroft.errors import ConfigError


def known_methods() -> list[str]:
    from selection.base import available  # lazily: importing the strategies loads faiss

    return available()


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"({hint}known: {', '.join(known)})"


def check_methods(methods: Sequence[str], where: str = "selection.methods") -> None:
    """ConfigError naming `selection.methods[i]` for the first name no strategy answers to."""
    known = known_methods()
    for i, method in enumerate(methods):
        if method not in known:
            raise ConfigError(
                f"{where}[{i}]: unknown method {method!r} {_did_you_mean(method, known)}"
            )


def check_rank_method(method: Any, methods: Sequence[str], full_method: str) -> None:
    """`selection.rank_by.method` must be one of the listed, rankable methods."""
    where = "selection.rank_by.method"
    if not isinstance(method, str):
        raise ConfigError(f"{where}: required, one of selection.methods")
    if method == full_method:
        raise ConfigError(f"{where}: {full_method!r} is the evaluation ceiling, not ranked")
    if method not in methods:
        listed = [m for m in methods if m != full_method]
        raise ConfigError(
            f"{where}: {method!r} is not in selection.methods {_did_you_mean(method, listed)}"
        )


def parse_params(table: Mapping[str, Any], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """`[selection.params.<method>]` tables: the method must be listed and every key must be a
    parameter the strategy declares, in its range (the owner would refuse it otherwise)."""
    from selection.base import wire_params
    from selection.params import ParamError

    params: dict[str, dict[str, float]] = {}
    for method, values in table.items():
        where = f"selection.params.{method}"
        if method not in methods:
            raise ConfigError(
                f"{where}: not a method in selection.methods {_did_you_mean(method, methods)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: must be a table")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{key}: must be a number")
        try:
            wire_params(method, values)
        except ParamError as err:
            raise ConfigError(f"{where}.{err.name}: {err.message}") from None
        params[method] = {k: float(v) for k, v in values.items()}
    return params
