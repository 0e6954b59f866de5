"""`--log-format json` / MYCROFT_LOG_FORMAT: every line one JSON object, with the owner, trainer
and request it concerns; text stays today's format."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from helpers_grpc import (
    TOKENS,
    OwnerClient,
    acquire_context,
    owner_config,
    raw_request,
    running_owner,
)

from moe.io import model_sha256
from mycroft import logs
from owner_node import rpc
from trainer_node.acquire import acquire_all
from trainer_node.config import ClientSettings, OwnerEndpoint

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"ts", "level", "logger", "message"}


@pytest.fixture
def json_logs(capsys):
    """Call it to configure logging as `--log-format json` onto pytest's captured stderr (in
    the test's body: the capture's stream changes between a fixture and the test); it returns
    a function giving every line logged so far, parsed (a line not JSON fails the test)."""
    root = logging.getLogger()
    level = root.level

    def start():
        logs.configure(logging.INFO, "json")

        def read() -> list[dict]:
            parsed = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
            for entry in parsed:
                assert REQUIRED <= entry.keys(), entry
            return parsed

        return read

    yield start
    ours = [h for h in root.handlers if h.get_name() == "mycroft"]
    for handler in ours:
        root.removeHandler(handler)
    logs.set_process_fields(owner=None)
    root.setLevel(level)


def test_json_line_fields_and_exception(json_logs):
    json_lines = json_logs()
    log = logging.getLogger("mycroft.test")
    with logs.bound(owner="o1", trainer_id="t1", request_id="r1"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed %s", "here")
    log.info("after")
    failed, after = json_lines()
    assert failed["level"] == "ERROR" and failed["logger"] == "mycroft.test"
    assert failed["message"] == "failed here"
    assert (failed["owner"], failed["trainer_id"], failed["request_id"]) == ("o1", "t1", "r1")
    assert "ValueError: boom" in failed["exception"]
    assert failed["ts"].endswith("Z") and "T" in failed["ts"]
    assert "owner" not in after and "exception" not in after  # the block's fields ended with it


def test_owner_calls_log_owner_trainer_and_request(tmp_path, data, model, json_logs, monkeypatch):
    # Refusals are folded, one line per RPC and code a second, process-wide: start afresh.
    monkeypatch.setattr(rpc, "_refusals", rpc._RefusalLog())
    json_lines = json_logs()
    config = owner_config(tmp_path)
    with running_owner(config, data) as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        alice = OwnerClient.of(ch, "alice")
        alice.upload(model)
        features, labels = data.features[:4], data.labels[:4]
        alice.select(raw_request("good-1", "random", 5, model_sha256(model), features, labels))
        with pytest.raises(grpc.RpcError):  # refused after its request id is known
            alice.select(raw_request("bad-1", "no-such-method", 5, "", features, labels))
        with pytest.raises(grpc.RpcError):
            OwnerClient(ch, "not-a-token-0123456789").describe()
    lines = json_lines()  # each one parsed: nothing but JSON reached stderr
    in_calls = [e for e in lines if e["logger"] == "owner_node.service"]
    upload = next(e for e in in_calls if e["message"].startswith("upload "))
    select = next(e for e in in_calls if e["message"].startswith("select "))
    refused = next(e for e in in_calls if "request=bad-1" in e["message"])
    intruder = next(e for e in in_calls if "UNAUTHENTICATED" in e["message"])
    for entry in (upload, select, refused, intruder):
        assert entry["owner"] == "test-owner"
    for entry in (upload, select, refused):
        assert entry["trainer_id"] == "alice"
    assert "trainer_id" not in intruder  # never identified
    assert refused["request_id"] == "bad-1"
    assert "request=good-1" in select["message"]  # the text keeps what it said before


def test_trainer_threads_carry_trainer_and_owner(data, json_logs):
    json_lines = json_logs()

    class Unreachable:
        def __init__(self, endpoint: OwnerEndpoint, _settings: ClientSettings):
            self.name = endpoint.name

        def __enter__(self):
            return self

        def __exit__(self, *_exc) -> None:
            pass

        def describe(self):
            logging.getLogger("trainer_node.test").warning("asking %s", self.name)
            raise RuntimeError("no owner here")

    owners = [
        OwnerEndpoint(name=name, address="127.0.0.1:1", token=TOKENS["alice"])
        for name in ("north", "south")
    ]
    ctx = acquire_context(data, b"model", ("random",), (5,), "run-1")
    with logs.bound(trainer_id="t9"):
        outcomes = acquire_all(owners, ClientSettings(), ctx, make_client=Unreachable)
    assert not any(o.ok for o in outcomes)
    lines = json_lines()
    for name in ("north", "south"):
        asked = next(e for e in lines if e["message"] == f"asking {name}")
        failed = next(e for e in lines if e["message"] == f"owner={name} unexpected failure")
        assert asked["owner"] == failed["owner"] == name
        assert asked["trainer_id"] == failed["trainer_id"] == "t9"
        assert "RuntimeError: no owner here" in failed["exception"]


def _mycroft(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mycroft", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _owner_toml(tmp_path: Path) -> Path:
    path = tmp_path / "owner.toml"
    path.write_text(
        '[owner]\nname = "east"\nlisten = "127.0.0.1:0"\nstate_dir = "state"\n'
        '[data]\nsource = "digits"\n'
        f'[[trainers]]\nid = "alice"\ntoken = "{TOKENS["alice"]}"\n'
    )
    return path


def test_cli_error_is_a_json_line_and_a_bad_format_is_named(tmp_path):
    config = _owner_toml(tmp_path)
    inspect = _mycroft("owner", "inspect", "--config", str(config), env={logs.ENV_VAR: "json"})
    out, err = inspect.communicate(timeout=120)
    assert inspect.returncode == 2
    (entry,) = [json.loads(line) for line in err.splitlines()]
    assert entry["level"] == "ERROR"
    assert entry["message"].startswith("mycroft: error: owner.state_dir: no ledger")
    bad = _mycroft("owner", "inspect", "--config", str(config), env={logs.ENV_VAR: "xml"})
    out, err = bad.communicate(timeout=120)
    assert bad.returncode == 2
    assert err.strip() == "mycroft: error: MYCROFT_LOG_FORMAT: must be one of text, json, got 'xml'"


def test_owner_serve_logs_json_lines_with_its_name(tmp_path):
    config = _owner_toml(tmp_path)
    serve = _mycroft("--log-format", "json", "owner", "serve", "--config", str(config))
    try:
        deadline = time.monotonic() + 300
        lines = []
        while time.monotonic() < deadline:
            line = serve.stderr.readline()
            assert line, f"owner exited: {serve.wait(10)}"
            lines.append(json.loads(line))
            if "serving" in lines[-1]["message"]:
                break
        time.sleep(1.0)  # run_owner installs its signal handlers just after that line
        serve.send_signal(signal.SIGTERM)
        rest = serve.communicate(timeout=60)[1]
    finally:
        serve.kill()
    lines += [json.loads(line) for line in rest.splitlines()]
    assert serve.returncode == 0
    assert all(REQUIRED <= e.keys() and e["owner"] == "east" for e in lines)
    assert any(e["message"] == "owner stopped" for e in lines)
    assert all(e["ts"].endswith("Z") for e in lines)


def test_lines_follow_stderr_when_it_is_replaced(monkeypatch):
    """A notebook (or a test) that swaps sys.stderr and closes the old stream still gets the
    lines, and no "I/O operation on closed file" error."""
    import io

    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        logs.configure(logging.INFO, "json")
        first.close()
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("mycroft.test").info("after the swap")
        (line,) = second.getvalue().splitlines()
        assert json.loads(line)["message"] == "after the swap"
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "mycroft"]:
            root.removeHandler(handler)
