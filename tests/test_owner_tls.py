"""TLS and mutual TLS: certificates made in the test with openssl (skipped without it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from helpers_grpc import OwnerClient, digits_data, owner_config, running_owner, status_of

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is not installed: cannot make test certs"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key_and_csr(d: Path, name: str, cn: str) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    _openssl(
        "req", "-new", "-key", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d
    )


def _sign(d: Path, name: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext + "\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        cwd=d,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=mycroft-test-ca",
        cwd=d,
    )
    _key_and_csr(d, "owner", "localhost")
    _sign(d, "owner", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    for name in ("alice", "mallory"):
        _key_and_csr(d, name, name)
        _sign(d, name, "extendedKeyUsage=clientAuth")
    return d


def _channel(certs: Path, port: int, client: str | None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
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
