"""OwnerClient against a real owner server on loopback (and a proxy that injects failures)."""

from __future__ import annotations

import contextlib
import hashlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from helpers_grpc import tiny_model_bytes
from scipy.stats import kstest

from mycroft import wire
from mycroft.data import Digits
from mycroft.messages import RawHard, SelectRequestSpec
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc
from owner_node.config import parse_config as owner_config
from owner_node.server import build_server
from trainer_node.client import OwnerClient, OwnerError
from trainer_node.config import ClientSettings, OwnerEndpoint

TOKEN = "trainer-test-token-0123456789"


@pytest.fixture(scope="module")
def digits():
    return Digits().load("train")


@pytest.fixture(scope="module")
def owner(tmp_path_factory, digits):
    tmp = tmp_path_factory.mktemp("owner")
    cfg = owner_config(
        {
            "owner": {"name": "o1", "listen": "127.0.0.1:0", "state_dir": "state"},
            "data": {"source": "digits"},
            "budget": {"default_cap": 500, "max_rows_per_request": 64},
            "trainers": [{"id": "t1", "token": TOKEN}],
        },
        base_dir=tmp,
    )
    server, port = build_server(cfg, digits.subset(np.arange(400)))
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=0.5).wait(10)


@pytest.fixture(scope="module")
def model(digits):
    return tiny_model_bytes(digits)


def client_for(address: str, sleeps: list[float] | None = None, token: str = TOKEN, **settings):
    endpoint = OwnerEndpoint(name="o1", address=address, token=token, deadline_seconds=20)
    s = ClientSettings(**{"retries": 2, "backoff": 0.01, "jitter": 0.0, **settings})
    return OwnerClient(endpoint, s, sleep=sleeps.append if sleeps is not None else None)


def hard_rows(digits) -> RawHard:
    idx = np.flatnonzero(np.isin(digits.labels, [3, 8]))[-10:]
    return RawHard(digits.features[idx], digits.labels[idx])


def spec(rid: str, model: bytes, digits, method: str = "feature", budget: int = 8):
    import hashlib

    sha = hashlib.sha256(model).hexdigest()
    return SelectRequestSpec(rid, method, budget, sha, hard_rows(digits), seed=0)


def test_describe_upload_select_ledger(owner, model, digits):
    with client_for(owner) as c:
        info = c.describe()
        assert info.owner_name == "o1" and info.row_count == 400
        assert info.class_names == digits.class_names and info.input_shape == (1, 8, 8)
        assert "feature" in info.methods and info.budget.cap == 500
        status, uploaded = c.ensure_model(model, chunk_bytes=4096)  # many chunks
        assert status.present and status.size == len(model)
        assert c.ensure_model(model)[1] is False  # cached: no second upload
        sub = c.select(spec("direct-1", model, digits))
        assert len(sub) == 8 and sub.features.shape == (8, 1, 8, 8)
        assert sub.features.dtype == np.float32 and sub.labels.dtype == np.int64
        assert set(sub.labels.tolist()) <= {3, 8}
        assert sub.summary.rows_sent == 8 and sub.summary.new_rows_charged == 8
        assert sub.attempts == 1 and not sub.summary.replayed
        again = c.select(spec("direct-1", model, digits))  # the same request id: a replay
        assert again.summary.replayed and again.summary.new_rows_charged == 0
        np.testing.assert_array_equal(again.row_ids, sub.row_ids)
        ledger = c.ledger()
        assert "direct-1" in [e.request_id for e in ledger.entries]
        assert ledger.budget.used == 8


class FlakyProxy(pb_grpc.DataOwnerServicer):
    """Forwards to the real owner; the first `fail` Selects are answered upstream (and charged)
    and then cut with UNAVAILABLE, as a dropped connection would."""

    def __init__(self, upstream: str, fail: int):
        self.channel = grpc.insecure_channel(upstream)
        self.stub = pb_grpc.DataOwnerStub(self.channel)
        self.fail = fail
        self.select_ids: list[str] = []

    @staticmethod
    def _md(context):
        return [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]

    def _unary(self, name, request, context):
        try:
            return getattr(self.stub, name)(request, metadata=self._md(context), timeout=20)
        except grpc.RpcError as e:
            context.abort(e.code(), e.details())

    def Describe(self, request, context):
        return self._unary("Describe", request, context)

    def HasModel(self, request, context):
        return self._unary("HasModel", request, context)

    def GetLedger(self, request, context):
        return self._unary("GetLedger", request, context)

    def UploadModel(self, request_iterator, context):
        return self._unary("UploadModel", request_iterator, context)

    def Select(self, request_iterator, context):
        chunks = list(request_iterator)  # the request's bytes, in chunks
        request = pb.SelectRequest.FromString(b"".join(c.data for c in chunks))
        self.select_ids.append(request.request_id)
        chunks = list(self.stub.Select(iter(chunks), metadata=self._md(context), timeout=20))
        if self.fail > 0:
            self.fail -= 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected: connection reset")
        yield from chunks


