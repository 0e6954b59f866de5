"""Typed reads from one TOML table, with errors that name the field (`owners[1].address`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from mycroft.errors import ConfigError


class Section:
    """Reads typed values out of one TOML table and reports unknown keys."""

    def __init__(self, table: Any, name: str, base_dir: Path):
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: must be a table")
        self.table, self.name, self.base_dir = table, name, base_dir
        self.used: set[str] = set()

    def _field(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        # bool is an int in Python; a boolean where a number is wanted is a typo
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ConfigError(f"{self._field(key)}: expected {_kind_name(kind)}, got a boolean")
        if float in (kind if isinstance(kind, tuple) else (kind,)) and isinstance(value, int):
            if abs(value) > 2**1023:  # float() would raise OverflowError
                raise ConfigError(f"{self._field(key)}: too large for a number")
            value = float(value)
        if not isinstance(value, kind):
            raise ConfigError(
                f"{self._field(key)}: expected {_kind_name(kind)}, got {type(value).__name__}"
            )
        return value

    def number(self, key: str, default: float, lo: float | None = None, hi: float | None = None):
        value = self.get(key, float, default)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{self._field(key)}: must be a finite number, got {value}")
        if lo is not None and value < lo or hi is not None and value > hi:
            raise ConfigError(f"{self._field(key)}: {value} is outside [{lo}, {hi}]")
        return value

    def integer(self, key: str, default: int | None, lo: int | None = None) -> int | None:
        value = self.get(key, int, default)
        if value is not None and lo is not None and value < lo:
            raise ConfigError(f"{self._field(key)}: must be >= {lo}, got {value}")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in options:
            raise ConfigError(f"{self._field(key)}: {value!r} is not one of {', '.join(options)}")
        return value

    def path(self, key: str) -> Path | None:
        value = self.get(key, str)
        if value is None:
            return None
        if not value:
            raise ConfigError(f"{self._field(key)}: empty path")
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def str_list(self, key: str, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
        value = self.get(key, list, None)
        if value is None:
            return default
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self._field(key)}: must be a non-empty list of strings")
        if len(set(value)) != len(value):
            raise ConfigError(f"{self._field(key)}: contains duplicates")
        return tuple(value)

    def rest(self, known: set[str]) -> dict[str, Any]:
        """Keys not read yet, for pass-through tables; the caller validates them."""
        return {k: v for k, v in self.table.items() if k not in known}

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(f"{self._field(unknown[0])}: unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", list: "a list"}
    names |= {bool: "a boolean", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
