"""Test certificates made in memory with trustme: no openssl needed, so TLS tests never skip.

`write_pki` writes what an owner with mutual TLS uses: `ca.crt`, `owner.crt`/`owner.key` for
localhost and 127.0.0.1, and a client certificate per trainer, whose common name the owner reads
as the trainer's identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import trustme


def write_ca(folder: Path) -> trustme.CA:
    """A new certificate authority; its certificate is written as `folder`/ca.crt."""
    ca = trustme.CA(organization_name="mycroft test CA")
    ca.cert_pem.write_to_path(folder / "ca.crt")
    return ca


def write_leaf(
    folder: Path, ca: trustme.CA, name: str, common_name: str, *hosts: str
) -> tuple[Path, Path]:
    """`name`.crt and `name`.key (unencrypted PEM) in `folder`: a certificate `ca` signs for
    `common_name`, valid for the host names or addresses `hosts` (else for the common name)."""
    leaf = ca.issue_cert(*(hosts or (common_name,)), common_name=common_name)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    return cert, key


def write_pki(folder: Path, clients: Mapping[str, str]) -> Path:
    """ca.crt, owner.crt/.key (localhost, 127.0.0.1) and, for each `clients` entry file name ->
    common name, `<file name>`.crt/.key signed by the same CA; returns `folder`."""
    ca = write_ca(folder)
    write_leaf(folder, ca, "owner", "localhost", "localhost", "127.0.0.1")
    for name, common_name in clients.items():
        write_leaf(folder, ca, name, common_name)
    return folder
