"""Atomic file writes for the trainer's reports (JSON and HTML share one implementation)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def write_atomic(
    path: str | os.PathLike[str], write: Callable[[TextIO], object], mode: int | None = None
) -> Path:
    """Call `write` on a temporary file in the same directory, fsync, then rename over `path`,
    so readers never see half a file. Owner-only (mkstemp) unless `mode` is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
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
