"""Many trainers against one owner: requests per second, latency, errors by status code.

One owner process (20,000 synthetic float32 rows of 784 features, a tiny uploaded MoE model)
serves 16, 32 and 64 concurrent trainers, each a distinct identity with its own bearer token
from the owner's config and its own channel. Trainers run as threads in two client processes
(spawned, so clients do not share one GIL) and loop for a fixed duration: Select with a fresh
request id, budget 32, an embeddings-only D_hard of 50 rows, method "feature" or "random"
alternating. A refused call (UNAVAILABLE, RESOURCE_EXHAUSTED) is counted and followed by the
trainer client's first back-off (0.5 s) before the next call, as `OwnerClient` would do.

Each level runs twice: with the owner's default [owner] settings (read from
`owner_node.config.OwnerSection`), and with the previous, small defaults (16 handler threads,
queue 6) to show the back-pressure an operator gets by choosing a short queue.

Then the hostile mix (bench/_hostile.py, _hostile_run.py, _hostile_report.py): 32 honest
trainers as above against one owner, quiet and then with hostile clients at the same time,
the owner's memory, CPU and state directory sampled throughout; written to
bench/results/load_hostile.json and its own section of docs/BENCHMARKS.md.

    .venv/bin/python -m bench.load [--quick] [--hostile-only] [--seconds 20]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench import _hostile_report, _hostile_run
from bench._grpc_bench import Stats, owner_mapping, server, token_for
from bench._report import RESULTS, bench_parser, write_section
from mycroft import serde, wire
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc

ROWS, FEATURES, CLASSES, EMBED_DIM = 20_000, 784, 10, 32
BUDGET, HARD_ROWS, BACKOFF = 32, 50, 0.5
CLIENT_PROCS = 2
REFUSED = {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}


@dataclass(frozen=True)
class OwnerSettings:
    label: str
    max_workers: int
    selection_workers: int
    selection_queue: int

    @property
    def max_concurrent_rpcs(self) -> int:
        return self.max_workers * 4  # what owner_node.server.build_server sets

    def table(self) -> dict[str, int]:
        return {
            "max_workers": self.max_workers,
            "selection_workers": self.selection_workers,
            "selection_queue": self.selection_queue,
        }


@dataclass(frozen=True)
class Call:
    start: float  # seconds since the common start
    latency: float
    code: str  # "OK" or the gRPC status name
    method: str
    trainer: str
    detail: str = ""  # the status message of a failed call


def settings_for(trainers: int) -> list[OwnerSettings]:
    from owner_node.config import OwnerSection

    d = OwnerSection(name="bench")  # the real defaults, so the table follows the code
    default = OwnerSettings("default", d.max_workers, d.selection_workers, d.selection_queue)
    # Every selection, queued or running, holds a gRPC handler thread while it waits, and the
    # config keeps 2 more threads free for Describe/health: max_workers >= workers + queue + 2.
    small = OwnerSettings("small queue", 16, 2, 6)  # the defaults before this measurement
    return [default, small]


def model_bytes(seed: int = 0) -> bytes:
    """A tiny untrained MoE for rows of (784,): enough to embed rows for feature matching."""
    from moe.config import ModelConfig
    from moe.io import model_to_bytes
    from moe.model import build_model

    cfg = ModelConfig(
        input_shape=(FEATURES,),
        num_classes=CLASSES,
        class_names=tuple(f"c{i}" for i in range(CLASSES)),
        stem="mlp",
        stem_dim=32,
        embed_dim=EMBED_DIM,
        num_experts=2,
        top_k=1,
        expert_hidden=32,
    )
    return model_to_bytes(build_model(cfg, seed=seed))


def _meta(trainer: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token_for(trainer)}"),)


def _request(method: str, sha: str, seed: int, hard: pb.EmbeddedHardSet) -> pb.SelectRequest:
    return pb.SelectRequest(
        request_id=f"l-{uuid.uuid4().hex}",
        method=method,
        budget=BUDGET,
        model_sha256=sha if method == "feature" else "",
        embedded=hard,
        seed=seed,
    )


def hard_set(seed: int) -> pb.EmbeddedHardSet:
    rng = np.random.default_rng(seed)
    return pb.EmbeddedHardSet(
        embeddings=wire.encode(rng.standard_normal((HARD_ROWS, EMBED_DIM), dtype=np.float32)),
        labels=wire.encode(rng.integers(0, CLASSES, HARD_ROWS).astype(np.int64)),
    )


def select(stub: pb_grpc.DataOwnerStub, trainer: str, request: pb.SelectRequest) -> int:
    rows = 0
    chunks = serde.select_request_chunks(request.SerializeToString())
    for msg in stub.Select(chunks, metadata=_meta(trainer), timeout=30):
        if msg.WhichOneof("payload") == "summary":
            rows = msg.summary.rows_sent
    return rows


def upload(port: int, trainer: str, data: bytes, cancelled: list[float] | None = None) -> str:
    """Upload `data` as `trainer` and warm it, each call made again after the client's back-off
    when the owner refuses it (its upload and queue places are bounded) or cancels it: its idle
    watchdog also runs while the owner verifies a model after the last chunk, and the first
    parse imports torch (~10 s here). `cancelled` gets how long each cancelled call lasted."""
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.DataOwnerStub(ch)
        chunks = [
            pb.ModelChunk(sha256=sha, total_size=len(data), data=data[i : i + (1 << 20)])
            if i == 0
            else pb.ModelChunk(data=data[i : i + (1 << 20)])
            for i in range(0, len(data), 1 << 20)
        ]
        _retrying(
            lambda: stub.UploadModel(iter(chunks), metadata=_meta(trainer), timeout=60), cancelled
        )
        # Warm: the owner's embeddings and feature index are built once per model.
        for method in ("feature", "random"):
            _retrying(lambda m=method: select(stub, trainer, _request(m, sha, 0, hard_set(0))))
    return sha


def _retrying(call, cancelled: list[float] | None = None, attempts: int = 120):
    retry = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    for attempt in range(attempts):
        start = time.time()
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() not in retry or attempt == attempts - 1:
                raise
            if e.code() == grpc.StatusCode.CANCELLED and cancelled is not None:
                cancelled.append(round(time.time() - start, 2))
            time.sleep(BACKOFF)


def trainer_loop(port: int, trainer: str, sha: str, t0: float, seconds: float, out: list) -> None:
    """One trainer: its own channel, Select until the window closes (bounded by time)."""
    hard = hard_set(hash(trainer) % 1000)
    first = int(trainer[1:]) % 2  # half the trainers start with "random"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.DataOwnerStub(ch)
        grpc.channel_ready_future(ch).result(timeout=30)
        time.sleep(max(0.0, t0 - time.time()))
        i = 0
        while time.time() < t0 + seconds:
            method = ("feature", "random")[(i + first) % 2]
            request = _request(method, sha, i, hard)
            start = time.perf_counter()
            code, detail = "OK", ""
            try:
                if select(stub, trainer, request) != BUDGET:
                    code = "SHORT"  # fewer rows than asked: reported, never expected here
            except grpc.RpcError as e:
                code, detail = e.code().name, e.details() or ""
            latency = time.perf_counter() - start
            out.append(Call(time.time() - t0, latency, code, method, trainer, detail))
            if code in REFUSED:
                time.sleep(BACKOFF)
            i += 1


def client_process(port: int, trainers: list[str], sha: str, t0: float, seconds: float) -> list:
    calls: list[Call] = []
    threads = [
        threading.Thread(target=trainer_loop, args=(port, t, sha, t0, seconds, calls))
        for t in trainers
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return calls


def _window(port: int, ids: list[str], sha: str, seconds: float, hostile=None):
    """The honest trainers' window, with the hostile mix given `(HostileClient, kinds)`:
    honest calls, and what the hostile process returned (None without one)."""
    t0 = time.time() + 4.0  # time for every client to connect before the window opens
    if hostile is not None:
        hostile[0].begin(hostile[1], t0, seconds)
    with ProcessPoolExecutor(CLIENT_PROCS, mp_context=mp.get_context("spawn")) as pool:
        futures = [
            pool.submit(client_process, port, ids[k::CLIENT_PROCS], sha, t0, seconds)
            for k in range(CLIENT_PROCS)
        ]
        calls: list[Call] = [c for f in futures for c in f.result()]
    return calls, (hostile[0].result() if hostile is not None else None)


def honest_summary(calls: list[Call], seconds: float) -> dict:
    ok = [c for c in calls if c.code == "OK"]
    window = max(seconds, max((c.start + c.latency for c in calls), default=seconds))
    codes = Counter(c.code for c in calls if c.code != "OK")
    details = {c.code: c.detail for c in calls if c.code != "OK"}  # one message per code
    return {
        "seconds": window,
        "calls": len(calls),
        "ok": len(ok),
        "rps": len(ok) / window,
        "latency_s": Stats.of([c.latency for c in ok]).to_dict(),
        "latency_feature_s": Stats.of([c.latency for c in ok if c.method == "feature"]).to_dict(),
        "latency_random_s": Stats.of([c.latency for c in ok if c.method == "random"]).to_dict(),
        "errors": dict(codes),
        "refused_latency_s": Stats.of([c.latency for c in calls if c.code in REFUSED]).to_dict(),
        "error_details": details,
        "trainers_served": len({c.trainer for c in ok}),
    }


def run_level(trainers: int, s: OwnerSettings, seconds: float, tmp: Path, model: bytes) -> dict:
    ids = [f"t{i:02d}" for i in range(trainers)]
    mapping = owner_mapping(
        str(tmp / f"{s.label}-{trainers}"), ids, cap=10**9, max_rows=128, **s.table()
    )
    mapping["selection"]["methods"] = ["feature", "random"]
    # Each trainer selects with its own model (models belong to their uploader); the default
    # selection.cache_mib (1024 MiB) keeps every one parsed, with its embeddings and indexes.
    spec = {"rows": ROWS, "features": FEATURES, "config": mapping}
    load0 = os.getloadavg()[0]
    with server("owner", spec) as port:
        # Models belong to their uploader: every trainer uploads (and warms) its own copy.
        with ThreadPoolExecutor(8) as uploads:
            sha = list(uploads.map(lambda t: upload(port, t, model), ids))[0]
        calls, _ = _window(port, ids, sha, seconds)
    return {
        "trainers": trainers,
        "config": s.label,
        "owner": {**s.table(), "max_concurrent_rpcs": s.max_concurrent_rpcs},
        **honest_summary(calls, seconds),
        "load_avg": load0,
    }


def markdown(results: list[dict], seconds: float, total: float) -> str:
    lines = [
        "## Concurrent trainers (one owner, loopback)",
        "",
        f"One owner process with {ROWS:,} synthetic rows of {FEATURES} float32 features, "
        f"{CLASSES} classes, a tiny uploaded MoE (embed dim {EMBED_DIM}); N distinct trainers "
        "(own token each, from the owner's config; each uploads its own copy of the model, as "
        "models belong to their uploader, and the default `selection.cache_mib` of 1024 MiB keeps "
        "them all parsed, with their embeddings and indexes: about 5 MiB a trainer here) "
        "in 2 client processes, each with its own "
        f"channel, calling Select for {seconds:.0f} s: budget {BUDGET}, embeddings-only D_hard "
        f'of {HARD_ROWS} rows, "feature" and "random" alternating, fresh request id each call. '
        f"Refused calls are followed by a {BACKOFF} s back-off (the trainer client's first "
        "retry wait). Latency is of successful calls.",
        "",
        "| trainers | owner config (workers / selection workers / queue / max RPCs) | req/s | "
        "p50 ms | p99 ms | feature p50 | random p50 | calls | trainers served | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        o = r["owner"]
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
        lat = r["latency_s"]
        lines.append(
            f"| {r['trainers']} | {r['config']}: {o['max_workers']} / {o['selection_workers']} / "
            f"{o['selection_queue']} / {o['max_concurrent_rpcs']} | {r['rps']:.0f} | "
            f"{lat['p50'] * 1e3:.0f} | {lat['p99'] * 1e3:.0f} | "
            f"{r['latency_feature_s']['p50'] * 1e3:.0f} | "
            f"{r['latency_random_s']['p50'] * 1e3:.0f} | {r['calls']} | "
            f"{r['trainers_served']}/{r['trainers']} | {errs} |"
        )
    lines += ["", _notes(results)]
    lines += [
        "",
        f"Machine: {os.cpu_count()} cores shared with other jobs (1-min load average at each "
        "level's start is in the JSON); the owner and both client processes share them. "
        f"Whole run {total:.0f} s. Run: `.venv/bin/python -m bench.load` (`--quick` for a "
        "smoke run).",
    ]
    return "\n".join(lines)


def _notes(results: list[dict]) -> str:
    """Why the errors are what they are (the numbers come from this run)."""
    codes = sorted({c for r in results for c in r["errors"]})
    refused = [r["refused_latency_s"]["p50"] for r in results if r["errors"]]
    fast = f" (answered in {min(refused) * 1e3:.0f}–{max(refused) * 1e3:.0f} ms p50)"
    default = [r for r in results if r["config"] == "default"]
    d = default[0]["owner"] if default else {}
    slots = d.get("selection_workers", 0) + d.get("selection_queue", 0)
    failed = sum(sum(r["errors"].values()) for r in default)
    by = {(r["trainers"], r["config"]): r["rps"] for r in results}
    ratios = [by[n, "default"] / by[n, c] for n, c in by if c != "default" and (n, "default") in by]
    rps = f"{min(ratios):.1f}–{max(ratios):.1f}×" if ratios else "about the same as"
    small = [r["error_details"].get("UNAVAILABLE") for r in results if r["config"] != "default"]
    message = next((m for m in small if m), "the owner is busy with other selections")
    return (
        f"Errors seen: {', '.join(codes) or 'none'}. The default [owner] settings let "
        f"selection_workers + selection_queue = {slots} selections be in flight (running or "
        f"waiting) on {d.get('max_workers', 0)} handler threads: a waiting Select costs an idle "
        "thread and little else, and 2 threads stay free for Describe and health checks "
        "(the config requires max_workers ≥ selection workers + queue + max_uploads, + "
        "max_reflection_streams when reflection is on, + 2). With one call per "
        f"trainer in flight, up to {slots} trainers are all queued, not refused: "
        f"{failed} failed calls with the defaults in this run. Throughput is bounded by the 2 "
        "shared, busy cores either way, so the wait becomes queueing latency: p50 grows with the "
        "number of trainers, as Little's law predicts. Beyond the queue, UNAVAILABLE remains the "
        "back-pressure: the 'small queue' rows (the previous defaults, 16 threads and a queue of "
        f'6) refuse a Select at once ("{message}")'
        + (fast if refused else "")
        + ", before anything is selected or charged, with the status the trainer client retries "
        "with back-off reusing the request id; served calls then see a short median latency but "
        f"a long p99, and the default's throughput is {rps} the small queue's. No "
        "RESOURCE_EXHAUSTED appears because gRPC's concurrent-RPC cap is 4 × max_workers, at "
        "least the number of trainers here."
    )


def main() -> None:
    ap = bench_parser(__doc__, quick="16 trainers, a few seconds (smoke run)")
    ap.add_argument("--seconds", type=float, default=None, help="window per level (default 20)")
    ap.add_argument("--hostile-only", action="store_true", help="only the hostile mix")
    ap.add_argument("--render", action="store_true", help="rewrite the doc from results JSON")
    args = ap.parse_args()
    if args.render:  # same measurements, new text: no re-run needed
        if not args.hostile_only:
            data = json.loads((RESULTS / "load.json").read_text())
            md = markdown(data["results"], data["seconds"], data["total_seconds"])
            write_section("load", md, data)
            print(md)
        if (RESULTS / "load_hostile.json").exists():
            data = json.loads((RESULTS / "load_hostile.json").read_text())
            md = _hostile_report.markdown(data)
            write_section("load_hostile", md, data)
            print(md)
        return
    seconds = args.seconds or (3.0 if args.quick else 20.0)
    levels = [] if args.hostile_only else [16] if args.quick else [16, 32, 64]
    started = time.perf_counter()
    model = model_bytes()
    results = []
    with tempfile.TemporaryDirectory(prefix="mycroft-load-") as tmp:
        for n in levels:
            for s in settings_for(n):
                r = run_level(n, s, seconds, Path(tmp), model)
                results.append(r)
                print(
                    f"{n} trainers, {s.label}: {r['rps']:.0f} req/s, p50 "
                    f"{r['latency_s']['p50'] * 1e3:.0f} ms, p99 "
                    f"{r['latency_s']['p99'] * 1e3:.0f} ms, errors {r['errors'] or 'none'}",
                    flush=True,
                )
        levels_total = time.perf_counter() - started
        hostile = _hostile_run.run_hostile(seconds, Path(tmp), model)
    hostile["total_seconds"] = time.perf_counter() - started - levels_total
    hostile["quick"] = args.quick
    outputs = [("load_hostile", _hostile_report.markdown(hostile), hostile)]
    if results:
        data = {
            "seconds": seconds,
            "total_seconds": levels_total,
            "quick": args.quick,
            "results": results,
        }
        outputs.insert(0, ("load", markdown(results, seconds, levels_total), data))
    for name, md, data in outputs:
        if not args.no_write:
            write_section(name, md, data)
        print(md)


if __name__ == "__main__":
    main()
