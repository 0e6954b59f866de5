"""scripts/make_dev_certs.sh: private keys readable by their owner alone, certificates by all,
and file names that the example configs use as they are."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from owner_node.config import load_config as load_owner_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_dev_certs.sh"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def make_certs(out: Path, *names: str) -> None:
    # The caller's usual umask 022 would leave new files world-readable: the script must not
    # depend on it.
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out), *names],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert result.returncode == 0, result.stderr


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_keys_are_private_and_certificates_readable(tmp_path):
    out = tmp_path / "certs"
    make_certs(out, "owner-a", "--", "trainer-1")
    found = modes(out)
    keys = {"ca.key", "owner-a.key", "trainer-1.key"}
    certs = {"ca.pem", "owner-a.pem", "trainer-1.pem"}
    assert keys | certs <= set(found)
    for name in keys:
        assert found[name] == 0o600, f"{name}: {oct(found[name])}"
    for name in certs:
        assert found[name] == 0o644, f"{name}: {oct(found[name])}"
    # Nothing else it leaves behind (the CA's serial counter) is readable by others either.
    for name in set(found) - certs:
        assert found[name] & 0o077 == 0, f"{name}: {oct(found[name])}"
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            out / "ca.pem",
            out / "owner-a.pem",
            out / "trainer-1.pem",
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_rerun_closes_keys_an_older_run_left_world_readable(tmp_path):
    out = tmp_path / "certs"
    make_certs(out, "owner-a", "--", "trainer-1")
    ca_key = (out / "ca.key").read_bytes()
    (out / "ca.key").chmod(0o644)  # what the script used to leave
    make_certs(out, "owner-b", "--", "trainer-1")
    assert (out / "ca.key").read_bytes() == ca_key, "the CA is kept"
    found = modes(out)
    for name in ("ca.key", "owner-a.key", "owner-b.key", "trainer-1.key"):
        assert found[name] == 0o600, f"{name}: {oct(found[name])}"


def test_owner_example_tls_block_names_the_files_the_script_writes(tmp_path):
    """Uncommenting [tls] in examples/owner.toml after the command its comment gives works."""
    examples = tmp_path / "examples"
    examples.mkdir()
    text = (ROOT / "examples" / "owner.toml").read_text()
    command = re.search(r"scripts/make_dev_certs\.sh examples/(\S+) (.*)", text)
    assert command, "examples/owner.toml says how to make its certificates"
    make_certs(examples / command.group(1), *command.group(2).split())
    tls_lines = r"^# (\[tls\]|cert = .*|key = .*|client_ca = .*)$"
    text, count = re.subn(tls_lines, r"\1", text, flags=re.MULTILINE)
    assert count == 4
    # The token file the config names is made by `make example`; any valid token will do here.
    secrets_dir = examples / ".secrets"
    secrets_dir.mkdir()
    (secrets_dir / "owner-a_trainer-1.token").write_text("t" * 32 + "\n")
    (examples / "owner.toml").write_text(text)
    config = load_owner_config(examples / "owner.toml")
    assert config.tls is not None and config.tls.mutual
    assert config.tls.cert.name.endswith(".pem") and config.tls.key.name.endswith(".key")
