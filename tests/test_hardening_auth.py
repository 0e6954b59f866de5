"""Authentication: callers without valid credentials get nothing, and no row leaves for them.

Each refused call is checked at two ends: the caller receives no row chunk before its error, and
the owner's ledger (audit table, requests, revealed rows) stays empty for every trainer.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers_certs import write_ca, write_leaf
from helpers_grpc import (
    CAPS,
    TOKENS,
    OwnerClient,
    owner_config,
    raw_request,
    request_chunks,
    running_owner,
)
from test_owner_tls import certs  # noqa: F401 - certs: fixture

from moe.io import model_sha256
from mycroft.v1 import owner_pb2 as pb
from owner_node.server import OwnerServer


@pytest.fixture(scope="module")
def plain_owner(tmp_path_factory, data) -> Iterator[tuple[OwnerServer, int]]:
    """One owner for the refused-token cases: none of them may leave a trace in it."""
    with running_owner(owner_config(tmp_path_factory.mktemp("plain")), data) as running:
        yield running


def _select_request(data, rid: str) -> pb.SelectRequest:
    return raw_request(rid, "random", 8, "", data.features[:5], data.labels[:5])


def _every_rpc(client: OwnerClient, data, model: bytes) -> dict[str, Callable[[], object]]:
    """One call of each RPC, Select read to its end (the rows it yields are counted)."""
    rows: list[int] = []

    def select() -> object:
        for msg in client.stub.Select(
            request_chunks(_select_request(data, "auth-1")), metadata=client.metadata, timeout=20
        ):
            if msg.WhichOneof("payload") == "rows":
                rows.append(len(msg.rows.labels.data))
        return rows

    return {
        "Describe": client.describe,
        "HasModel": lambda: client.has_model(model_sha256(model)),
        "UploadModel": lambda: client.upload(model),
        "GetLedger": client.ledger,
        "Select": select,
        "_rows": lambda: rows,
    }


def _assert_all_refused(client: OwnerClient, data, model: bytes, code: grpc.StatusCode) -> None:
    calls = _every_rpc(client, data, model)
    rows = calls.pop("_rows")
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == code, (name, e.value.code(), e.value.details())
    assert rows() == [], "a refused Select streamed rows"


def _assert_nothing_left(server: OwnerServer, trainers: Iterator[str] | list[str]) -> None:
    for trainer in trainers:
        assert server.ledger.audit(trainer) == []
        assert server.ledger.entries(trainer) == []
        assert server.ledger.revealed(trainer) == set()
        assert server.ledger.budget(trainer).used == 0
    assert not list(server.engine.models.dir.glob("*.safetensors")), "a refused upload was stored"


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-a-configured-token-000"),),
        (("authorization", f"Bearer {TOKENS['alice']}x"),),  # one character off
        (("authorization", f"Bearer {TOKENS['alice'][:-1]}"),),  # a prefix of a real token
        (("authorization", f"Basic {TOKENS['alice']}"),),  # right secret, wrong scheme
        (("authorization", "Bearer "),),
        (("authorization", TOKENS["alice"]),),  # no scheme at all
        (("x-trainer-id", "alice"),),  # claiming an identity is not proving it
    ],
    ids=["none", "unknown", "suffix", "prefix", "basic", "empty", "bare", "claimed-id"],
)
def test_bad_or_missing_token_is_refused_everywhere(plain_owner, data, model, metadata) -> None:
    server, port = plain_owner
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        client = OwnerClient(ch, None)
        client.metadata = metadata
        _assert_all_refused(client, data, model, grpc.StatusCode.UNAUTHENTICATED)
    _assert_nothing_left(server, list(TOKENS))


def test_a_trainer_cannot_read_another_trainers_ledger_or_budget(tmp_path, data) -> None:
    with running_owner(owner_config(tmp_path), data) as (server, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            bob = OwnerClient.of(ch, "bob")
            got = bob.select(_select_request(data, "bob-1"))
            assert got.summary.rows_sent == 8
            alice = OwnerClient.of(ch, "alice")
            for target in ("bob", "carol", "no-such-trainer"):
                with pytest.raises(grpc.RpcError) as e:
                    alice.ledger(target)
                assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "bob-1" not in (e.value.details() or "")
            # What alice can see is hers alone: her own (empty) ledger and budget.
            mine = alice.ledger()
            assert mine.trainer_id == "alice" and not mine.entries
            assert alice.describe().budget.used == 0 and alice.describe().trainer_id == "alice"
            # Reusing bob's request id is a new, separate request for alice, never bob's rows.
            assert alice.select(_select_request(data, "bob-1")).summary.replayed is False
        assert server.ledger.budget("bob").used == 8
        assert {r.request_id for r in server.ledger.audit("alice")} == {"bob-1"}
        assert len(server.ledger.entries("bob")) == 1
        assert CAPS["dave"] == 0 and server.ledger.budget("dave").used == 0


# --- mutual TLS ---


@pytest.fixture(scope="module")
def rogue_ca(tmp_path_factory) -> Path:
    """Another CA, and a client certificate it signs claiming the CN of a configured trainer."""
    d = tmp_path_factory.mktemp("rogue")
    write_leaf(d, write_ca(d), "alice", "alice")
    return d


def _mtls_channel(ca: Path, client_dir: Path | None, port: int) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(ca / "ca.crt").read_bytes(),
        private_key=(client_dir / "alice.key").read_bytes() if client_dir else None,
        certificate_chain=(client_dir / "alice.crt").read_bytes() if client_dir else None,
    )
    return grpc.secure_channel(f"localhost:{port}", creds)


def test_mutual_tls_refuses_foreign_certificates_and_mismatched_tokens(
    tmp_path,
    certs,  # noqa: F811 - the fixture imported above
    rogue_ca,
    data,
    model,
) -> None:
    tls = {
        "cert": str(certs / "owner.crt"),
        "key": str(certs / "owner.key"),
        "client_ca": str(certs / "ca.crt"),
    }
    trainers = [
        {"id": "alice", "cap": 50},
        {"id": "bob", "cap": 50, "token": TOKENS["bob"]},
        {"id": "mallory-id", "cap": 50, "cert_cn": "nobody"},
    ]
    config = owner_config(tmp_path, tls=tls, trainers=trainers)
    with running_owner(config, data) as (server, port):
        # A certificate signed by another CA, with a configured trainer's name: no handshake.
        with _mtls_channel(certs, rogue_ca, port) as ch:
            _assert_all_refused(OwnerClient(ch, None), data, model, grpc.StatusCode.UNAVAILABLE)
        # No client certificate, even with a valid bearer token: no handshake either.
        with _mtls_channel(certs, None, port) as ch:
            client = OwnerClient.of(ch, "bob")
            _assert_all_refused(client, data, model, grpc.StatusCode.UNAVAILABLE)
        # Trusted certificate of alice + bob's token: the two name different trainers.
        with _mtls_channel(certs, certs, port) as ch:
            client = OwnerClient.of(ch, "bob")
            _assert_all_refused(client, data, model, grpc.StatusCode.PERMISSION_DENIED)
            client = OwnerClient(ch, "unknown-token-0123456789")
            _assert_all_refused(client, data, model, grpc.StatusCode.UNAUTHENTICATED)
        _assert_nothing_left(server, ["alice", "bob", "mallory-id"])
        with _mtls_channel(certs, certs, port) as ch:  # the genuine certificate works
            alice = OwnerClient(ch, None)
            assert alice.select(_select_request(data, "ok-1")).summary.rows_sent == 8
            with pytest.raises(grpc.RpcError) as e:
                alice.ledger("bob")
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert server.ledger.budget("bob").used == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plaintext_health_port_serves_health_only(tmp_path, data, model) -> None:
    """The loopback health port answers probes but exposes none of the owner's service."""
    hport = _free_port()
    config = owner_config(tmp_path, owner={"health_listen": f"127.0.0.1:{hport}"})
    with running_owner(config, data) as (server, _):
        with grpc.insecure_channel(f"127.0.0.1:{hport}") as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            client = OwnerClient.of(ch, "alice")
            _assert_all_refused(client, data, model, grpc.StatusCode.UNIMPLEMENTED)
        _assert_nothing_left(server, list(TOKENS))
