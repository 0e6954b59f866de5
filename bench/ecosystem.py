"""What the ecosystem work bought, side by side in one run: CSV loading (pyarrow vs the standard
library reader), large D_hard sets through the chunked Select, and retry waits with jitter.

- CSV: one 10,000 x 784 numeric file, loaded by `CsvSource` with pyarrow and with the csv
  module (the fallback, and the reader before), each in a fresh process for its peak RSS.
- D_hard: Selects (method "random": the owner's work is receiving, parsing and checking the
  request) with embedded D_hard sets of 1, 16 and 50 MiB against a real owner over loopback.
- Jitter: 64 trainers lose one owner at the same moment; how many come back within one 10 ms
  window at each retry, with `[client] jitter` 0 and 0.5 (the default).

    .venv/bin/python -m bench.ecosystem [--quick] [--no-write]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._report import bench_parser, write_section

CSV_SHAPE = (10_000, 784)
DHARD_MIB = (1, 16, 50)
TRAINERS, RETRIES, WINDOW = 64, 3, 0.010
_LOAD = """
import json, resource, sys, time
from mycroft.data import tables
tables.USE_PYARROW = sys.argv[2] == "pyarrow"
if tables.USE_PYARROW:
    import pyarrow.csv  # its import is not the reader's time
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
data = tables.CsvSource(sys.argv[1], "label").load()
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
added = peak - before
print(json.dumps({"seconds": seconds, "peak_added_mib": added, "checksum": float(data.features.sum())}))
"""


def _write_csv(path: Path, rows: int, cols: int) -> None:
    rng = np.random.default_rng(0)
    values = rng.random((rows, cols)).round(4)
    labels = rng.integers(0, 10, rows)
    with path.open("w") as fh:
        fh.write(",".join([f"p{j}" for j in range(cols)] + ["label"]) + "\n")
        for row, label in zip(values, labels, strict=True):
            fh.write(",".join(f"{v:g}" for v in row) + f",{label}\n")


def csv_loading(rows: int, cols: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.csv"
        _write_csv(path, rows, cols)
        out: dict[str, Any] = {"rows": rows, "columns": cols, "mib": path.stat().st_size / 2**20}
        for reader in ("pyarrow", "stdlib"):
            run = subprocess.run(
                [sys.executable, "-c", _LOAD, str(path), reader],
                capture_output=True,
                text=True,
                check=True,
            )
            out[reader] = json.loads(run.stdout)
    if out["pyarrow"]["checksum"] != out["stdlib"]["checksum"]:
        raise SystemExit("the two CSV readers disagree")
    return out


def dhard_transfer(sizes_mib: tuple[int, ...]) -> list[dict[str, float]]:
    from bench._grpc_bench import owner_mapping, server, token_for
    from bench.load import CLASSES, EMBED_DIM, FEATURES, model_bytes
    from moe.io import model_sha256
    from mycroft import serde
    from mycroft.messages import EmbeddedHard, SelectRequestSpec
    from trainer_node.client import OwnerClient
    from trainer_node.config import ClientSettings, OwnerEndpoint

    width = EMBED_DIM + CLASSES * (EMBED_DIM + 1)  # an embedding and its gradients
    row_bytes = 4 * width + 8
    model = model_bytes()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        config = owner_mapping(tmp, ["bench"], cap=10_000, max_rows=64)
        config["limits"] = {"max_hard_rows": max(sizes_mib) * 2**20 // row_bytes + 1}
        spec = {"rows": 2_000, "features": FEATURES, "config": config}
        with server("owner", spec) as port:
            endpoint = OwnerEndpoint(
                name="o",
                address=f"127.0.0.1:{port}",
                token=token_for("bench"),
                deadline_seconds=300,
            )
            with OwnerClient(endpoint, ClientSettings(retries=0)) as client:
                client.describe()
                client.ensure_model(model)
                rng = np.random.default_rng(0)
                for mib in sizes_mib:
                    rows = mib * 2**20 // row_bytes
                    hard = EmbeddedHard(
                        rng.standard_normal((rows, EMBED_DIM), dtype=np.float32),
                        rng.standard_normal((rows, width - EMBED_DIM), dtype=np.float32),
                        rng.integers(0, CLASSES, rows).astype(np.int64),
                    )
                    ask = SelectRequestSpec(f"r{mib}", "random", 4, model_sha256(model), hard)
                    size = serde.select_request_to_proto(ask).ByteSize()
                    start = time.perf_counter()
                    subset = client.select(ask)
                    seconds = time.perf_counter() - start
                    results.append(
                        {
                            "request_mib": size / 2**20,
                            "hard_rows": rows,
                            "seconds": seconds,
                            "mib_per_second": size / 2**20 / seconds,
                            "rows_back": len(subset),
                        }
                    )
    return results


def retry_spread(jitter: float) -> list[int]:
    """Per retry, the most trainers whose waits fall in one WINDOW."""
    from trainer_node.client import OwnerClient
    from trainer_node.config import ClientSettings, OwnerEndpoint

    settings = ClientSettings(retries=RETRIES, backoff=0.5, jitter=jitter)
    endpoint = OwnerEndpoint(name="o", address="127.0.0.1:1")
    clients = [OwnerClient(endpoint, settings) for _ in range(TRAINERS)]
    try:
        peaks = []
        for attempt in range(RETRIES):
            waits = np.array([c._backoff(attempt) for c in clients])
            peaks.append(int(np.bincount((waits // WINDOW).astype(int)).max()))
        return peaks
    finally:
        for c in clients:
            c.close()


def render(result: dict[str, Any]) -> str:
    csv, lines = result["csv"], []
    arrow, plain = csv["pyarrow"], csv["stdlib"]
    lines += [
        "## Ecosystem: CSV loading, large D_hard, retry jitter",
        "",
        "Written by `make bench-ecosystem` (`bench/ecosystem.py`), one run on this machine.",
        "",
        f"**CSV loading**, {csv['rows']:,} × {csv['columns']} numeric ({csv['mib']:.0f} MiB), "
        "each reader in a fresh process:",
        "",
        "| reader | seconds | peak memory added by the load, MiB |",
        "|---|---|---|",
        f"| pyarrow (`mycroft[parquet]` installed) | {arrow['seconds']:.2f} | "
        f"{arrow['peak_added_mib']:.0f} |",
        f"| csv module (fallback; the reader before) | {plain['seconds']:.2f} | "
        f"{plain['peak_added_mib']:.0f} |",
        f"| ratio | {plain['seconds'] / arrow['seconds']:.1f}× faster | "
        f"{plain['peak_added_mib'] / max(arrow['peak_added_mib'], 1):.2f}× less |",
        "",
        "Both readers give the same features to the last bit (checked in the run).",
        "",
        "**D_hard through the chunked Select** (embedded, d = 32, 10 classes; method `random`, "
        "so the time is sending, parsing and checking the request, and the rows back):",
        "",
        "| request, MiB | D_hard rows | seconds | MiB/s |",
        "|---|---|---|---|",
    ]
    for r in result["dhard"]:
        lines.append(
            f"| {r['request_mib']:.1f} | {r['hard_rows']:,} | {r['seconds']:.2f} | "
            f"{r['mib_per_second']:.0f} |"
        )
    jitter = result["jitter"]
    lines += [
        "",
        f"**Retry waits**: {TRAINERS} trainers lose one owner at once (backoff 0.5 s, doubling); "
        f"the most that retry within one {WINDOW * 1000:.0f} ms window:",
        "",
        "| retry | jitter 0 | jitter 0.5 (default) |",
        "|---|---|---|",
    ]
    for i, (no, yes) in enumerate(zip(jitter["0"], jitter["0.5"], strict=True)):
        lines.append(f"| {i + 1} | {no} | {yes} |")
    return "\n".join(lines)


def main() -> None:
    args = bench_parser(__doc__, quick="a 1,000-row CSV and 1 and 4 MiB D_hard sets").parse_args()
    rows = 1_000 if args.quick else CSV_SHAPE[0]
    result = {
        "csv": csv_loading(rows, CSV_SHAPE[1]),
        "dhard": dhard_transfer((1, 4) if args.quick else DHARD_MIB),
        "jitter": {"0": retry_spread(0.0), "0.5": retry_spread(0.5)},
    }
    text = render(result)
    print(text)
    if not args.no_write and not args.quick:
        write_section("ecosystem", text, result)


if __name__ == "__main__":
    main()
