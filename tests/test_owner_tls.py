"""TLS and mutual TLS, with certificates made in the test by trustme (helpers_certs)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from helpers_certs import write_ca, write_leaf, write_pki
from helpers_grpc import TOKENS, OwnerClient, digits_data, owner_config, running_owner, status_of


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """ca.crt, owner.crt/.key, and client certificates for alice and mallory."""
    return write_pki(tmp_path_factory.mktemp("certs"), {"alice": "alice", "mallory": "mallory"})


def _channel(certs: Path, port: int, client: str | None, ca: Path | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=((ca or certs) / "ca.crt").read_bytes(),
        private_key=(certs / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(certs / f"{client}.crt").read_bytes() if client else None,
    )
    return grpc.secure_channel(f"localhost:{port}", creds)


def test_mutual_tls_identifies_trainer_by_certificate(tmp_path, certs):
    tls = {
        "cert": str(certs / "owner.crt"),
        "key": str(certs / "owner.key"),
        "client_ca": str(certs / "ca.crt"),
    }
    config = owner_config(tmp_path, tls=tls, trainers=[{"id": "alice", "cap": 5}])
    with running_owner(config, digits_data()) as (_, port):
        with _channel(certs, port, "alice") as ch:
            d = OwnerClient(ch, None).describe()  # no token: the certificate is the identity
            assert d.trainer_id == "alice" and d.budget.cap == 5
        with _channel(certs, port, "mallory") as ch:  # valid cert, not a configured trainer
            with pytest.raises(grpc.RpcError) as e:
                OwnerClient(ch, None).describe()
            assert status_of(e)[0] == grpc.StatusCode.UNAUTHENTICATED
        with _channel(certs, port, None) as ch:  # no client certificate: handshake refused
            with pytest.raises(grpc.RpcError) as e:
                OwnerClient(ch, None).describe()
            assert status_of(e)[0] == grpc.StatusCode.UNAVAILABLE


def test_server_tls_with_bearer_tokens(tmp_path, certs):
    tls = {"cert": str(certs / "owner.crt"), "key": str(certs / "owner.key")}
    with running_owner(owner_config(tmp_path, tls=tls), digits_data()) as (_, port):
        with _channel(certs, port, None) as ch:
            assert OwnerClient.of(ch, "bob").describe().trainer_id == "bob"
            with pytest.raises(grpc.RpcError) as e:
                OwnerClient(ch, None).describe()
            assert status_of(e)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_client_refuses_an_owner_certificate_from_another_ca(tmp_path, certs):
    other = tmp_path / "other"
    other.mkdir()
    write_ca(other)
    tls = {"cert": str(certs / "owner.crt"), "key": str(certs / "owner.key")}
    with running_owner(owner_config(tmp_path, tls=tls), digits_data()) as (_, port):
        with _channel(certs, port, None, ca=other) as ch:  # trusts only the other CA
            with pytest.raises(grpc.RpcError) as e:
                OwnerClient.of(ch, "bob").describe()
            assert status_of(e)[0] == grpc.StatusCode.UNAVAILABLE


def test_trainer_checks_the_configured_server_name(tmp_path, certs):
    """An owner reached by address whose certificate names a host: `server_name` says which."""
    from trainer_node.client import OwnerClient as TrainerClient
    from trainer_node.client import OwnerError
    from trainer_node.config import ClientSettings, OwnerEndpoint, TlsSettings

    cert, key = write_leaf(tmp_path, write_ca(tmp_path), "named", "owner.internal")
    tls = {"cert": str(cert), "key": str(key)}
    with running_owner(owner_config(tmp_path, tls=tls), digits_data()) as (_, port):

        def describe(server_name: str | None) -> str:
            endpoint = OwnerEndpoint(
                name="o1",
                address=f"127.0.0.1:{port}",
                token=TOKENS["bob"],
                tls=TlsSettings(ca_cert=tmp_path / "ca.crt", server_name=server_name),
                deadline_seconds=10.0,
            )
            with TrainerClient(endpoint, ClientSettings(retries=0)) as client:
                return client.describe().trainer_id

        assert describe("owner.internal") == "bob"
        with pytest.raises(OwnerError) as e:
            describe(None)  # 127.0.0.1 is not a name the certificate holds
        assert e.value.code == "UNAVAILABLE"
