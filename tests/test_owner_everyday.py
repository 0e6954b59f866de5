"""Everyday owner use: listen addresses, a taken port, health probes, the ledger listing.

Each failure a user can fix must be one line `mycroft: error: <field>: ...` (exit 2) with no
gRPC log line around it; these tests start real processes on loopback where that matters.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from helpers_grpc import TOKENS, owner_config, running_owner

from mycroft.cli import main as mycroft_main
from mycroft.errors import ConfigError, MycroftError
from owner_node.config import load_config, parse_config
from owner_node.ledger import Ledger
from owner_node.server import build_server

ROOT = Path(__file__).resolve().parent.parent
SERVE_COMMANDS = {
    "mycroft-owner-serve": ["-m", "mycroft", "owner", "serve", "--config"],
    "python-m-owner_node": ["-m", "owner_node", "--config"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_owner_toml(
    path: Path, listen: str, extra_owner: str = "", tail: str = "", state_dir: str = "state"
) -> Path:
    path.write_text(
        f'[owner]\nname = "second"\nlisten = "{listen}"\nstate_dir = "{state_dir}"\n'
        f"{extra_owner}"
        '[data]\nsource = "digits"\n'
        f'[[trainers]]\nid = "alice"\ntoken = "{TOKENS["alice"]}"\n{tail}'
    )
    return path


def _serve(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    """Run an owner process that is expected to refuse to start (60 s at most)."""
    return subprocess.run(
        [sys.executable, *SERVE_COMMANDS[command], str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mycroft: error: "), result.stderr
    return lines[0]


# --- listen addresses in the config ---


def _owner_raw(**owner: str) -> dict:
    return {
        "owner": {"name": "o", **owner},
        "data": {"source": "digits"},
        "trainers": [{"id": "alice", "token": TOKENS["alice"]}],
    }


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("localhost", "owner.listen: expected host:port, got 'localhost'"),
        (":50051", "owner.listen: expected host:port"),
        ("::1:50051", "owner.listen: expected host:port, got '::1:50051' (put an IPv6 host"),
        ("[::1]", "owner.listen: expected host:port, got '[::1]'"),
        ("localhost:http", "owner.listen: port must be a number from 0 to 65535, got 'http'"),
        ("127.0.0.1:-1", "owner.listen: port must be a number from 0 to 65535, got '-1'"),
        ("127.0.0.1:70000", "owner.listen: port must be a number from 0 to 65535, got '70000'"),
        ("127.0.0.1:" + "9" * 5000, "owner.listen: port must be a number from 0 to 65535"),
    ],
)
def test_listen_must_be_host_and_port(listen, message):
    with pytest.raises(ConfigError) as err:
        parse_config(_owner_raw(listen=listen))
    assert str(err.value).startswith(message)


def test_health_listen_must_be_host_and_port_and_differ_from_listen():
    with pytest.raises(ConfigError, match=r"^owner\.health_listen: expected host:port"):
        parse_config(_owner_raw(health_listen="127.0.0.1"))
    with pytest.raises(ConfigError, match=r"^owner\.health_listen: port must be a number"):
        parse_config(_owner_raw(health_listen="127.0.0.1:65536"))
    same = "127.0.0.1:50051"
    with pytest.raises(ConfigError, match=r"^owner\.health_listen: .* is owner\.listen too"):
        parse_config(_owner_raw(listen=same, health_listen=same))


@pytest.mark.parametrize("listen", ["[::1]:50051", "[::]:0", "127.0.0.1:0", "localhost:65535"])
def test_ipv6_and_port_zero_stay_valid_where_a_bare_host_does_not(listen):
    assert parse_config(_owner_raw(listen=listen)).owner.listen == listen
    bare_host = listen.rpartition(":")[0]  # gRPC would serve it on port 443
    with pytest.raises(ConfigError, match=r"^owner\.listen: expected host:port"):
        parse_config(_owner_raw(listen=bare_host))


# --- a port that is taken, an address that cannot be bound ---


@pytest.mark.parametrize("command", SERVE_COMMANDS)
def test_a_second_owner_on_a_taken_port_is_refused_in_one_line(tmp_path, data, command):
    with running_owner(owner_config(tmp_path), data) as (_, port):
        config = _write_owner_toml(tmp_path / "second.toml", f"127.0.0.1:{port}")
        line = _one_error_line(_serve(command, config))
    assert line == (
        f"mycroft: error: owner.listen: 127.0.0.1:{port} is already in use (another owner node?)"
    )


def test_a_taken_health_port_is_refused(tmp_path, data):
    health_port = _free_port()
    first = owner_config(tmp_path, owner={"health_listen": f"127.0.0.1:{health_port}"})
    second = owner_config(
        tmp_path / "b", owner={"health_listen": f"127.0.0.1:{health_port}", "state_dir": "s2"}
    )
    with running_owner(first, data):
        with pytest.raises(MycroftError) as err:
            build_server(second, data)
    assert str(err.value) == (
        f"owner.health_listen: 127.0.0.1:{health_port} is already in use (another owner node?)"
    )


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        # TEST-NET-1 (RFC 5737): never an address of this machine
        ("192.0.2.1:50051", "owner.listen: cannot listen on 192.0.2.1:50051: "),
        ("127.0.0.1:99999", "owner.listen: port must be a number from 0 to 65535"),
    ],
)
def test_an_unusable_address_is_one_line_without_grpc_logs(tmp_path, listen, message):
    config = _write_owner_toml(tmp_path / "owner.toml", listen)
    line = _one_error_line(_serve("mycroft-owner-serve", config))
    assert line.startswith(f"mycroft: error: {message}"), line


def test_a_state_dir_that_cannot_be_made_is_one_line(tmp_path):
    config = tmp_path / "owner.toml"
    _write_owner_toml(config, "127.0.0.1:0", state_dir="owner.toml/state")  # under a file
    line = _one_error_line(_serve("python-m-owner_node", config))
    assert line == f"mycroft: error: owner.state_dir: cannot create {config}/state: Not a directory"


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    from helpers_certs import write_ca, write_leaf

    return write_leaf(directory, write_ca(directory), name, "x")


@pytest.mark.parametrize("broken", ["cert", "key"])
def test_unusable_tls_files_are_one_line_naming_the_file(tmp_path, broken):
    cert, key = _certificate(tmp_path, "owner")
    if broken == "cert":
        cert.write_text("not a certificate\n")
        message = f"tls.cert: {cert} holds no valid PEM certificate"
    else:
        _, key = _certificate(tmp_path, "other")  # a valid key, of another certificate
        message = f"tls.key: {key} is not the unencrypted PEM private key of tls.cert"
    tls = f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
    config = _write_owner_toml(tmp_path / "owner.toml", "127.0.0.1:0", tail=tls)
    assert _one_error_line(_serve("mycroft-owner-serve", config)) == f"mycroft: error: {message}"


# --- mycroft owner health ---


def _health(capsys, *argv: str) -> tuple[int, str, str]:
    code = mycroft_main(["owner", "health", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_health_reads_only_addresses_not_trainer_secrets(tmp_path, data, capsys, monkeypatch):
    """A probe runs where the trainers' tokens and the TLS files may be absent."""
    monkeypatch.delenv("MYCROFT_TEST_UNSET_TOKEN", raising=False)
    health_port = _free_port()
    config = owner_config(tmp_path, owner={"health_listen": f"127.0.0.1:{health_port}"})
    toml = _write_owner_toml(
        tmp_path / "probe.toml",
        "0.0.0.0:50051",
        extra_owner=f'health_listen = "127.0.0.1:{health_port}"\n',
        tail='[[trainers]]\nid = "bob"\ntoken_env = "MYCROFT_TEST_UNSET_TOKEN"\n'
        '[[trainers]]\nid = "carol"\ntoken_file = "absent-token.txt"\n'
        '[tls]\ncert = "absent.pem"\nkey = "absent.key"\n',
    )
    with running_owner(config, data):
        code, out, err = _health(capsys, "--config", str(toml), "--timeout", "5")
    assert (code, out, err) == (0, f"127.0.0.1:{health_port}: SERVING\n", "")


