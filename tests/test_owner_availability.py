"""Availability: no caller can freeze an owner node by holding its handler threads or queue.

Over real gRPC on loopback: reflection off by default and behind credentials when on; health and
Describe answer while hostile streams are open; stalled uploads and unread Select streams are
cancelled and give their places back; uploads and warm-ups take bounded places; the work queue
serves trainers in turn.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2 as rpb
from grpc_reflection.v1alpha import reflection_pb2_grpc as rpb_grpc
from helpers_grpc import (
    OwnerClient,
    bearer,
    digits_data,
    owner_config,
    raw_request,
    request_chunks,
    running_owner,
    status_of,
)
from helpers_hardening import OwnerProcess, is_serving, synthetic_data, wait_until, write_owner

from moe.io import model_sha256
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc
from owner_node.errors import Busy
from owner_node.limits import Limiter
from owner_node.scheduler import FairScheduler
from owner_node.watchdog import Watchdog


class _Held:
    """A client stream whose requests come from a queue: it stays open until `close`."""

    def __init__(self) -> None:
        self.requests: queue.Queue[Any] = queue.Queue()
        self.call: Any = None

    def iterator(self) -> Iterator[Any]:
        return iter(self.requests.get, None)

    def close(self) -> None:
        self.requests.put(None)


def _reflection_stream(channel: grpc.Channel, metadata=()) -> _Held:
    held = _Held()
    held.call = rpb_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        held.iterator(), metadata=metadata
    )
    return held


def _stalled_upload(channel: grpc.Channel, name: str, model: bytes) -> _Held:
    """An upload that sends its first chunk and then nothing."""
    held = _Held()
    held.requests.put(
        pb.ModelChunk(sha256=model_sha256(model), total_size=len(model), data=model[:1024])
    )
    held.call = pb_grpc.DataOwnerStub(channel).UploadModel.future(
        held.iterator(), metadata=bearer(name), timeout=120
    )
    return held


def _code(held: _Held, timeout: float = 30) -> grpc.StatusCode:
    """The status a held stream ended with (reflection: first response; upload: its future)."""
    try:
        if isinstance(held.call, grpc.Future):
            held.call.result(timeout=timeout)
        else:
            next(held.call)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _upload_when_free(client: OwnerClient, model: bytes, timeout: float = 10) -> bool:
    """Upload, retrying UNAVAILABLE (as the trainer client does) while a cancelled stream's
    handler is still unwinding."""
    end = time.monotonic() + timeout
    while True:
        try:
            return client.upload(model).present
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > end:
                raise
            time.sleep(0.1)


def _threads(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


# --- the node under hostile streams (its own process: real thread counts) ---


def test_health_and_describe_answer_while_hostile_streams_are_open(tmp_path, data, model):
    idle = 6.0
    path = write_owner(
        tmp_path,
        data,
        {"alice": 100, "bob": 100},
        owner={"reflection": True, "stream_idle_seconds": idle, "max_workers": 80},
    )
    owner = OwnerProcess(path).start()
    held: list[_Held] = []
    try:
        pid = owner.proc.pid
        channel = grpc.insecure_channel(owner.address)
        started = time.monotonic()
        # 80 reflection streams without a token, and 40 uploads that stall after one chunk.
        held += [_reflection_stream(channel) for _ in range(80)]
        uploads = [_stalled_upload(channel, ("alice", "bob")[i % 2], model) for i in range(40)]
        held += uploads
        time.sleep(1.0)
        assert is_serving(owner.address, timeout=3)
        describe = OwnerClient.of(channel, "alice").stub.Describe(
            pb.DescribeRequest(), metadata=bearer("alice"), timeout=3
        )
        assert describe.owner_name == "proc-owner"
        assert time.monotonic() - started < idle, "checked after the streams were cancelled"
        # Threads are bounded by the config, not by the number of hostile streams.
        assert _threads(pid) <= 80 + 16
        reflection_codes = {_code(h) for h in held[:80]}
        assert reflection_codes == {grpc.StatusCode.UNAUTHENTICATED}
        # One upload per trainer is admitted (max_uploads_per_trainer = 1), the rest refused
        # at once; the admitted ones are cancelled by the watchdog once idle.
        codes = [_code(h, timeout=idle + 20) for h in uploads]
        assert codes.count(grpc.StatusCode.UNAVAILABLE) == 38
        assert codes.count(grpc.StatusCode.CANCELLED) == 2
        # Their places are back: a real upload from each trainer now succeeds.
        for name in ("alice", "bob"):
            assert _upload_when_free(OwnerClient.of(channel, name), model)
        assert is_serving(owner.address, timeout=3)
        channel.close()
    finally:
        for h in held:
            h.close()
        owner.stop()


def test_calls_that_never_send_their_request_cannot_hold_threads(tmp_path, data):
    """A unary call whose request never comes (opened here as a client stream that sends
    nothing: the same on the wire) is cut; health and Describe answer meanwhile."""
    config = owner_config(tmp_path, owner={"stream_idle_seconds": 3.0})
    with running_owner(config, data) as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stalled = []
            for path, count in (
                ("/mycroft.v1.DataOwner/Describe", 100),
                ("/grpc.health.v1.Health/Check", 20),
            ):
                for _ in range(count):
                    held = _Held()
                    held.call = channel.stream_unary(path).future(held.iterator(), timeout=60)
                    stalled.append(held)
            time.sleep(1.0)
            assert is_serving(f"127.0.0.1:{port}", timeout=3)
            client = OwnerClient.of(channel, "alice")
            assert client.stub.Describe(pb.DescribeRequest(), metadata=bearer("alice"), timeout=3)
            codes = {_code(h, timeout=20) for h in stalled}
            assert codes == {grpc.StatusCode.CANCELLED}
            for h in stalled:
                h.close()


# --- reflection ---


def test_reflection_is_off_by_default(tmp_path, data):
    with running_owner(owner_config(tmp_path), data) as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = _reflection_stream(channel, bearer("alice"))
            stream.requests.put(rpb.ServerReflectionRequest(list_services=""))
            assert _code(stream) == grpc.StatusCode.UNIMPLEMENTED
            stream.close()


def test_reflection_when_on_needs_credentials_and_is_bounded(tmp_path, data):
    config = owner_config(tmp_path, owner={"reflection": True, "max_reflection_streams": 2})
    with running_owner(config, data) as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            anonymous = _reflection_stream(channel)
            anonymous.requests.put(rpb.ServerReflectionRequest(list_services=""))
            assert _code(anonymous) == grpc.StatusCode.UNAUTHENTICATED
            anonymous.close()

            alice = _reflection_stream(channel, bearer("alice"))
            alice.requests.put(rpb.ServerReflectionRequest(list_services=""))
            reply = next(alice.call)
            names = {s.name for s in reply.list_services_response.service}
            assert {"mycroft.v1.DataOwner", "grpc.health.v1.Health"} <= names
            # one open stream per trainer; the node's total is 2
            again = _reflection_stream(channel, bearer("alice"))
            assert _code(again) == grpc.StatusCode.UNAVAILABLE
            bob = _reflection_stream(channel, bearer("bob"))
            bob.requests.put(rpb.ServerReflectionRequest(list_services=""))
            assert next(bob.call).list_services_response.service
            carol = _reflection_stream(channel, bearer("carol"))
            assert _code(carol) == grpc.StatusCode.UNAVAILABLE
            for h in (alice, again, bob, carol):
                h.close()


# --- places: uploads, warm-ups and selections ---


def test_upload_places_are_bounded_per_trainer_and_stalled_uploads_are_cancelled(
    tmp_path, data, model
):
    config = owner_config(tmp_path, owner={"stream_idle_seconds": 1.0})
    with running_owner(config, data) as (server, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stalled = _stalled_upload(channel, "alice", model)
            assert wait_until(lambda: server.engine.scheduler.places.in_use("alice") == 1, 10)
            with pytest.raises(grpc.RpcError) as e:
                OwnerClient.of(channel, "alice").upload(model)
            code, message = status_of(e)
            assert code == grpc.StatusCode.UNAVAILABLE and "model uploads" in message
            assert OwnerClient.of(channel, "bob").upload(model).present  # others go on
            assert _code(stalled) == grpc.StatusCode.CANCELLED
            stalled.close()
            assert wait_until(lambda: server.engine.scheduler.places.in_use("alice") == 0, 10)
            assert not list(
                server.engine.models.path("alice", model_sha256(model)).parent.glob(".upload-*")
            )
            assert _upload_when_free(OwnerClient.of(channel, "alice"), model)


def test_full_places_refuse_selects_and_uploads_of_that_trainer_only(tmp_path, data, model):
    config = owner_config(tmp_path, owner={"selections_per_trainer": 2})
    test = digits_data("test")
    with running_owner(config, data) as (server, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            alice, bob = (OwnerClient.of(channel, n) for n in ("alice", "bob"))
            held = [server.engine.reserve("alice") for _ in range(2)]
            before = alice.describe().budget
            request = raw_request("r1", "random", 5, "", test.features[:10], test.labels[:10])
            with pytest.raises(grpc.RpcError) as e:
                alice.select(request)
            code, message = status_of(e)
            assert code == grpc.StatusCode.UNAVAILABLE and "per-trainer limit" in message
            with pytest.raises(grpc.RpcError) as e:  # a warm-up needs a place too
                alice.upload(model)
            assert status_of(e)[0] == grpc.StatusCode.UNAVAILABLE
            assert not alice.has_model(model_sha256(model)).present
            after = alice.describe().budget
            assert (after.used, after.queries_used) == (before.used, before.queries_used)
            assert len(bob.select(request).row_ids) == 5  # another trainer is served
            for place in held:
                place.release()
            assert len(alice.select(request).row_ids) == 5
            assert alice.upload(model).present


def test_unread_select_stream_is_cancelled_and_gives_its_place_back(tmp_path):
    big = synthetic_data(600, 32768, 4)  # 128 KiB per row: the stream outgrows flow control
    config = owner_config(
        tmp_path,
        owner={"stream_idle_seconds": 1.0},
        budget={"max_rows_per_request": 128},
        limits={"max_request_bytes": 64 * 1024 * 1024},
    )
    with running_owner(config, big) as (server, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            hard = big.features[:4].reshape(4, -1)
            request = raw_request("big", "random", 128, "", hard, big.labels[:4])
            call = pb_grpc.DataOwnerStub(channel).Select(
                request_chunks(request), metadata=bearer("alice"), timeout=60
            )
            assert wait_until(lambda: server.engine.scheduler.places.in_use() == 1, 10)
            # Never read: the watchdog cancels the stalled stream and the place is released.
            assert wait_until(lambda: server.engine.scheduler.places.in_use() == 0, 20)
            with pytest.raises(grpc.RpcError) as e:
                for _ in call:
                    pass
            assert e.value.code() == grpc.StatusCode.CANCELLED
            # The rows were charged before streaming: the same request id replays them free.
            again = OwnerClient.of(channel, "alice").select(request)
            assert again.summary.replayed and len(again.row_ids) == 128


# --- the parts, without a network ---


def test_scheduler_serves_trainers_in_turn():
    scheduler = FairScheduler(workers=1, queue=16, per_trainer=16)
    gate, order = threading.Event(), []

    def job(name: str) -> None:
        if name == "a0":
            gate.wait(10)
        order.append(name)

    try:
        futures = [scheduler.submit(scheduler.reserve("a"), job, "a0")]
        assert wait_until(lambda: scheduler.queued() == 0, 5)  # a0 is running
        futures += [scheduler.submit(scheduler.reserve("a"), job, f"a{i}") for i in range(1, 6)]
        futures.append(scheduler.submit(scheduler.reserve("b"), job, "b1"))
        gate.set()
        for f in futures:
            f.result(10)
    finally:
        scheduler.close()
    assert order == ["a0", "a1", "b1", "a2", "a3", "a4", "a5"]  # b waits one job, not five
    assert scheduler.places.in_use() == 0


def test_scheduler_cancelled_job_never_runs_and_frees_its_place():
    scheduler = FairScheduler(workers=1, queue=4, per_trainer=4)
    gate, ran = threading.Event(), []
    try:
        first = scheduler.submit(scheduler.reserve("a"), gate.wait, 10)
        second = scheduler.submit(scheduler.reserve("a"), ran.append, "second")
        assert second.cancel()
        assert scheduler.places.in_use("a") == 1
        gate.set()
        first.result(10)
    finally:
        scheduler.close()
    assert ran == [] and scheduler.places.in_use() == 0


def test_limiter_bounds_total_and_per_trainer():
    limiter = Limiter("model uploads", total=3, per_trainer=2)
    a1, a2 = limiter.take("a"), limiter.take("a")
    with pytest.raises(Busy, match="per-trainer limit"):
        limiter.take("a")
    b1 = limiter.take("b")
    with pytest.raises(Busy, match="busy with other model uploads"):
        limiter.take("c")
    a1.release()
    a1.release()  # idempotent: a second release must not free someone else's place
    assert limiter.in_use() == 2 and limiter.in_use("a") == 1
    with limiter.take("c"):
        assert limiter.in_use() == 3
    for place in (a2, b1):
        place.release()
    assert limiter.in_use() == 0


def test_last_places_are_kept_for_trainers_with_nothing_in_progress():
    """A few identities each taking their full share cannot fill the queue: every other
    trainer still gets its first place."""
    limiter = Limiter("selections", total=6, per_trainer=4, kept_for_first=3)
    held = [limiter.take("a") for _ in range(3)]
    with pytest.raises(Busy, match="keeps its last 3 places"):
        limiter.take("a")  # below its own limit of 4, but only kept places are left
    held += [limiter.take(t) for t in ("b", "c", "d")]  # newcomers get them
    with pytest.raises(Busy, match="busy with other selections"):
        limiter.take("e")
    for place in held:
        place.release()
    # alone, a trainer reaches its own limit when the scheduler sizes the kept places
    scheduler = FairScheduler(workers=2, queue=4, per_trainer=6)
    try:
        places = [scheduler.reserve("a") for _ in range(6)]
        for place in places:
            place.release()
    finally:
        scheduler.close()


class _FakeContext:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_watchdog_cancels_only_calls_without_progress():
    dog = Watchdog(period=0.02)
    try:
        busy, stalled, long = _FakeContext(), _FakeContext(), _FakeContext()
        w_busy = dog.watch(busy, "busy", idle=0.3)
        w_stalled = dog.watch(stalled, "stalled", idle=0.3)
        dog.watch(long, "long", idle=10, total=0.4)
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            w_busy.touch()
            time.sleep(0.02)
        assert stalled.cancelled.is_set() and "no progress" in w_stalled.expired
        assert long.cancelled.is_set()
        assert not busy.cancelled.is_set()
        w_busy.close()
        assert dog.active() == 0
    finally:
        dog.close()


def test_scheduler_places_are_given_back_after_errors():
    scheduler = FairScheduler(workers=2, queue=0, per_trainer=2)
    try:

        def boom() -> None:
            raise ValueError("x")

        futures = [scheduler.submit(scheduler.reserve("a"), boom) for _ in range(2)]
        for f in futures:
            with pytest.raises(ValueError):
                f.result(5)
        assert wait_until(lambda: scheduler.places.in_use() == 0, 5)
    finally:
        scheduler.close()
