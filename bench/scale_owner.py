"""A large owner's first answer, stage by stage: model upload to the last row received.

For each size (1e5 and 1e6 Fashion-MNIST-sized rows: 28x28x1 float32, 10 classes) a real owner
starts in its own process (`build_server`, the product's gRPC path, `[compute] device = "auto"`,
so a CUDA machine runs it unchanged on its GPU) over the real Fashion-MNIST rows tiled with
small noise when /usr/share/datasets/fashion-mnist holds them, else over synthetic images.
The client uploads a fresh model of the product's Fashion config (trainer defaults: topk gate,
4 experts, embed_dim 64) and asks for one Select; the owner embeds its rows in the background
after the upload, so the first Select waits for that pass. Then a second method on the same
model, and the first method with a small budget.

Stages come from the owner's own records (its embedding pass and each Select's step timings,
read from its log records) and the client's clock: upload, embedding (rows/s), cache write,
index (FAISS build), validate, selection, ledger, stream, total.

    .venv/bin/python -m bench.scale_owner [--quick] [--no-write]
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench._grpc_bench import ROOT, token_for
from bench._report import bench_parser

TRAINER = "bench"
CLASSES = 10
SHAPE = (1, 28, 28)
HARD_ROWS = 500
SMALL_BUDGET = 40
# The trainer's defaults (trainer_node/config.py ModelSettings) on Fashion-sized images.
MODEL = {"gate": "topk", "num_experts": 4, "top_k": 2, "embed_dim": 64, "stem": "conv"}


# ------------------------------------------------------------------ data


def owner_rows(n: int, seed: int = 0):
    """`n` Fashion-sized rows: real Fashion-MNIST tiled with noise when present, else
    synthetic class patterns. Filled in place in blocks: one (n, 1, 28, 28) array, no copies."""
    from mycroft.data.base import LabeledData
    from mycroft.data.fashion_mnist import CLASS_NAMES, FashionMNIST

    rng = np.random.default_rng(seed)
    if FashionMNIST.available():
        base = FashionMNIST().load("train")
        source, source_labels, names = base.features, base.labels, CLASS_NAMES
    else:
        source, source_labels = _synthetic_images(6000, rng)
        names = tuple(f"c{i}" for i in range(CLASSES))
    features = np.empty((n, *SHAPE), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    block = 65_536
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        pick = rng.integers(0, len(source), hi - lo)
        features[lo:hi] = source[pick]
        features[lo:hi] += rng.normal(0, 0.02, (hi - lo, *SHAPE)).astype(np.float32)
        labels[lo:hi] = source_labels[pick]
    kind = "fashion-mnist" if FashionMNIST.available() else "synthetic"
    return LabeledData(
        features=features,
        labels=labels,
        class_names=names,
        row_ids=np.arange(n, dtype=np.int64),
        name=f"{kind}-{n}",
    )


def _synthetic_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, CLASSES, n).astype(np.int64)
    patterns = rng.random((CLASSES, *SHAPE), dtype=np.float32)
    x = rng.random((n, *SHAPE), dtype=np.float32) * 0.5 + patterns[labels] * 0.5
    return x, labels


def fresh_model(data) -> bytes:
    """A fresh model of the product's Fashion config, normalised like the trainer's."""
    from moe.config import ModelConfig
    from moe.io import model_to_bytes
    from moe.model import build_model

    sample = data.features[:10_000]
    config = ModelConfig(
        input_shape=SHAPE,
        num_classes=CLASSES,
        class_names=data.class_names,
        norm_mean=[float(sample.mean())],
        norm_std=[float(sample.std())],
        **MODEL,
    )
    return model_to_bytes(build_model(config, seed=int(time.time())))  # fresh: never cached


# ------------------------------------------------------------------ the owner process


def owner_config(state_dir: str, budget: int) -> dict[str, Any]:
    cap = 10 * budget + 10 * SMALL_BUDGET
    return {
        "owner": {
            "name": "scale-owner",
            "listen": "127.0.0.1:0",
            "state_dir": state_dir,
            "disk_quota_mib": 8192,
            "disk_quota_per_trainer_mib": 8192,
        },
        "data": {"source": "npz", "path": "unused.npz"},  # rows are passed to build_server
        "budget": {"default_cap": cap, "max_rows_per_request": budget, "default_queries": 100},
        "limits": {"max_budget": budget},
        "trainers": [{"id": TRAINER, "token": token_for(TRAINER)}],
        "selection": {"cache_mib": 8192},
        "compute": {"device": "auto"},
    }


class _Records(logging.Handler):
    """The owner's structured log records: embedding passes and Select timings."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.passes: list[dict] = []
        self.selects: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "embedding_pass"):
            self.passes.append(record.embedding_pass)
        if hasattr(record, "select_timings"):
            self.selects.append(record.select_timings)


