"""Files every part shares: atomic writes (reports, owner data, models) and reading TOML."""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mycroft.errors import ConfigError

MAX_TOML_BYTES = 1024 * 1024  # configs and scenarios are small; a bigger file is a mistake


def toml_ready(value: Any) -> Any:
    """A config built in memory as values `tomli_w` writes: paths as text, None ("not set":
    TOML has no null) left out."""
    if isinstance(value, dict):
        return {k: toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [toml_ready(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed TOML file; any problem reading or parsing it is one ConfigError naming the
    file (never a traceback: deep nesting, non-UTF-8, over-long integers, directories)."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_TOML_BYTES + 1)
        if len(data) > MAX_TOML_BYTES:
            raise ConfigError(f"{p}: larger than {MAX_TOML_BYTES // 1024} KiB; not a config file")
        return tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ConfigError(f"{p}: not valid TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    except ValueError as exc:  # an integer too long to convert
        raise ConfigError(f"{p}: not valid TOML: {str(exc).split(';')[0]}") from None


def write_atomic(
    path: str | os.PathLike[str],
    write: Callable[[IO], object],
    mode: int | None = None,
    binary: bool = False,
) -> Path:
    """Call `write` on a temporary file in the same directory, fsync, then rename over `path`,
    so readers never see half a file. Owner-only (mkstemp) unless `mode` is given; `write`
    gets a text file (UTF-8), or a binary one with `binary=True`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
