"""Shared by bench/transfer.py and bench/load.py: servers in their own processes, stats
(and `encode_costs`, the owner's chunk encoding timed in-process for bench/transfer.py).

Every server runs in a child process (`python -m bench._grpc_bench <kind> <json spec>`) so the
client and the server never share a GIL. The child prints `PORT <n>` once it listens and stops
when its stdin closes (the parent exits or leaves the `server` context), so nothing outlives
the bench. Kinds:

- `owner`: a real Mycroft owner (`build_server`) over synthetic Fashion-MNIST-sized rows.
- `bare`: a minimal generic-handler gRPC server, no Mycroft code, that streams pre-built byte
  chunks whose sizes the request lists (int64 little-endian).
- `socket`: a plain TCP server that answers the same request by `sendall` of the same chunks.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BARE_METHOD = "/bench.Bare/Stream"
MAX_MESSAGE = 64 * 1024 * 1024
MB = 1e6


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p99: float
    min: float
    max: float

    @staticmethod
    def of(values: Sequence[float]) -> Stats:
        a = np.asarray(values, dtype=np.float64)
        if len(a) == 0:
            return Stats(0, float("nan"), float("nan"), float("nan"), float("nan"))
        p50, p99 = np.percentile(a, [50, 99])
        return Stats(len(a), float(p50), float(p99), float(a.min()), float(a.max()))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def token_for(trainer: str) -> str:
    return f"{trainer}-bench-token-0123456789"


def synthetic_data(rows: int, features: int, classes: int = 10, seed: int = 0):
    """Float32 rows of `features` values (784 = Fashion-MNIST), class-dependent means."""
    from mycroft.data.base import LabeledData

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=rows).astype(np.int64)
    means = rng.normal(size=(classes, features)).astype(np.float32)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    x += means[labels]
    return LabeledData(
        features=x,
        labels=labels,
        class_names=tuple(f"c{i}" for i in range(classes)),
        row_ids=np.arange(rows, dtype=np.int64),
        name=f"synthetic-{rows}",
    )


def owner_mapping(
    state_dir: str, trainers: Sequence[str], cap: int, max_rows: int, **owner: Any
) -> dict[str, Any]:
    """An owner config mapping (as parsed TOML) on an ephemeral loopback port. Benchmarks
    measure throughput, so each trainer's query allowance is as large as its row cap."""
    return {
        "owner": {"name": "bench-owner", "listen": "127.0.0.1:0", "state_dir": state_dir, **owner},
        "data": {"source": "npz", "path": "unused.npz"},  # rows are passed to build_server
        "budget": {"default_cap": cap, "max_rows_per_request": max_rows, "default_queries": cap},
        "trainers": [
            {"id": t, "token": token_for(t), "cap": cap, "queries": cap} for t in trainers
        ],
        "selection": {"allow_full": True},
    }


