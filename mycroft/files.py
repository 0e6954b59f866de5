"""Atomic file writes: reports, owner data files and uploaded models share one implementation."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


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