@contextlib.contextmanager
def serve(servicer):
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_DataOwnerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_retry_reuses_request_id_and_is_not_charged_twice(owner, model, digits):
    proxy = FlakyProxy(owner, fail=1)
    sleeps: list[float] = []
    with serve(proxy) as address, client_for(address, sleeps) as c:
        c.ensure_model(model)
        used_before = c.ledger().budget.used
        sub = c.select(spec("retry-1", model, digits))
        assert proxy.select_ids == ["retry-1", "retry-1"]
        assert sub.attempts == 2 and sleeps == [0.01]
        assert len(sub) == 8 and sub.summary.replayed and sub.summary.new_rows_charged == 0
        assert c.ledger().budget.used - used_before <= 8  # charged once, by the first attempt
    proxy.channel.close()


def test_retries_exhausted_on_unreachable_owner():
    sleeps: list[float] = []
    # port 1 on loopback: nothing listens, connection refused -> UNAVAILABLE
    with client_for("127.0.0.1:1", sleeps, retries=2, backoff=0.01) as c:
        with pytest.raises(OwnerError) as info:
            c.describe()
    assert info.value.code == "UNAVAILABLE"
    assert sleeps == [0.01, 0.02]  # exponential backoff between the three attempts


def test_trainers_retrying_a_restarted_owner_spread_their_waits():
    """64 trainers that lose the same owner at the same moment must not come back in step:
    each wait is drawn from [(1 - jitter) * w, w] of its exponential step, per client."""
    waits: list[list[float]] = []
    for _ in range(64):
        sleeps: list[float] = []
        with client_for("127.0.0.1:1", sleeps, retries=3, backoff=0.2, jitter=0.5) as c:
            with pytest.raises(OwnerError):
                c.describe()
        waits.append(sleeps)
    for attempt, ceiling in enumerate((0.2, 0.4, 0.8)):
        step = [w[attempt] for w in waits]
        assert all(ceiling / 2 <= x <= ceiling for x in step), step
        # Spread evenly over the window: a Kolmogorov-Smirnov test against the uniform draw.
        # Waits in step (or bunched) give p ~ 0; a fair draw fails it once in 10^6 runs.
        position = (np.array(step) - ceiling / 2) / (ceiling / 2)
        assert kstest(position, "uniform").pvalue > 1e-6, step


def test_non_retryable_errors_fail_fast(owner, model, digits):
    sleeps: list[float] = []
    with client_for(owner, sleeps, token="wrong-token-0123456789abc") as c:
        with pytest.raises(OwnerError) as info:
            c.describe()
    assert info.value.code == "UNAUTHENTICATED" and sleeps == []
    with client_for(owner, sleeps) as c:
        c.ensure_model(model)
        with pytest.raises(OwnerError) as info:
            c.select(spec("bad-method", model, digits, method="no-such-method"))
        assert info.value.code == "INVALID_ARGUMENT" and info.value.request_id == "bad-method"
        with pytest.raises(OwnerError) as info:
            c.select(spec("no-model", b"not a model we uploaded", digits))
        assert info.value.code in ("NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT")
    assert sleeps == []


