"""Shared by the benches: write results JSON and replace one marked section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"
# Outside the tree, so it never shows up as an untracked file.
LOCK = Path(tempfile.gettempdir()) / "mycroft-benchmarks.lock"
_HEADER = "# Benchmarks\n\nEach section is written by its bench script (`make bench-<name>`).\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_section(name: str, markdown: str, json_obj: dict[str, Any]) -> None:
    """Write bench/results/{name}.json and put `markdown` between the `name` markers.

    Other sections are left byte-for-byte alone; a missing section is appended. A lock file
    serialises benches that finish at the same time.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    _atomic_write(RESULTS / f"{name}.json", json.dumps(json_obj, indent=2) + "\n")
    BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = BENCHMARKS.read_text() if BENCHMARKS.exists() else _HEADER
        i, j = text.find(start), text.find(end)
        if i >= 0 and j > i:
            text = text[:i] + block + text[j + len(end) :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        _atomic_write(BENCHMARKS, text)


def bench_parser(doc: str, *, quick: str) -> argparse.ArgumentParser:
    """The command line the gRPC benches share: the first line of their docstring as the
    description, `--quick` (a smoke run, described by `quick`) and `--no-write`."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    return ap