def _owner_child(spec: dict[str, Any]) -> None:
    """Runs the owner; answers "stats" on stdin with its records; stops at EOF."""
    from owner_node.config import parse_config
    from owner_node.server import build_server

    logging.basicConfig(level=logging.WARNING)
    records = _Records()
    for name in ("owner_node.models", "owner_node.service"):
        logging.getLogger(name).addHandler(records)
        logging.getLogger(name).setLevel(logging.INFO)
    t = time.perf_counter()
    data = owner_rows(spec["rows"])
    config = parse_config(spec["config"], base_dir=Path(spec["config"]["owner"]["state_dir"]))
    srv, port = build_server(config, data)
    srv.start()
    startup = time.perf_counter() - t
    print(f"PORT {port} {data.name} {startup:.2f}", flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps({"passes": records.passes, "selects": records.selects}), flush=True)
    srv.stop(grace=2.0).wait(30)


# ------------------------------------------------------------------ the client


def _client(port: int):
    from trainer_node.client import OwnerClient
    from trainer_node.config import OwnerEndpoint

    endpoint = OwnerEndpoint(
        name="scale", address=f"127.0.0.1:{port}", token=token_for(TRAINER), deadline_seconds=3600
    )
    return OwnerClient(endpoint)


def _hard_set(model_bytes: bytes, n: int):
    """D_hard as the privacy mode sends it: embeddings and last-layer gradients."""
    from moe.inference import embed_numpy
    from moe.io import model_from_bytes
    from mycroft.messages import EmbeddedHard
    from selection.last_layer_grads import last_layer_gradients
    from selection.types import Head

    model = model_from_bytes(model_bytes)
    rows = owner_rows(HARD_ROWS, seed=n + 1)
    emb = embed_numpy(model, rows.features, device="auto")
    w, b = model.head_weights()
    grads = last_layer_gradients(emb, rows.labels, Head(w, b))
    return EmbeddedHard(embeddings=emb, gradients=grads, labels=rows.labels)


def _select(client, sha: str, hard, method: str, budget: int) -> dict[str, float]:
    from mycroft.messages import SelectRequestSpec

    spec = SelectRequestSpec(uuid.uuid4().hex, method, budget, sha, hard)
    t = time.perf_counter()
    subset = client.select(spec)
    return {"rows": len(subset), "client_seconds": time.perf_counter() - t}


def _stages(owner: dict[str, float], client: dict[str, float]) -> dict[str, float]:
    """One Select's stages from the owner's step timings and the client's clock."""
    strategy = owner.get("strategy", 0.0)
    steps = {k[len("strategy.") :]: v for k, v in owner.items() if k.startswith("strategy.")}
    computed = owner.get("owner_embeddings", 0.0) + strategy + owner.get("charge", 0.0)
    return {
        "wait_for_embeddings": owner.get("owner_embeddings", 0.0),
        "index": steps.get("index", 0.0) + steps.get("neighbours", 0.0),
        "validate": steps.get("validate", 0.0),
        "selection": strategy,
        "ledger": owner.get("charge", 0.0),
        # request decoding, queueing and the stream itself: the client's time less the owner's
        "stream_and_rpc": max(0.0, client["client_seconds"] - computed),
        "select_total": client["client_seconds"],
        "rows": client["rows"],
        "steps": steps,
    }