class BrokenOwner(pb_grpc.DataOwnerServicer):
    """Answers Select with a malformed stream (`kind` says how)."""

    def __init__(self, kind: str):
        self.kind = kind

    def Select(self, request_iterator, context):
        request = pb.SelectRequest.FromString(b"".join(c.data for c in request_iterator))
        rows = pb.RowsChunk(
            features=wire.encode(np.zeros((2, 1, 8, 8), np.float32)),
            labels=wire.encode(np.array([3, 8], np.int64)),
            row_ids=wire.encode(np.array([5, 6], np.int64)),
            scores=wire.encode(np.ones(2, np.float32)),
        )
        yield pb.SelectChunk(rows=rows)
        if self.kind == "count":
            summary = pb.SelectSummary(request_id=request.request_id, rows_sent=3)
            yield pb.SelectChunk(summary=summary)
        elif self.kind == "after":
            yield pb.SelectChunk(summary=pb.SelectSummary(rows_sent=2))
            yield pb.SelectChunk(rows=rows)


@pytest.mark.parametrize(
    ("kind", "message"),
    [("none", "without a summary"), ("count", "says 3 rows"), ("after", "after the summary")],
)
def test_malformed_streams_are_rejected(kind, message, digits):
    with serve(BrokenOwner(kind)) as address, client_for(address, []) as c:
        with pytest.raises(OwnerError, match=message) as info:
            c.select(spec("x", b"m", digits))
    assert info.value.code == "PROTOCOL"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from helpers_certs import write_pki

    return write_pki(tmp_path_factory.mktemp("certs"), {"trainer": "t1"})


@pytest.mark.parametrize("mutual", [False, True], ids=["tls+token", "mtls"])
def test_tls_and_mutual_tls(tmp_path, certs, digits, mutual):
    from trainer_node.config import TlsSettings

    tls = {"cert": str(certs / "owner.crt"), "key": str(certs / "owner.key")}
    trainer: dict = {"id": "t1"}
    if mutual:
        tls["client_ca"] = str(certs / "ca.crt")  # the certificate is the identity
    else:
        trainer["token"] = TOKEN
    cfg = owner_config(
        {
            "owner": {"name": "o1", "listen": "127.0.0.1:0", "state_dir": "state"},
            "data": {"source": "digits"},
            "trainers": [trainer],
            "tls": tls,
        },
        base_dir=tmp_path,
    )
    server, port = build_server(cfg, digits.subset(np.arange(50)))
    server.start()
    try:
        client_tls = TlsSettings(
            ca_cert=certs / "ca.crt",
            client_cert=certs / "trainer.crt" if mutual else None,
            client_key=certs / "trainer.key" if mutual else None,
        )
        token = None if mutual else TOKEN
        endpoint = OwnerEndpoint(
            name="o1",
            address=f"localhost:{port}",
            token=token,
            tls=client_tls,
            deadline_seconds=10.0,
        )
        with OwnerClient(endpoint, ClientSettings(retries=0)) as c:
            assert c.describe().trainer_id == "t1"
    finally:
        server.stop(grace=0.5).wait(10)


def test_model_evicted_by_the_owners_disk_quota_is_uploaded_again(tmp_path, digits):
    """An owner evicts least recently used models to stay within its disk quota; the trainer's
    next Select with such a model gets NOT_FOUND, uploads it again and is answered."""
    from trainer_node.acquire import _select

    # about 2 MiB each (wide experts): two do not fit a 3 MiB quota
    first, second = (
        tiny_model_bytes(digits, seed, embed_dim=64, num_experts=4, expert_hidden=4096)
        for seed in (0, 1)
    )
    assert 1.5 * 2**20 < len(first) < 2.5 * 2**20
    cfg = owner_config(
        {
            "owner": {
                "name": "o1",
                "listen": "127.0.0.1:0",
                "state_dir": "state",
                "disk_quota_per_trainer_mib": 3,
            },
            "data": {"source": "digits"},
            "trainers": [{"id": "t1", "token": TOKEN}],
        },
        base_dir=tmp_path,
    )
    server, port = build_server(cfg, digits.subset(np.arange(400)))
    server.start()
    try:
        with client_for(f"127.0.0.1:{port}") as c:
            assert c.ensure_model(first)[1]
            assert c.ensure_model(second)[1]  # evicts the first
            assert not c.has_model(hashlib.sha256(first).hexdigest()).present
            with pytest.raises(OwnerError) as e:
                c.select(spec("evicted-1", first, digits))
            assert e.value.code == "NOT_FOUND"
            sub = _select(c, spec("evicted-2", first, digits), first)
            assert len(sub) == 8
            assert c.has_model(hashlib.sha256(first).hexdigest()).present
    finally:
        server.stop(grace=0.5).wait(10)