@contextlib.contextmanager
def server(
    kind: str,
    spec: dict[str, Any] | None = None,
    timeout: float = 300,
    pid: list[int] | None = None,
    stderr: Any = None,
) -> Iterator[int]:
    """Start a server child process; yields its port; stops it on exit. `pid`, when given,
    gets the child's process id appended (to sample its memory); `stderr` is where its log
    goes (default: this process's stderr)."""
    proc = subprocess.Popen(
        [PY, "-m", "bench._grpc_bench", kind, json.dumps(spec or {})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        cwd=ROOT,  # where `-m bench._grpc_bench` finds the bench package
        text=True,
    )
    if pid is not None:
        pid.append(proc.pid)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{kind} server failed to start (exit {proc.wait(timeout)})")
        yield int(line.split()[1])
    finally:
        with contextlib.suppress(BrokenPipeError, OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # only our own child, by its handle
            proc.wait()


def pack_sizes(sizes: Sequence[int]) -> bytes:
    return np.asarray(sizes, dtype="<i8").tobytes()


def encode_costs(rows: int, reps: int, width: int = 784) -> dict:
    """Owner-side encoding of one `rows`-row stream, in this process, both ways interleaved:
    protobuf messages filled in place and serialized (the owner before the pass-through), and
    `wire.encode_rows_chunk` (what the owner now yields to a pass-through serializer)."""
    from mycroft import wire
    from mycroft.v1 import owner_pb2 as pb

    rng = np.random.default_rng(0)
    features = rng.standard_normal((rows, width), dtype=np.float32)
    labels = rng.integers(0, 10, rows).astype(np.int64)
    ids, scores = np.arange(rows, dtype=np.int64), rng.random(rows).astype(np.float32)
    parts = list(wire.row_chunks(rows, width * 4 + 20))

    def protobuf() -> int:
        total = 0
        for part in parts:
            chunk = pb.SelectChunk()
            for name, array in zip(
                ("features", "labels", "row_ids", "scores"),
                (features[part], labels[part], ids[part], scores[part]),
                strict=True,
            ):
                wire.encode_into(getattr(chunk.rows, name), array)
            total += len(chunk.SerializeToString())
        return total

    def hand() -> int:
        return sum(
            len(wire.encode_rows_chunk(features[p], labels[p], ids[p], scores[p])) for p in parts
        )

    times: dict[str, list[float]] = {"protobuf": [], "hand": []}
    for _ in range(reps):
        for key, fn in (("protobuf", protobuf), ("hand", hand)):
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    assert protobuf() == hand()
    return {k: Stats.of(v).to_dict() for k, v in times.items()}


# ------------------------------------------------------------------ child processes


def _wait_for_parent() -> None:
    sys.stdout.flush()
    sys.stdin.read()  # returns at EOF: the parent closed our stdin or died


def _run_owner(spec: dict[str, Any]) -> None:
    import logging

    from owner_node.config import parse_config
    from owner_node.server import build_server

    logging.basicConfig(level=logging.WARNING)
    data = synthetic_data(spec["rows"], spec["features"], seed=spec.get("seed", 0))
    config = parse_config(spec["config"], base_dir=Path(spec["config"]["owner"]["state_dir"]))
    srv, port = build_server(config, data)
    srv.start()
    print(f"PORT {port}", flush=True)
    _wait_for_parent()
    srv.stop(grace=2.0).wait(30)


def _run_bare(spec: dict[str, Any]) -> None:
    import grpc

    cache: dict[int, bytes] = {}  # pre-built chunks: no per-call allocation or encoding
    lock = threading.Lock()

    def chunk(size: int) -> bytes:
        with lock:
            if size not in cache:
                cache[size] = os.urandom(size)
            return cache[size]

    def stream(request: bytes, context: Any) -> Iterator[bytes]:
        for size in np.frombuffer(request, dtype="<i8").tolist():
            yield chunk(size)

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {"Stream": grpc.unary_stream_rpc_method_handler(stream)},  # bytes in, bytes out
    )
    srv = grpc.server(
        ThreadPoolExecutor(max_workers=spec.get("workers", 16)),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    srv.add_generic_rpc_handlers((handler,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    print(f"PORT {port}", flush=True)
    _wait_for_parent()
    srv.stop(1.0).wait()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise ConnectionError("peer closed")
        buf += part
    return bytes(buf)


def _run_socket(spec: dict[str, Any]) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    cache: dict[int, bytes] = {}

    def serve_one(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                try:
                    (count,) = struct.unpack("<q", _recv_exact(conn, 8))
                except ConnectionError:
                    return
                sizes = np.frombuffer(_recv_exact(conn, 8 * count), dtype="<i8").tolist()
                for size in sizes:
                    if size not in cache:
                        cache[size] = os.urandom(size)
                    conn.sendall(cache[size])

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    _wait_for_parent()


@dataclass
class Stream:
    """One received stream: arrival times and sizes, enough for every metric."""

    wall: float
    t_first: float  # seconds from the call to the first chunk
    t_end: float  # seconds from the call to the end of the stream
    sizes: list[int]  # serialized message sizes, summary last (empty for bare/socket)
    payload: int  # row payload bytes (tensor data of every rows chunk)
    first_payload: int  # row payload bytes of the first chunk
    timings: dict[str, float] = field(default_factory=dict)
    replayed: bool = False

    def mbps(self) -> float:
        """Row payload after the first chunk over the time after the first chunk."""
        return (self.payload - self.first_payload) / MB / (self.t_end - self.t_first)


def bare_stream(channel: grpc.Channel, sizes: list[int], payload: int, first: int) -> Stream:
    call = channel.unary_stream(BARE_METHOD)  # no (de)serializers: bytes in, bytes out
    start = time.perf_counter()
    t_first = 0.0
    got = 0
    for i, chunk in enumerate(call(pack_sizes(sizes), timeout=120)):
        if i == 0:
            t_first = time.perf_counter() - start
        got += len(chunk)
    end = time.perf_counter() - start
    assert got == sum(sizes)
    return Stream(end, t_first, end, [], payload, first)


def socket_stream(sock: socket.socket, sizes: list[int], payload: int, first: int) -> Stream:
    buf = bytearray(sum(sizes))
    start = time.perf_counter()
    t_first, t_end = socket_fetch(sock, sizes, buf)
    return Stream(t_end - start, t_first - start, t_end - start, [], payload, first)


def socket_fetch(sock: socket.socket, sizes: Sequence[int], buf: bytearray) -> tuple[float, float]:
    """Ask for `sizes` and read them all into `buf`. Returns (t_first_byte, t_done)."""
    total = sum(sizes)
    sock.sendall(struct.pack("<q", len(sizes)) + pack_sizes(sizes))
    view = memoryview(buf)
    # One byte first: the time of first arrival, not of whatever the kernel buffered meanwhile.
    got = sock.recv_into(view, 1)
    first = time.perf_counter()
    while got < total:
        n = sock.recv_into(view[got:], total - got)
        if n == 0:
            raise ConnectionError("socket server closed early")
        got += n
    return first, time.perf_counter()


if __name__ == "__main__":
    kind, raw = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    {"owner": _run_owner, "bare": _run_bare, "socket": _run_socket}[kind](raw)
