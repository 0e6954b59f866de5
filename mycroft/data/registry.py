"""Data sources by name, built from config tables such as `{source = "csv", path = "x.csv", ...}`.

A source is one file: a module in mycroft/data/ with a `SOURCES = {"name": Factory}` table is
found here without editing anything else. Sources from elsewhere plug in without editing the
nodes: call `register_source(name, factory)`, or declare an entry point in the
`mycroft.data_sources` group whose object is the factory. A factory takes the config table's other fields as keyword arguments and returns a
`DataSource`; unknown or missing fields are reported against its signature.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mycroft.data.base import DataSource
from mycroft.data.digits import Digits
from mycroft.data.fashion_mnist import FashionMNIST
from mycroft.errors import ConfigError
from mycroft.plugins import EntryPoint, PluginGroup

SourceFactory = Callable[..., DataSource]
ENTRY_POINT_GROUP = "mycroft.data_sources"
# Fields holding file paths: relative ones are resolved against the config file's folder.
PATH_FIELDS = frozenset({"path", "test_path", "root"})
_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


def default_source() -> DataSource:
    """Fashion-MNIST when its files are present, else scikit-learn's bundled digits."""
    return FashionMNIST() if FashionMNIST.available() else Digits()


def _builtin_sources() -> dict[str, SourceFactory]:
    """The `SOURCES` tables of this folder's modules, plus "default"."""
    found: dict[str, SourceFactory] = {}
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != "registry":
            found |= getattr(importlib.import_module(f"{__package__}.{module.name}"), "SOURCES", {})
    return found | {"default": default_source}


_REGISTRY: dict[str, SourceFactory] = _builtin_sources()


def register_source(name: str, factory: SourceFactory, *, replace: bool = False) -> None:
    """Make `factory` available as `source = name` in config tables."""
    if not _NAME.match(name):
        raise ValueError(f"source name {name!r}: use lower-case letters, digits, '_', '.', '-'")
    if not replace and name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"data source {name!r} is already registered")
    _REGISTRY[name] = factory


def _add_entry_point(ep: EntryPoint) -> None:
    if ep.name not in _REGISTRY:  # built-ins and explicit registrations win
        _REGISTRY[ep.name] = ep.load()


_PLUGINS = PluginGroup(ENTRY_POINT_GROUP, _add_entry_point)


def available_sources() -> list[str]:
    """Names usable as `source = ...`: built-in, registered and entry-point sources."""
    _PLUGINS.load()
    return sorted(_REGISTRY)


def _check_fields(name: str, factory: SourceFactory, kwargs: dict[str, Any], where: str) -> None:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # not introspectable: the factory checks its own arguments
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [
        p.name for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}: unknown field for source {name!r} "
                f"(allowed: source, {', '.join(allowed) or 'nothing else'})"
            )
    for p in params.values():
        if p.name in allowed and p.default is p.empty and p.name not in kwargs:
            raise ConfigError(f"{where}.{p.name}: required by source {name!r}")


def open_source(
    spec: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None, where: str = "data"
) -> DataSource:
    """The data source a config table describes.

    `where` prefixes field names in errors (e.g. "data" -> "data.label_column: ...").
    Relative `path`/`test_path`/`root` values are taken relative to `base_dir` when given.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: must be a table with a 'source' field")
    name = spec.get("source")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.source: required, the name of a data source")
    _PLUGINS.load()
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(
            f"{where}.source: unknown data source {name!r} (known: {', '.join(sorted(_REGISTRY))})"
        )
    kwargs = {k: v for k, v in spec.items() if k != "source"}
    for key in PATH_FIELDS & kwargs.keys():
        value = kwargs[key]
        if isinstance(value, str) and base_dir is not None:
            p = Path(value).expanduser()
            kwargs[key] = str(p if p.is_absolute() else Path(base_dir) / p)
    _check_fields(name, factory, kwargs, where)
    try:
        return factory(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: bad fields for source {name!r}: {exc}") from None