def test_health_of_a_config_on_port_zero_asks_for_an_address(tmp_path, capsys):
    toml = _write_owner_toml(tmp_path / "o.toml", "127.0.0.1:0")
    code, _, err = _health(capsys, "--config", str(toml))
    assert code == 2
    assert err.startswith("mycroft: error: owner.listen: port 0 is picked at start-up")


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "127.0.0.1:0", "host:port"])
def test_health_address_must_be_host_and_port(capsys, address):
    code, out, err = _health(capsys, "--address", address)
    assert code == 2 and out == ""
    assert err.startswith("mycroft: error: --address: "), err
    assert len(err.splitlines()) == 1


def test_health_address_error_quotes_what_was_given(capsys):
    _, _, err = _health(capsys, "--address", "nonsense")
    assert err == "mycroft: error: --address: expected host:port, got 'nonsense'\n"


def test_health_says_why_nothing_answered(capsys):
    port = _free_port()  # closed again: nothing listens there
    code, out, _ = _health(capsys, "--address", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert code == 1
    assert out.startswith(
        f"127.0.0.1:{port}: not serving: no answer from 127.0.0.1:{port} within 0.5 s "
        "(is the owner running? is it TLS?"
    ), out


def test_health_reports_a_node_that_says_not_serving(tmp_path, data, capsys):
    with running_owner(owner_config(tmp_path), data) as (server, port):
        server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        code, out, _ = _health(capsys, "--address", f"127.0.0.1:{port}")
    assert code == 1
    assert out.startswith(f"127.0.0.1:{port}: not serving: the node reports NOT_SERVING")


# --- mycroft owner inspect ---


def test_inspect_prints_long_request_ids_whole_at_80_columns(tmp_path, capsys, monkeypatch):
    toml = _write_owner_toml(tmp_path / "owner.toml", "127.0.0.1:0")
    request_id = "nightly-" + "0123456789abcdef" * 7 + "-retry-2"  # 128 characters
    assert len(request_id) == 128
    ledger = Ledger(tmp_path / "state" / "ledger.db", {"alice": 100})
    ledger.charge("alice", request_id, "omp", [3, 1, 2])
    ledger.close()
    monkeypatch.setenv("COLUMNS", "80")
    assert mycroft_main(["owner", "inspect", "--config", str(toml)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if request_id in line)
    assert "omp" in line and "…" not in out


def test_inspect_reads_the_ledger_without_trainer_secrets(tmp_path, capsys, monkeypatch):
    """The ledger is read where the node's secrets are not: no token env var, no TLS files."""
    monkeypatch.delenv("MYCROFT_TEST_UNSET_TOKEN", raising=False)
    toml = _write_owner_toml(
        tmp_path / "owner.toml",
        "127.0.0.1:0",
        tail='[[trainers]]\nid = "bob"\ntoken_env = "MYCROFT_TEST_UNSET_TOKEN"\n'
        '[tls]\ncert = "absent.pem"\nkey = "absent.key"\n',
    )
    ledger = Ledger(tmp_path / "state" / "ledger.db", {"alice": 100, "bob": 100})
    ledger.charge("bob", "bob-run-1", "omp", [3, 1, 2])
    ledger.close()
    assert mycroft_main(["owner", "inspect", "--config", str(toml), "--json"]) == 0
    view = {item["trainer"]: item for item in json.loads(capsys.readouterr().out)}
    assert [r["request_id"] for r in view["bob"]["requests"]] == ["bob-run-1"]
    # The server itself still refuses a config whose secrets are missing.
    with pytest.raises(ConfigError, match=r"tls\.cert: file not found"):
        load_config(toml)
