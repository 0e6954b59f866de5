"""The hostile clients of bench/load.py's hostile mix (`--hostile-only`) and their owner config.

Hostile clients run as threads in one client process of their own (spawned, like the honest
ones) from `RAMP` seconds before the honest window opens until it closes:

- `REFLECTION_STREAMS` server-reflection streams with no token, sending nothing;
- `STALLED_UPLOADS` UploadModel streams (from the `STALLERS`, with their tokens) that send a
  first chunk of half a model and then nothing;
- the `UPLOADERS` uploading a model never seen before, again and again (a fresh torch seed
  each time: each costs a query and a warm-up over the owner's rows);
- every hostile trainer calling Select "feature" on its own model with fresh index and batch
  parameters each call, within the bounds `selection/feature.py` declares.

A call is made again as soon as it ends; after `PAUSE` seconds when it was refused within a
second, so the mix measures the owner's bounds rather than which process wins the shared
cores with a flood of refusals. Each window gets fresh threads and channels; the process is
started once (`HostileClient`) and reused.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import uuid
from typing import Any

import grpc

HOSTILE = tuple(f"h{i}" for i in range(8))  # trainer ids, distinct from the honest t00...
STALLERS, UPLOADERS = HOSTILE[:4], HOSTILE[4:]
REFLECTION_STREAMS, STALLED_UPLOADS = 80, 40
PAUSE = 0.1  # seconds before re-opening a stream that was refused
RAMP = 1.0  # the hostile clients start this long before the honest window
HOSTILE_QUERIES = 100_000  # each new model costs a query: a generous allowance
KINDS = ("reflection", "stalled upload", "new-model upload", "feature select")

# Explicit bounds for every window (quiet and hostile), so "bounded by config" can be checked.
OWNER_BOUNDS: dict[str, Any] = {
    "reflection": True,  # on, so the hostile run exercises reflection's auth path
    "max_reflection_streams": 2,
    "max_uploads": 8,  # 4 stalling trainers hold at most 4 (1 each); uploaders get the rest
    "max_uploads_per_trainer": 1,
    "selections_per_trainer": 8,
    "stream_idle_seconds": 5.0,  # stalled streams are cancelled (and re-opened) in the window
    # Small enough to be reached within a 20 s window: each model here is ~2.6 MiB on disk (its
    # file and the owner's rows embedded with it) and ~5 MiB in the cache (embeddings and a
    # feature index); the 40 honest and hostile models uploaded before the window take ~110
    # MiB of disk and ~210 MiB of cache.
    "disk_quota_mib": 256,
    "disk_quota_per_trainer_mib": 16,
}
SELECTION_BOUNDS: dict[str, Any] = {"cache_mib": 256}


def configure(mapping: dict[str, Any]) -> dict[str, Any]:
    """Add the hostile trainers and the explicit bounds to an owner config mapping."""
    mapping["owner"].update(OWNER_BOUNDS)
    mapping["selection"].update(SELECTION_BOUNDS)
    honest = mapping["trainers"][0]
    mapping["trainers"] += [
        {**honest, "id": h, "token": token(h), "queries": HOSTILE_QUERIES} for h in HOSTILE
    ]
    return mapping


def token(trainer: str) -> str:
    from bench._grpc_bench import token_for

    return token_for(trainer)


def _meta(trainer: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(trainer)}"),)


def _channel(port: int) -> grpc.Channel:
    # A connection of its own, as separate hostile clients would have.
    return grpc.insecure_channel(f"127.0.0.1:{port}", [("grpc.use_local_subchannel_pool", 1)])


class _Mix:
    """Shared state of the hostile threads: the window, the record, the calls to cancel."""

    def __init__(self, t0: float, seconds: float):
        self.t0, self.stop_at = t0, t0 + seconds
        self.stop = threading.Event()
        self.calls: list[tuple[str, str, float, float, str]] = []
        self.open_at_end: dict[str, int] = {}
        self.live: set[Any] = set()
        self.lock = threading.Lock()

    def running(self) -> bool:
        return not self.stop.is_set() and time.time() < self.stop_at

    def add(self, call: Any) -> None:
        with self.lock:
            self.live.add(call)

    def end(self, kind: str, call: Any, start: float, code: str, detail: str) -> None:
        """Record one ended call (start: wall clock); a call the bench itself cancelled at the
        close of the window is counted as open at the end instead."""
        with self.lock:
            self.live.discard(call)
            if self.stop.is_set() and code in ("CANCELLED", "BENCH_CANCELLED"):
                self.open_at_end[kind] = self.open_at_end.get(kind, 0) + 1
                return
            self.calls.append((kind, code, start - self.t0, time.time() - start, detail[:200]))
        if code != "OK" and time.time() - start < 1.0:
            self.stop.wait(PAUSE)

    def wait(self, kind: str, fut: Any, start: float) -> None:
        """Wait for a unary-response call started at `start` and record how it ended."""
        self.add(fut)
        code, detail = "OK", ""
        try:
            fut.result()
        except Exception as e:  # noqa: BLE001
            code, detail = _code(e)
        self.end(kind, fut, start, code, detail)

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            live = list(self.live)
        for call in live:
            call.cancel()


def _code(e: BaseException) -> tuple[str, str]:
    if isinstance(e, grpc.RpcError):
        return e.code().name, e.details() or ""
    if isinstance(e, grpc.FutureCancelledError):
        return "BENCH_CANCELLED", ""
    return type(e).__name__, str(e)


def _reflection(mix: _Mix, ch: grpc.Channel) -> None:
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    while mix.running():
        q: queue.Queue = queue.Queue()
        start = time.time()
        call = stub.ServerReflectionInfo(iter(q.get, None))  # no token, no request: idle
        mix.add(call)
        code, detail = "OK", ""
        try:
            for _ in call:
                pass
        except Exception as e:  # noqa: BLE001 - every ending is a measurement
            code, detail = _code(e)
        finally:
            q.put(None)
        mix.end("reflection", call, start, code, detail)


def _stalled(first: Any, done: threading.Event):
    yield first
    done.wait()  # send nothing more until the call has ended


def _stall(mix: _Mix, ch: grpc.Channel, trainer: str, size: int) -> None:
    from mycroft.v1 import owner_pb2 as pb
    from mycroft.v1 import owner_pb2_grpc as pb_grpc

    stub = pb_grpc.DataOwnerStub(ch)
    while mix.running():
        data = os.urandom(size)  # a model the owner has never seen, never finished
        first = pb.ModelChunk(
            sha256=hashlib.sha256(data).hexdigest(), total_size=size, data=data[: size // 2]
        )
        done = threading.Event()
        start = time.time()
        fut = stub.UploadModel.future(_stalled(first, done), metadata=_meta(trainer), timeout=600)
        try:
            mix.wait("stalled upload", fut, start)
        finally:
            done.set()


def _upload(mix: _Mix, ch: grpc.Channel, trainer: str, index: int) -> None:
    from bench.load import model_bytes
    from mycroft.v1 import owner_pb2 as pb
    from mycroft.v1 import owner_pb2_grpc as pb_grpc

    stub = pb_grpc.DataOwnerStub(ch)
    k = 0
    while mix.running():
        data = model_bytes(seed=10_000 + 100_000 * index + k)  # a new model every time
        k += 1
        chunk = pb.ModelChunk(
            sha256=hashlib.sha256(data).hexdigest(), total_size=len(data), data=data
        )
        start = time.time()
        fut = stub.UploadModel.future(iter([chunk]), metadata=_meta(trainer), timeout=60)
        mix.wait("new-model upload", fut, start)


def feature_params(rng: Any) -> dict[str, float]:
    """Fresh index and batch parameters within `FeatureMatching.param_constraints`; half the
    flat thresholds are under the ~2,000 rows a class holds here, which builds IVF indexes."""
    small = int(rng.integers(1, 2_000))
    large = int(rng.integers(2_000, 10_000_001))
    return {
        "query_batch": int(rng.integers(1, 65_537)),
        "nprobe": int(rng.integers(1, 65_537)),
        "flat_threshold": small if rng.random() < 0.5 else large,
    }


def _select(mix: _Mix, ch: grpc.Channel, trainer: str, sha: str, index: int) -> None:
    import numpy as np

    from bench.load import BUDGET, hard_set
    from mycroft import serde
    from mycroft.v1 import owner_pb2 as pb
    from mycroft.v1 import owner_pb2_grpc as pb_grpc

    stub = pb_grpc.DataOwnerStub(ch)
    rng = np.random.default_rng(index)
    hard = hard_set(500 + index)
    i = 0
    while mix.running():
        request = pb.SelectRequest(
            request_id=f"h-{uuid.uuid4().hex}",
            method="feature",
            budget=BUDGET,
            model_sha256=sha,
            embedded=hard,
            seed=i,
            params=feature_params(rng),
        )
        i += 1
        start = time.time()
        chunks = serde.select_request_chunks(request.SerializeToString())
        call = stub.Select(chunks, metadata=_meta(trainer), timeout=60)
        mix.add(call)
        code, detail = "OK", ""
        try:
            for _ in call:
                pass
        except Exception as e:  # noqa: BLE001
            code, detail = _code(e)
        mix.end("feature select", call, start, code, detail)


def hostile_process(
    port: int, shas: dict[str, str], size: int, kinds: tuple[str, ...], t0: float, seconds: float
):
    """Run the hostile mix (the clients of `kinds`) from t0 - RAMP to t0 + seconds; return its
    calls (kind, code, start relative to t0, latency, detail), the streams still open at the
    end, and how late the mix started."""
    mix = _Mix(t0, seconds)
    refl = [_channel(port) for _ in range(REFLECTION_STREAMS // 10)]
    stall = [_channel(port) for _ in STALLERS]
    jobs: list[tuple[Any, tuple]] = []
    if "reflection" in kinds:
        jobs += [(_reflection, (mix, refl[i % len(refl)])) for i in range(REFLECTION_STREAMS)]
    if "stalled upload" in kinds:
        jobs += [
            (_stall, (mix, stall[i % len(STALLERS)], STALLERS[i % len(STALLERS)], size))
            for i in range(STALLED_UPLOADS)
        ]
    if "new-model upload" in kinds:
        jobs += [(_upload, (mix, _channel(port), h, i)) for i, h in enumerate(UPLOADERS)]
    if "feature select" in kinds:
        jobs += [(_select, (mix, _channel(port), h, shas[h], i)) for i, h in enumerate(HOSTILE)]
    time.sleep(max(0.0, t0 - RAMP - time.time()))
    late = time.time() - (t0 - RAMP)
    cpu0, wall0 = time.process_time(), time.time()
    threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in jobs]
    for t in threads:
        t.start()
    time.sleep(max(0.0, mix.stop_at - time.time()))
    mix.close()
    for t in threads:
        t.join(timeout=30)
    for ch in {id(a[1]): a[1] for _, a in jobs}.values():
        ch.close()
    return {
        "calls": mix.calls,
        "open_at_end": mix.open_at_end,
        "started_late_s": late,
        "threads_left": sum(t.is_alive() for t in threads),
        "client_cpu_cores": (time.process_time() - cpu0) / (time.time() - wall0),
    }


def hostile_main(port: int, shas: dict[str, str], size: int, inbox, outbox) -> None:
    """The hostile client process: import everything, say "ready", then for each
    (kinds, t0, seconds) from `inbox` run the mix and put its result in `outbox`, until None
    (imports before any window, so a slow start cannot eat into one)."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc  # noqa: F401

    from bench.load import hard_set, model_bytes

    model_bytes(seed=1), hard_set(0)  # torch and friends, before the window
    outbox.put("ready")
    while (job := inbox.get()) is not None:
        kinds, t0, seconds = job
        outbox.put(hostile_process(port, shas, size, kinds, t0, seconds))


class HostileClient:
    """The hostile client process, started once and reused for every window."""

    def __init__(self, port: int, shas: dict[str, str], size: int):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._inbox, self._outbox = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(
            target=hostile_main, args=(port, shas, size, self._inbox, self._outbox)
        )
        self._proc.start()
        if self._outbox.get(timeout=300) != "ready":
            raise RuntimeError("the hostile client process did not start")

    def begin(self, kinds: tuple[str, ...], t0: float, seconds: float) -> None:
        self._inbox.put((kinds, t0, seconds))

    def result(self) -> dict:
        return self._outbox.get(timeout=300)

    def close(self) -> None:
        self._inbox.put(None)
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()  # our own child, by its handle
