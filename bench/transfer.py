"""Select latency and subset streaming throughput of one owner, beside two ceilings.

For each owner (1e4 and 1e5 synthetic float32 rows of 784 features, Fashion-MNIST size) the
bench streams ~1e4 rows per Select ("full" on the 1e4 owner, "random" with budget 1e4 on the
1e5 owner) and, in the same loop iteration, the same bytes through:

- a bare gRPC stream: a generic-handler server with no Mycroft code streaming pre-built byte
  chunks of exactly the sizes the owner's messages had (serialized SelectChunk sizes);
- a raw TCP socket copy of the same bytes over loopback.

Each server is its own process (no shared GIL with the client). Interleaving the measurements
per iteration exposes them to the same noise on a shared machine; ratios are per iteration and
reported as median and range. Streaming throughput is measured from the first chunk's arrival
to the end of the stream, so the selection (and the ledger charge) before the first chunk is
excluded; it is reported separately from the summary's server-side timings.

    .venv/bin/python -m bench.transfer [--quick] [--calls 20]
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from bench._grpc_bench import (
    MAX_MESSAGE,
    MB,
    Stats,
    Stream,
    bare_stream,
    encode_costs,
    owner_mapping,
    server,
    socket_stream,
    token_for,
)
from bench._report import bench_parser, write_section
from mycroft import wire
from mycroft.v1 import owner_pb2 as pb
from trainer_node.client import OwnerClient
from trainer_node.config import OwnerEndpoint

FEATURES = 784
TRAINER = "bench"
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


@dataclass(frozen=True)
class Case:
    name: str
    rows: int
    method: str
    budget: int


def _hard_set(classes: int = 10, m: int = 50, d: int = 16) -> pb.EmbeddedHardSet:
    rng = np.random.default_rng(1)
    return pb.EmbeddedHardSet(
        embeddings=wire.encode(rng.standard_normal((m, d), dtype=np.float32)),
        labels=wire.encode(np.arange(m, dtype=np.int64) % classes),
    )


SELECT_METHOD = "/mycroft.v1.DataOwner/Select"


def mycroft_select(channel: grpc.Channel, request: pb.SelectRequest, parse: bool) -> Stream:
    """One Select. parse=False receives raw bytes, exactly like the bare gRPC client, and parses
    them after the clock stops (the owner's path alone); parse=True is the generated stub's
    protobuf parse plus reading every tensor's bytes, inside the clock."""
    meta = (("authorization", f"Bearer {token_for(TRAINER)}"),)
    call = channel.unary_stream(
        SELECT_METHOD,
        request_serializer=pb.SelectRequest.SerializeToString,
        response_deserializer=pb.SelectChunk.FromString if parse else None,
    )
    start = time.perf_counter()
    t_first = 0.0
    received: list = []
    for msg in call(request, metadata=meta, timeout=120):
        if not received:
            t_first = time.perf_counter() - start
        if parse:
            r = msg.rows  # touch the bytes, as any decoder must
            _ = (r.features.data, r.labels.data, r.row_ids.data, r.scores.data)
        received.append(msg)
    end = time.perf_counter() - start
    msgs = received if parse else [pb.SelectChunk.FromString(b) for b in received]
    rows = [m.rows for m in msgs if m.WhichOneof("payload") == "rows"]
    payloads = [sum(len(t.data) for t in (r.features, r.labels, r.row_ids, r.scores)) for r in rows]
    summary = msgs[-1].summary
    assert msgs[-1].WhichOneof("payload") == "summary" and summary.rows_sent > 0
    return Stream(
        wall=end,
        t_first=t_first,
        t_end=end,
        sizes=[m.ByteSize() for m in msgs],
        payload=sum(payloads),
        first_payload=payloads[0],
        timings=dict(summary.timings),
        replayed=summary.replayed,
    )


def client_select(client: OwnerClient, request: pb.SelectRequest) -> float:
    """Wall time of the trainer's own client (decode, validate, concatenate)."""
    from mycroft.messages import EmbeddedHard, SelectRequestSpec

    hard = request.embedded
    spec = SelectRequestSpec(
        request_id=request.request_id,
        method=request.method,
        rows_wanted=request.budget,
        model_sha256="",
        hard=EmbeddedHard(
            embeddings=wire.decode(hard.embeddings, "e"),
            gradients=np.zeros((len(hard.labels.data) // 8, 0), np.float32),
            labels=wire.decode(hard.labels, "l"),
        ),
        seed=request.seed,
    )
    start = time.perf_counter()
    subset = client.select(spec)
    wall = time.perf_counter() - start
    assert len(subset) > 0
    return wall


def run_case(case: Case, calls: int, bare_port: int, sock_port: int, tmp: Path) -> dict:
    mapping = owner_mapping(
        str(tmp / case.name), [TRAINER], cap=10**9, max_rows=max(case.budget, 128)
    )
    spec = {"rows": case.rows, "features": FEATURES, "config": mapping}
    hard = _hard_set()
    with (
        server("owner", spec) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as owner_ch,
        grpc.insecure_channel(f"127.0.0.1:{bare_port}", options=OPTIONS) as bare_ch,
        socket.create_connection(("127.0.0.1", sock_port)) as sock,
        OwnerClient(
            OwnerEndpoint(name="bench", address=f"127.0.0.1:{port}", token=token_for(TRAINER)), None
        ) as client,
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def request(i: int, rid: str | None = None) -> pb.SelectRequest:
            return pb.SelectRequest(
                request_id=rid or f"t-{uuid.uuid4().hex}",
                method=case.method,
                budget=case.budget,
                embedded=hard,
                seed=i,
            )

        warm = [mycroft_select(owner_ch, request(10**6 + k), False) for k in range(2)]
        sizes, payload, first = warm[-1].sizes, warm[-1].payload, warm[-1].first_payload
        bare_stream(bare_ch, sizes, payload, first)  # builds the bare server's chunk cache
        socket_stream(sock, sizes, payload, first)
        replay_id = f"t-replay-{uuid.uuid4().hex}"
        mycroft_select(owner_ch, request(0, replay_id), False)  # the request every replay repeats
        steps: dict[str, Callable[[int], object]] = {
            "fresh": lambda i: mycroft_select(owner_ch, request(i), False),
            "parsed": lambda i: mycroft_select(owner_ch, request(i), True),
            "replayed": lambda i: mycroft_select(owner_ch, request(0, replay_id), False),
            "client": lambda i: client_select(client, request(i)),
            "bare": lambda i: bare_stream(bare_ch, sizes, payload, first),
            "socket": lambda i: socket_stream(sock, sizes, payload, first),
        }
        runs: dict[str, list] = {k: [] for k in steps}
        for i in range(calls):
            for key, step in steps.items():
                runs[key].append(step(i + 1))
        assert all(s.replayed for s in runs["replayed"])
        assert not any(s.replayed for s in runs["fresh"] + runs["parsed"])
    return summarise(case, runs, sizes, payload)


def summarise(case: Case, runs: dict[str, list], sizes: list[int], payload: int) -> dict:
    fresh, parsed, replayed = runs["fresh"], runs["parsed"], runs["replayed"]
    bare, sock = runs["bare"], runs["socket"]
    ratio_mb = [m.mbps() / b.mbps() for m, b in zip(fresh, bare, strict=True)]
    ratio_pb = [m.mbps() / b.mbps() for m, b in zip(parsed, bare, strict=True)]
    ratio_bs = [b.mbps() / s.mbps() for b, s in zip(bare, sock, strict=True)]

    def timing(key: str) -> dict:
        return Stats.of([s.timings.get(key, 0.0) for s in fresh]).to_dict()

    return {
        "case": case.name,
        "owner_rows": case.rows,
        "method": case.method,
        "budget": case.budget,
        "rows_per_call": payload // (FEATURES * 4 + 20),  # 784 float32 + int64 id, label + f32
        "messages": len(sizes),
        "message_bytes_max": max(sizes),
        "stream_bytes": sum(sizes),
        "payload_bytes": payload,
        "latency_fresh_s": Stats.of([s.wall for s in fresh]).to_dict(),
        "latency_parsed_s": Stats.of([s.wall for s in parsed]).to_dict(),
        "latency_replayed_s": Stats.of([s.wall for s in replayed]).to_dict(),
        "latency_trainer_client_s": Stats.of(runs["client"]).to_dict(),
        "latency_bare_s": Stats.of([s.wall for s in bare]).to_dict(),
        "latency_socket_s": Stats.of([s.wall for s in sock]).to_dict(),
        "first_chunk_fresh_s": Stats.of([s.t_first for s in fresh]).to_dict(),
        "server_strategy_s": timing("strategy"),
        "server_charge_s": timing("charge"),
        "server_total_s": timing("total"),
        "mbps_fresh": Stats.of([s.mbps() for s in fresh]).to_dict(),
        "mbps_parsed": Stats.of([s.mbps() for s in parsed]).to_dict(),
        "mbps_replayed": Stats.of([s.mbps() for s in replayed]).to_dict(),
        "mbps_bare": Stats.of([s.mbps() for s in bare]).to_dict(),
        "mbps_socket": Stats.of([s.mbps() for s in sock]).to_dict(),
        "ratio_mycroft_bare": Stats.of(ratio_mb).to_dict(),
        "ratio_parsed_bare": Stats.of(ratio_pb).to_dict(),
        "ratio_bare_socket": Stats.of(ratio_bs).to_dict(),
    }


def _ms(s: dict, key: str = "p50") -> str:
    return f"{s[key] * 1e3:.0f}"


def _spread(s: dict, fmt: str = "{:.0f}", scale: float = 1.0) -> str:
    return (
        f"{fmt.format(s['p50'] * scale)} "
        f"({fmt.format(s['min'] * scale)}–{fmt.format(s['max'] * scale)})"
    )


def markdown(
    results: list[dict], calls: int, seconds: float, load: tuple[float, ...], encode: dict
) -> str:
    lines = [
        "## Select transfer (one owner, loopback)",
        "",
        f"Synthetic float32 rows of {FEATURES} features (Fashion-MNIST size), 10 classes; "
        f"{calls} calls per measurement, interleaved per iteration (fresh, parsed, replayed, "
        "trainer client, bare gRPC, socket) so each sees the same machine noise. Owner, bare gRPC "
        "server and socket server each run in their own process; the client is this process. "
        "Fresh calls use a new request id (and seed) each time; replayed calls repeat one "
        "finished request id, which the owner answers from its ledger without selecting.",
        "",
        "### Latency (whole Select call, ms)",
        "",
        "| owner rows | method | rows/call | fresh p50 | fresh p99 | parsed p50 | replayed p50 | "
        "replayed p99 | trainer client p50 | first chunk p50 | strategy p50 | "
        "ledger charge p50 | bare gRPC p50 | socket p50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['owner_rows']:,} | {r['method']} | {r['rows_per_call']:,} | "
            f"{_ms(r['latency_fresh_s'])} | {_ms(r['latency_fresh_s'], 'p99')} | "
            f"{_ms(r['latency_parsed_s'])} | {_ms(r['latency_replayed_s'])} | {_ms(r['latency_replayed_s'], 'p99')} | "
            f"{_ms(r['latency_trainer_client_s'])} | {_ms(r['first_chunk_fresh_s'])} | "
            f"{_ms(r['server_strategy_s'])} | {_ms(r['server_charge_s'])} | "
            f"{_ms(r['latency_bare_s'])} | {_ms(r['latency_socket_s'])} |"
        )
    lines += [
        "",
        "### Streaming throughput (MB/s of row payload; median (min–max))",
        "",
        "| owner rows | payload MB | messages | Mycroft fresh | Mycroft parsed | Mycroft replayed | "
        "bare gRPC | socket | Mycroft / bare | parsed / bare | bare / socket |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['owner_rows']:,} | {r['payload_bytes'] / MB:.1f} | {r['messages']} | "
            f"{_spread(r['mbps_fresh'])} | {_spread(r['mbps_parsed'])} | "
            f"{_spread(r['mbps_replayed'])} | "
            f"{_spread(r['mbps_bare'])} | {_spread(r['mbps_socket'])} | "
            f"{_spread(r['ratio_mycroft_bare'], '{:.0f}%', 100)} | "
            f"{_spread(r['ratio_parsed_bare'], '{:.0f}%', 100)} | "
            f"{_spread(r['ratio_bare_socket'], '{:.0f}%', 100)} |"
        )
    worst = min(r["ratio_mycroft_bare"]["p50"] for r in results)
    lines += [
        "",
        f"Goal: Mycroft ≥ 70% of the bare gRPC stream — **{'met' if worst >= 0.7 else 'not met'}"
        f"** (worst median {worst:.1%}). One run's medians move by up to 10 points on this "
        "shared machine: three full runs of the current code gave worst medians of 60%, 66% "
        "and 70%; an owner yielding cached chunks (no encoding at all, a test hack, not the "
        "code) reached 71–73% beside the same bare server, so the rest of the gap is gRPC "
        "serving through the owner's server, not the chunk encoding.",
        "",
        "Throughput counts the row payload after the first chunk over the time from the first "
        "chunk's arrival to the end of the stream, for all three transports alike (bare and "
        "socket send byte-for-byte the sizes of the owner's messages), so the selection and "
        "ledger charge before the first chunk are not in it; they are in the latency table "
        "(server-side 'strategy' and 'ledger charge' come from the summary's timings). "
        "Clients: 'fresh' and 'replayed' receive raw bytes like the bare client and parse them "
        "after the clock stops, so they compare the owner's path with bare gRPC; 'parsed' adds "
        "the client's protobuf parse and reading each tensor's bytes inside the clock; 'trainer "
        "client' is `trainer_node.client.OwnerClient.select` (parse, decode, validate, "
        "concatenate: what a trainer really pays, whole call).",
        "",
        _findings(results, encode),
        "",
        f"Machine: {os.cpu_count()} cores, shared with other jobs (1-min load average "
        f"{load[0]:.1f} at start, {load[1]:.1f} at end); run took {seconds:.0f} s. "
        "Run: `.venv/bin/python -m bench.transfer` (`--quick` for a smoke run).",
    ]
    return "\n".join(lines)


# The previous run of this bench (same machine, before the ledger change), for comparison.
_CHARGE_BEFORE_MS = {"1e4-full": 69, "1e5-random": 184}


def _findings(results: list[dict], encode: dict) -> str:
    """Where the time goes, from this run's numbers."""
    parts = []
    for r in results:
        fresh = r["latency_fresh_s"]["p50"]
        before = _CHARGE_BEFORE_MS.get(r["case"])
        was = (
            f" ({before} ms in this bench's previous run, before the change below)"
            if before
            else ""
        )
        parts.append(
            f"{r['owner_rows']:,}-row owner: ledger charge "
            f"{r['server_charge_s']['p50'] * 1e3:.0f} ms{was}, "
            f"{r['server_charge_s']['p50'] / fresh:.0%} of the median fresh call, strategy "
            f"{r['server_strategy_s']['p50'] / fresh:.0%}; replayed "
            f"{fresh / r['latency_replayed_s']['p50']:.1f}× faster"
        )
    pb_ms, hand_ms = encode["protobuf"]["p50"] * 1e3, encode["hand"]["p50"] * 1e3
    return (
        "Where the time goes — " + "; ".join(parts) + ". The charge commits (synchronous=FULL) "
        "before the first row leaves; it now runs a fixed handful of statements: one "
        "`json_each` query finds the already-revealed rows, one INSERT … SELECT adds the new "
        "ones to `revealed` (which enforces the distinct-row cap), a per-trainer `usage` "
        "counter replaces count(*) over `revealed`, and the audit is the request's own row "
        "(ranked row ids as an int64 blob), expanded by `Ledger.audit` on demand, instead of "
        "one `audit` row per row sent written in a Python loop. What remains is SQLite inserting "
        "~1e4 random keys into the `revealed` B-tree and the fsync (the 1e4-row owner's 'full' "
        "calls re-send rows earlier calls revealed, so they insert none and their charge is "
        "cheaper). Streaming: each chunk is "
        "serialized by hand (`wire.encode_rows_chunk`: the SelectChunk wire format, one copy of "
        "the rows' bytes) and Select's response serializer passes those bytes through, where "
        "filling protobuf messages copied each chunk three times (numpy → bytes → field → "
        f"serialized). Encoding a 1e4-row stream in this process: {pb_ms:.0f} ms the protobuf "
        f"way, {hand_ms:.0f} ms by hand (median of {encode['hand']['n']}, interleaved). "
        "The bare server yields cached bytes with no copy at all, so some gap remains."
    )


def main() -> None:
    ap = bench_parser(__doc__, quick="small owners, few calls (smoke run)")
    ap.add_argument("--calls", type=int, default=None, help="calls per measurement (default 20)")
    args = ap.parse_args()
    calls = args.calls or (3 if args.quick else 20)
    if args.quick:
        cases = [
            Case("1e3-full", 1_000, "full", 1_000),
            Case("1e4-random", 10_000, "random", 2_000),
        ]
    else:
        cases = [
            Case("1e4-full", 10_000, "full", 10_000),
            Case("1e5-random", 100_000, "random", 10_000),
        ]
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    encode = encode_costs(10_000, 3 if args.quick else 10)
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="mycroft-transfer-") as tmp,
        server("bare") as bare_port,
        server("socket") as sock_port,
    ):
        for case in cases:
            t = time.perf_counter()
            results.append(run_case(case, calls, bare_port, sock_port, Path(tmp)))
            r = results[-1]
            print(
                f"{case.name}: fresh p50 {_ms(r['latency_fresh_s'])} ms, "
                f"{r['mbps_fresh']['p50']:.0f} MB/s vs bare {r['mbps_bare']['p50']:.0f} "
                f"(ratio {r['ratio_mycroft_bare']['p50']:.0%}), socket "
                f"{r['mbps_socket']['p50']:.0f} MB/s [{time.perf_counter() - t:.0f} s]",
                flush=True,
            )
    seconds = time.perf_counter() - started
    load = (load0, os.getloadavg()[0])
    md = markdown(results, calls, seconds, load, encode)
    if args.no_write:
        print(md)
        return
    write_section(
        "transfer",
        md,
        {
            "calls": calls,
            "quick": args.quick,
            "seconds": seconds,
            "load": load,
            "encode_1e4_rows_s": encode,
            "cases": results,
        },
    )
    print(md)


if __name__ == "__main__":
    main()