def measure_size(n: int, methods: tuple[str, ...] = ("gradient", "feature")) -> dict[str, Any]:
    budget = max(SMALL_BUDGET, n // 100)
    with tempfile.TemporaryDirectory(prefix="scale-owner-") as state:
        spec = {"rows": n, "config": owner_config(state, budget)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.scale_owner", "--owner-child", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            line = proc.stdout.readline().split()
            if not line or line[0] != "PORT":
                raise RuntimeError(f"owner failed to start (exit {proc.wait(60)})")
            port, data_name, startup = int(line[1]), line[2], float(line[3])
            probe = owner_rows(10_000, seed=7)  # the client's view: model config, D_hard
            model_bytes = fresh_model(probe)
            hard = _hard_set(model_bytes, n)
            with _client(port) as client:
                t0 = time.perf_counter()
                status, _ = client.ensure_model(model_bytes)
                upload = time.perf_counter() - t0
                first = _select(client, status.sha256, hard, methods[0], budget)
                total = time.perf_counter() - t0
                later = [
                    (m, budget, _select(client, status.sha256, hard, m, budget))
                    for m in methods[1:]
                ]
                later.append(
                    (
                        methods[0],
                        SMALL_BUDGET,
                        _select(client, status.sha256, hard, methods[0], SMALL_BUDGET),
                    )
                )
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            stats = json.loads(proc.stdout.readline())
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=60)
    embed = stats["passes"][0] if stats["passes"] else {}
    selects = stats["selects"]
    calls = [(methods[0], budget, first), *later]
    return {
        "rows": n,
        "data": data_name,
        "owner_startup_seconds": startup,
        "device": embed.get("device"),
        "threads": embed.get("threads"),
        "embed_batch_size": embed.get("batch_size"),
        "upload_seconds": upload,
        "embedding_seconds": embed.get("embed_seconds"),
        "embedding_rows_per_second": embed.get("rows_per_second"),
        "cache_write_seconds": embed.get("cache_write_seconds"),
        "first_answer": {"method": methods[0], "budget": budget, **_stages(selects[0], first)},
        "first_answer_total_seconds": total,
        "later": [
            {"method": m, "budget": b, **_stages(owner, client)}
            for (m, b, client), owner in zip(calls[1:], selects[1:], strict=True)
        ],
    }


def measure_owner_first_answer(
    sizes: tuple[int, ...] = (100_000, 1_000_000), quick: bool = False
) -> dict[str, Any]:
    """Per size: the stages of a fresh model's first answer, and of later Selects on it."""
    sizes = (100_000,) if quick else sizes
    return {"sizes": [measure_size(n) for n in sizes], "quick": quick}


def table(results: dict[str, Any]) -> str:
    head = (
        "| rows | device | upload | embedding (rows/s) | cache write | index | validate | "
        "selection | ledger | stream+rpc | **first answer** |\n|---|---|---|---|---|---|---|---|"
        "---|---|---|"
    )
    lines = [head]
    for r in results["sizes"]:
        f = r["first_answer"]
        lines.append(
            f"| {r['rows']:,} | {r['device']} ({r['threads']} thr) | {r['upload_seconds']:.2f} s | "
            f"{r['embedding_seconds']:.1f} s ({r['embedding_rows_per_second']:,.0f}) | "
            f"{r['cache_write_seconds']:.2f} s | {f['index']:.2f} s | {f['validate']:.3f} s | "
            f"{f['selection']:.2f} s | {f['ledger']:.3f} s | {f['stream_and_rpc']:.2f} s | "
            f"**{r['first_answer_total_seconds']:.1f} s** |"
        )
    later = [
        "",
        "| rows | later Select | budget | index | validate | selection | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"]:
        for s in r["later"]:
            later.append(
                f"| {r['rows']:,} | {s['method']} | {s['budget']} | {s['index']:.2f} s | "
                f"{s['validate']:.3f} s | {s['selection']:.2f} s | {s['select_total']:.2f} s |"
            )
    return "\n".join(lines + later)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--owner-child":
        _owner_child(json.loads(sys.argv[2]))
        return
    ap = bench_parser(__doc__ or "", quick="1e5 rows only (~2 min)")  # --no-write: always
    args = ap.parse_args()
    print(table(measure_owner_first_answer(quick=args.quick)))  # bench.scale writes the doc


if __name__ == "__main__":
    main()
