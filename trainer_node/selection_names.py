"""Selection method and parameter names in the trainer config, checked at load time.

A misspelt method used to be sent to every owner, refused there, and mentioned only deep in
report.json while the run exited 0. The names are checked against the strategies this install
registers (built-ins plus `mycroft.selection` plugins), so a plugin method must be installed
where the trainer runs too. Problems are `FieldProblem`s located relative to the field being
validated, so the config layer prefixes them (`selection.methods[1]: ...`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from mycroft.config_base import FieldProblem


def known_methods() -> list[str]:
    from selection.base import available  # lazily: importing the strategies loads faiss

    return available()


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"({hint}known: {', '.join(known)})"


def check_methods(methods: Sequence[str]) -> None:
    """FieldProblem at index i of the methods list for the first name no strategy answers to."""
    known = known_methods()
    for i, method in enumerate(methods):
        if method not in known:
            problem = f"unknown method {method!r} {_did_you_mean(method, known)}"
            raise FieldProblem((i,), problem)


def check_rank_method(method: str, methods: Sequence[str], full_method: str) -> None:
    """`rank_by.method` (relative to the selection section) must be a listed, rankable method."""
    where = ("rank_by", "method")
    if method == full_method:
        raise FieldProblem(where, f"{full_method!r} is the evaluation ceiling, not ranked")
    if method not in methods:
        listed = [m for m in methods if m != full_method]
        problem = f"{method!r} is not in selection.methods {_did_you_mean(method, listed)}"
        raise FieldProblem(where, problem)


def parse_params(table: Mapping[str, Any], methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """`[selection.params.<method>]` tables: the method must be listed and every key must be a
    parameter the strategy declares, in its range (the owner would refuse it otherwise).
    Problems are located relative to the params table (`<method>.<key>`)."""
    from selection.base import wire_params
    from selection.params import ParamError

    params: dict[str, dict[str, float]] = {}
    for method, values in table.items():
        if method not in methods:
            problem = f"not a method in selection.methods {_did_you_mean(method, methods)}"
            raise FieldProblem((method,), problem)
        if not isinstance(values, dict):
            raise FieldProblem((method,), "must be a table")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FieldProblem((method, key), "must be a number")
        try:
            wire_params(method, values)
        except ParamError as err:
            raise FieldProblem((method, err.name), err.message) from None
        params[method] = {k: float(v) for k, v in values.items()}
    return params


def check_modes(methods: Sequence[str], mode_for: Any) -> None:
    """A method that reads raw D_hard rows (a strategy with `needs_features`, e.g. binning)
    must be sent them: every such request would otherwise be refused by every owner and the
    method drop out of the ranking. Sending raw rows shows owners the trainer's failures, so it
    is the trainer's explicit choice, never a silent default."""
    from selection.base import strategy_class

    for method in methods:
        if method in known_methods() and strategy_class(method).needs_features:
            if mode_for(method) != "raw":
                raise FieldProblem(
                    "mode_by_method",
                    f"{method} reads raw D_hard rows, which mode {mode_for(method)!r} does not "
                    f'send; set mode_by_method = {{ {method} = "raw" }} (owners then see your '
                    f"failure examples) or drop {method}",
                )
