"""The owner over real gRPC on loopback: describe, upload, select, budget, retries, auth."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers_grpc import (
    TOKENS,
    OwnerClient,
    digits_data,
    embedded_request,
    owner_config,
    raw_request,
    running_owner,
    status_of,
    tiny_model_bytes,
)

from moe.io import model_from_bytes, model_sha256
from moe.train import embed_numpy
from mycroft import wire
from mycroft.v1 import owner_pb2 as pb
from owner_node.models import trainer_key
from selection.base import Head
from selection.last_layer_grads import last_layer_gradients

HARD_CLASSES = (3, 8)


@pytest.fixture(scope="module")
def hard():
    """D_hard: 24 rows of classes 3 and 8 from the test split (never the owner's rows)."""
    test = digits_data("test")
    idx = np.flatnonzero(np.isin(test.labels, HARD_CLASSES))[:24]
    return test.features[idx], test.labels[idx]


@pytest.fixture(scope="module")
def model_bytes(data):
    return tiny_model_bytes(data)


@pytest.fixture(scope="module")
def owner(tmp_path_factory, data, model_bytes):
    config = owner_config(tmp_path_factory.mktemp("owner"))
    with running_owner(config, data) as (server, port):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        for name in TOKENS:  # models belong to their uploader: every trainer uploads its own
            assert OwnerClient.of(channel, name).upload(model_bytes).present
        yield server, channel
        channel.close()


def client(owner, name: str | None) -> OwnerClient:
    return OwnerClient(owner[1], TOKENS[name] if name else None)


def test_health_reports_serving(owner):
    stub = health_pb2_grpc.HealthStub(owner[1])
    for service in ("", "mycroft.v1.DataOwner"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_describe(owner, data):
    d = client(owner, "alice").describe()
    assert d.protocol_version == "mycroft.v1"
    assert d.owner_name == "test-owner"
    assert d.row_count == len(data)
    assert list(d.input_shape) == [1, 8, 8]
    assert list(d.class_names) == list(data.class_names)
    assert sum(d.class_counts) == len(data)
    assert {"random", "feature", "gradient", "funcfeat", "full"} <= set(d.methods)
    assert d.trainer_id == "alice"
    assert d.budget.cap == 1000


def test_upload_has_model_and_cache(owner, data, model_bytes):
    server, _ = owner
    alice = client(owner, "alice")
    sha = model_sha256(model_bytes)
    status = alice.has_model(sha)
    assert status.present and status.size == len(model_bytes)
    stored = server.engine.models.path("alice", sha)
    assert stored.read_bytes() == model_bytes
    other = tiny_model_bytes(data, seed=7)
    assert not alice.has_model(model_sha256(other)).present
    assert alice.upload(other, chunk=1000).present  # many small chunks
    assert alice.has_model(model_sha256(other)).present
    assert not list(stored.parent.glob(".upload-*"))  # no temp files left behind


def test_upload_rejects_bad_models(owner, data, model_bytes):
    alice = client(owner, "alice")
    with pytest.raises(grpc.RpcError) as e:
        alice.upload(model_bytes, sha="0" * 64)
    assert status_of(e)[0] == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in status_of(e)[1]
    garbage = b"not a safetensors file" * 10
    with pytest.raises(grpc.RpcError) as e:
        alice.upload(garbage)
    assert status_of(e)[0] == grpc.StatusCode.INVALID_ARGUMENT
    tabular = data.subset(np.arange(10))
    tabular = type(tabular)(
        features=tabular.features.reshape(10, 64),
        labels=tabular.labels,
        class_names=tabular.class_names,
        row_ids=tabular.row_ids,
    )
    with pytest.raises(grpc.RpcError) as e:
        alice.upload(tiny_model_bytes(tabular))  # (64,) inputs: does not fit (1, 8, 8) rows
    code, details = status_of(e)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "input_shape" in details
    with pytest.raises(grpc.RpcError) as e:
        alice.has_model("not-hex")
    assert status_of(e)[0] == grpc.StatusCode.INVALID_ARGUMENT


def _check_rows(got, data, budget):
    assert 0 < len(got.row_ids) <= budget
    assert len(set(got.row_ids.tolist())) == len(got.row_ids)
    pos = {int(r): i for i, r in enumerate(data.row_ids)}
    index = np.array([pos[int(r)] for r in got.row_ids])  # KeyError: not an owner id
    np.testing.assert_array_equal(got.labels, data.labels[index])
    np.testing.assert_array_equal(got.features, data.features[index])
    assert set(got.labels.tolist()) <= set(HARD_CLASSES)
    assert got.summary.rows_sent == len(got.row_ids)
    assert np.isfinite(got.scores).all()


@pytest.mark.parametrize("method", ["random", "feature", "gradient", "funcfeat", "binning"])
def test_select_raw_mode(owner, data, hard, model_bytes, method):
    got = client(owner, "alice").select(
        raw_request(f"raw-{method}", method, 10, model_sha256(model_bytes), *hard)
    )
    _check_rows(got, data, 10)
    assert not got.summary.replayed
    assert got.summary.new_rows_charged <= len(got.row_ids)
    assert got.summary.budget.cap == 1000
    assert "total" in got.summary.timings


@pytest.mark.parametrize("method", ["feature", "gradient", "funcfeat"])
def test_select_embeddings_only_mode(owner, data, hard, model_bytes, method):
    model = model_from_bytes(model_bytes)
    emb = embed_numpy(model, hard[0], batch_size=64)
    w, b = model.head_weights()
    grads = last_layer_gradients(emb, hard[1], Head(w, b))
    bob = client(owner, "bob")
    got = bob.select(
        embedded_request(
            f"emb-{method}", method, 12, model_sha256(model_bytes), emb, grads, hard[1]
        )
    )
    _check_rows(got, data, 12)
    # the same D_hard sent raw picks the same rows: the owner embeds exactly like the trainer
    raw = bob.select(raw_request(f"emb-raw-{method}", method, 12, model_sha256(model_bytes), *hard))
    np.testing.assert_array_equal(np.sort(raw.row_ids), np.sort(got.row_ids))


def test_budget_cap_across_requests(owner, data, hard, model_bytes):
    carol = client(owner, "carol")  # cap 12
    sha = model_sha256(model_bytes)
    seen: set[int] = set()
    first = carol.select(raw_request("c1", "feature", 8, sha, *hard))
    assert first.summary.new_rows_charged == 8 and first.summary.budget.left == 4
    seen |= set(first.row_ids.tolist())
    # A request asks for at most the rows left (4): the best 4 of the same ranking, all seen
    # before, so free; the summary blames the cap, never a count of rows left out.
    again = carol.select(raw_request("c2", "feature", 8, sha, *hard))
    np.testing.assert_array_equal(again.row_ids, first.row_ids[:4])
    assert again.summary.new_rows_charged == 0 and again.summary.budget.left == 4
    assert again.summary.shortfall_reason == (
        "budget cap: 4 of the trainer's rows were left for this request"
    )
    third = carol.select(raw_request("c3", "random", 10, sha, *hard, seed=1))
    seen |= set(third.row_ids.tolist())
    assert len(third.row_ids) == 4 and third.summary.new_rows_charged <= 4
    assert "cut" not in third.summary.shortfall_reason
    assert len(seen) <= 12
    ledger = carol.ledger()
    assert ledger.budget.used == len(seen) and ledger.budget.cap == 12
    assert [e.request_id for e in ledger.entries] == ["c1", "c2", "c3"]
    # fill the cap, then ask for a class none of carol's rows belong to: nothing can be sent
    if carol.ledger().budget.left > 0:
        seen |= set(carol.select(raw_request("c4", "random", 12, sha, *hard, seed=2)).row_ids)
    assert carol.ledger().budget.left == 0 and len(seen) == 12
    revealed_classes = set(data.labels[np.isin(data.row_ids, list(seen))].tolist())
    fresh = next(c for c in range(10) if c not in revealed_classes | set(HARD_CLASSES))
    test = digits_data("test")
    idx = np.flatnonzero(test.labels == fresh)[:5]
    with pytest.raises(grpc.RpcError) as e:
        carol.select(raw_request("c5", "random", 5, sha, test.features[idx], test.labels[idx]))
    assert status_of(e)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client(owner, "carol").ledger().budget.used <= 12


def test_zero_cap_is_resource_exhausted(owner, hard, model_bytes):
    with pytest.raises(grpc.RpcError) as e:
        client(owner, "dave").select(
            raw_request("d1", "random", 5, model_sha256(model_bytes), *hard)
        )
    assert status_of(e)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_idempotent_retry(owner, hard, model_bytes):
    alice = client(owner, "alice")
    request = raw_request("retry-1", "gradient", 10, model_sha256(model_bytes), *hard)
    first = alice.select(request)
    used = alice.ledger().budget.used
    second = alice.select(request)
    np.testing.assert_array_equal(second.row_ids, first.row_ids)
    np.testing.assert_array_equal(second.scores, first.scores)
    np.testing.assert_array_equal(second.features, first.features)
    assert second.summary.replayed and not first.summary.replayed
    assert second.summary.new_rows_charged == 0
    assert alice.ledger().budget.used == used
    assert [e.request_id for e in alice.ledger().entries].count("retry-1") == 1
    changed = raw_request("retry-1", "gradient", 11, model_sha256(model_bytes), *hard)
    with pytest.raises(grpc.RpcError) as e:
        alice.select(changed)
    code, details = status_of(e)
    assert code == grpc.StatusCode.ALREADY_EXISTS and "retry-1" in details


def test_missing_or_wrong_token_is_unauthenticated(owner):
    for c in (client(owner, None), OwnerClient(owner[1], "wrong-token-0123456789")):
        with pytest.raises(grpc.RpcError) as e:
            c.describe()
        assert status_of(e)[0] == grpc.StatusCode.UNAUTHENTICATED
    stub = client(owner, None).stub
    with pytest.raises(grpc.RpcError) as e:
        stub.Describe(pb.DescribeRequest(), metadata=(("authorization", "Basic abc"),))
    assert status_of(e)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_other_trainers_ledger_is_permission_denied(owner):
    alice = client(owner, "alice")
    assert alice.ledger("alice").trainer_id == "alice"
    for other in ("bob", "nobody"):
        with pytest.raises(grpc.RpcError) as e:
            alice.ledger(other)
        assert status_of(e)[0] == grpc.StatusCode.PERMISSION_DENIED


def _malformed(sha, hard):
    """(case, request, expected status, what the details must name)."""
    feats, labels = hard
    nan = feats.copy()
    nan[0, 0, 0, 0] = np.nan
    bad_labels = labels.copy()
    bad_labels[0] = 10
    emb = np.zeros((len(labels), 9), np.float32)  # the model's embed_dim is 8
    grads = np.zeros((len(labels), 10 * 9 + 1), np.float32)
    ok_emb = np.zeros((len(labels), 8), np.float32)

    def raw(rid="m", method="feature", budget=5, model=sha, x=feats, y=labels, **kw):
        return raw_request(rid, method, budget, model, x, y, **kw)

    def embedded(method, embeddings, gradients):
        return embedded_request("m", method, 5, sha, embeddings, gradients, labels)

    bytes_short = raw()
    bytes_short.raw.features.data = bytes_short.raw.features.data[:-4]
    bad = "INVALID_ARGUMENT"
    no_hard = pb.SelectRequest(request_id="m", method="feature", budget=5, model_sha256=sha)
    return [
        ("wrong dtype", raw(x=feats.astype(np.float64)), bad, "hard_set.raw.features"),
        ("bad shape", raw(x=feats.reshape(len(feats), 64)), bad, "hard_set.raw.features"),
        ("byte count", bytes_short, bad, "hard_set.raw.features"),
        ("nan", raw(x=nan), bad, "hard_set.raw.features"),
        ("label range", raw(y=bad_labels), bad, "hard_set.raw.labels"),
        ("label count", raw(y=labels[:-1]), bad, "hard_set.raw.labels"),
        ("unknown method", raw(method="magic"), bad, "method"),
        ("zero budget", raw(budget=0), bad, "budget"),
        ("huge budget", raw(budget=10**9), bad, "budget"),
        ("no request id", raw(rid=""), bad, "request_id"),
        ("long request id", raw(rid="x" * 500), bad, "request_id"),
        ("unknown param", raw(params={"zz": 1}), bad, "params.zz"),
        ("unknown model", raw(model="ab" * 32), "NOT_FOUND", "upload it first"),
        ("bad model hash", raw(model="xyz"), bad, "model_sha256"),
        ("no hard set", no_hard, bad, "hard_set"),
        ("embedding dim", embedded("feature", emb, None), bad, "hard_set.embedded.embeddings"),
        ("gradient dim", embedded("gradient", ok_emb, grads), bad, "hard_set.embedded.gradients"),
        ("binning without raw rows", embedded("binning", ok_emb, None), bad, "hard_set"),
    ]


def test_malformed_requests_name_the_field(owner, hard, model_bytes):
    alice = client(owner, "alice")
    used = alice.ledger().budget.used
    for name, request, code, field in _malformed(model_sha256(model_bytes), hard):
        with pytest.raises(grpc.RpcError) as e:
            alice.select(request)
        got_code, details = status_of(e)
        assert got_code.name == code, f"{name}: {got_code.name} {details}"
        assert field in details, f"{name}: {details!r} does not name {field}"
        assert "Traceback" not in details
    assert alice.ledger().budget.used == used  # nothing was charged


def test_rows_travel_in_bounded_chunks(owner, data, hard, model_bytes):
    got = client(owner, "bob").select(
        raw_request("full-1", "full", 64, model_sha256(model_bytes), *hard)
    )
    assert len(got.row_ids) == got.summary.rows_sent
    per_row = 64 * 4 + 20
    assert got.chunks == -(-len(got.row_ids) * per_row // wire.CHUNK_BYTES)


def test_owner_embeddings_and_indexes_are_cached(owner, data, hard, model_bytes):
    server, _ = owner
    sha = model_sha256(model_bytes)
    alice = client(owner, "alice")
    alice.select(raw_request("cache-1", "feature", 5, sha, *hard))
    folder = server.engine.config.owner.state_dir / "embeddings" / trainer_key("alice")
    files = list(folder.glob(f"{sha}-*.npy"))
    assert len(files) == 1
    cached = np.load(files[0], allow_pickle=False)
    model = model_from_bytes(model_bytes)
    np.testing.assert_allclose(cached, embed_numpy(model, data.features, 256), atol=1e-5)
    loaded = server.engine.models.get("alice", sha)
    indexes = [c for c in loaded.cache.values() if hasattr(c, "builds")]
    assert len(indexes) == 1
    builds = indexes[0].builds
    alice.select(raw_request("cache-2", "feature", 7, sha, *hard, seed=3))
    assert indexes[0].builds == builds  # per-class FAISS indexes built once per model
