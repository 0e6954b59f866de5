"""Strategy parameters declared with types and bounds (scikit-learn `_parameter_constraints`
style), checked before any computation.

`param_constraints = {"n_bins": Interval(int, 1, 1000)}`; `{}`: no parameters; `None` (the
default): undeclared, so no parameters over the wire and unchecked keyword arguments from Python.
Wire values (a `map<string, double>`) are numbers: ints and booleans are coerced from doubles, and
`Options` (strings) are settable from Python only. `local_params` (owner objects such as feature
matching's `cache`) are never wire parameters and are not checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from selection.base import Strategy

_BRACKETS = {"both": "[]", "left": "[)", "right": "(]", "neither": "()"}


class ParamError(ValueError):
    """A refused strategy parameter: `.name` is the parameter, `.message` says why."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class Constraint:
    """What one parameter may be. `coerce` returns the value as the constructor wants it, or
    raises ValueError with a message naming the value and the allowed range."""

    def coerce(self, value: object, *, wire: bool) -> object:
        raise NotImplementedError


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _fmt(x: object) -> str:
    """Integral numbers without a trailing .0 (-1, not -1.0), anything else as repr."""
    if not _is_number(x):
        return repr(x)
    if isinstance(x, Integral):
        return str(int(x))
    f = float(x)
    return str(int(f)) if f.is_integer() and abs(f) < 1e16 else repr(f)


class Interval(Constraint):
    """An int or float in [low, high] (None: unbounded on that side); `closed` says which ends
    belong to it. Int intervals refuse non-integral values; both refuse NaN and infinities."""

    def __init__(
        self,
        kind: type[int] | type[float],
        low: float | None,
        high: float | None,
        closed: Literal["both", "left", "right", "neither"] = "both",
        *,
        allow_none: bool = False,
    ) -> None:
        inverted = low is not None and high is not None and low > high
        if kind not in (int, float) or closed not in _BRACKETS or inverted:
            raise ValueError(f"bad Interval({kind}, {low}, {high}, closed={closed!r})")
        self.kind, self.low, self.high, self.closed = kind, low, high, closed
        self.allow_none = allow_none

    def __str__(self) -> str:
        left, right = _BRACKETS[self.closed]
        lo = "(-inf" if self.low is None else left + _fmt(self.low)
        hi = "inf)" if self.high is None else _fmt(self.high) + right
        what = "an integer" if self.kind is int else "a number"
        return f"{what} in {lo}, {hi}" + (" or None" if self.allow_none else "")

    def _inside(self, x: float) -> bool:
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        ok_low = self.low is None or (x >= self.low if left else x > self.low)
        ok_high = self.high is None or (x <= self.high if right else x < self.high)
        return ok_low and ok_high

    def coerce(self, value: object, *, wire: bool) -> object:
        if value is None and self.allow_none:
            return None
        x = self._convert(value)
        if x is None or not self._inside(x):
            raise ValueError(f"must be {self}, got {_fmt(value)}")
        return x

    def _convert(self, value: object) -> int | float | None:
        """The value as `kind`, or None when it is not a (finite, for int integral) number."""
        if not _is_number(value):
            return None
        if self.kind is int and isinstance(value, Integral):
            return int(value)
        try:
            f = float(value)
        except OverflowError:  # an int beyond float range
            return None
        if not math.isfinite(f) or (self.kind is int and not f.is_integer()):
            return None
        return self.kind(f)


class Options(Constraint):
    """One of a few allowed values (e.g. strings); not settable over the wire, where values
    are numbers."""

    def __init__(self, values: tuple[object, ...]) -> None:
        self.values = tuple(values)

    def __str__(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))

    def coerce(self, value: object, *, wire: bool) -> object:
        why = ": settable from Python only, not over the wire (wire values are numbers)"
        if wire or not any(type(value) is type(v) and value == v for v in self.values):
            raise ValueError(f"must be {self}, got {_fmt(value)}" + (why if wire else ""))
        return value


class Boolean(Constraint):
    """True or False; over the wire 1 or 0."""

    def __str__(self) -> str:
        return "a boolean (0 or 1)"

    def coerce(self, value: object, *, wire: bool) -> object:
        if isinstance(value, bool) or (_is_number(value) and value in (0, 1)):
            return bool(value)
        raise ValueError(f"must be {self}, got {_fmt(value)}")


def check_params(
    strategy_cls: type[Strategy], params: Mapping[str, object], *, wire: bool
) -> dict[str, object]:
    """`params` checked against `strategy_cls.param_constraints` and coerced (wire doubles to
    int/bool). `wire=True`: every value must be a number, and a class that declares nothing
    accepts none. Raises ParamError naming the first refused parameter."""
    name = getattr(strategy_cls, "name", strategy_cls.__name__)
    declared = getattr(strategy_cls, "param_constraints", None)
    local = getattr(strategy_cls, "local_params", frozenset())
    out: dict[str, object] = {}
    for key, value in params.items():
        if not wire and (declared is None or key in local):
            out[key] = value  # undeclared plugins and owner-side objects: unchecked, as before
        elif declared is None:
            raise ParamError(
                key,
                f"{name!r} accepts no parameters over the wire: it declares no "
                "`param_constraints` (declare them to accept parameters)",
            )
        elif not declared:
            raise ParamError(key, f"{name!r} takes no parameters")
        elif key not in declared:
            raise ParamError(key, f"not a parameter of {name!r}; known: {', '.join(declared)}")
        elif wire and not _is_number(value):
            raise ParamError(key, f"wire values must be numbers, got {_fmt(value)}")
        else:
            try:
                out[key] = declared[key].coerce(value, wire=wire)
            except ValueError as e:
                raise ParamError(key, str(e)) from None
    return out
