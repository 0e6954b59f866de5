"""The owner at run time: selection off the gRPC threads, deadlines, overload, shutdown.

A strategy registered here (not in the node) blocks until released: that also shows a new
strategy plugs in through the registry without any edit of owner_node.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers_grpc import TOKENS, OwnerClient, connected, owner_config, raw_request, status_of

import selection.base
from selection.base import SelectionResult, Strategy, register

ROOT = Path(__file__).resolve().parent.parent


class Blocking(Strategy):
    """Returns the first `budget` candidate rows once `release` is set."""

    started = threading.Event()
    release = threading.Event()

    def select(self, candidates, hard, budget, *, head=None, seed=0) -> SelectionResult:
        Blocking.started.set()
        Blocking.release.wait(30)
        return SelectionResult(candidates.row_ids[:budget], np.ones(budget, dtype=np.float32))


class Broken(Strategy):
    """A strategy with a bug: the owner must answer INTERNAL, not leak a traceback."""

    def select(self, candidates, hard, budget, *, head=None, seed=0) -> SelectionResult:
        raise RuntimeError("secret internal detail")


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """Registered only while this module runs: other tests enumerate the registry."""
    register("test_blocking")(Blocking)
    register("test_broken")(Broken)
    yield
    for name in ("test_blocking", "test_broken"):
        selection.base._REGISTRY.pop(name, None)


@pytest.fixture
def blocking():
    Blocking.started.clear()
    Blocking.release.clear()
    yield Blocking
    Blocking.release.set()


def _config(tmp_path, **owner):
    return owner_config(
        tmp_path, owner=owner, selection={"methods": ["random", "test_blocking", "test_broken"]}
    )


def _request(rid: str, data, method: str = "test_blocking"):
    return raw_request(rid, method, 4, "", data.features[:3], data.labels[:3])


def _in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except grpc.RpcError as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_describe_and_health_respond_while_selecting(tmp_path, data, blocking):
    with connected(_config(tmp_path), data) as (alice, ch):
        t, out = _in_thread(lambda: alice.select(_request("slow-1", data)))
        assert blocking.started.wait(10)
        assert alice.describe().trainer_id == "alice"  # gRPC threads are free
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert "test_blocking" in alice.describe().methods
        blocking.release.set()
        t.join(10)
        assert out["value"].summary.rows_sent == 4


def test_unexpected_error_is_internal_without_details(tmp_path, data, caplog):
    with connected(_config(tmp_path), data) as (alice, _):
        with pytest.raises(grpc.RpcError) as e:
            alice.select(_request("broken-1", data, method="test_broken"))
        code, details = status_of(e)
        assert code == grpc.StatusCode.INTERNAL and "broken-1" in details
        assert "secret" not in details and "Traceback" not in details
        assert alice.ledger().budget.used == 0
    assert any("broken-1" in r.getMessage() and "alice" in r.getMessage() for r in caplog.records)


def test_deadline_then_retry_with_same_request_id(tmp_path, data, blocking):
    with connected(_config(tmp_path), data) as (alice, _):
        with pytest.raises(grpc.RpcError) as e:
            alice.select(_request("late-1", data), timeout=0.5)
        assert status_of(e)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
        assert alice.ledger().budget.used == 0  # nothing charged for an answer never sent
        blocking.release.set()
        got = alice.select(_request("late-1", data))
        assert got.summary.rows_sent == 4 and not got.summary.replayed


def test_full_worker_pool_is_unavailable(tmp_path, data, blocking):
    config = _config(tmp_path, selection_workers=1, selection_queue=0)
    with connected(config, data) as (alice, _):
        t, out = _in_thread(lambda: alice.select(_request("busy-1", data)))
        assert blocking.started.wait(10)
        with pytest.raises(grpc.RpcError) as e:
            alice.select(_request("busy-2", data, method="random"))
        assert status_of(e)[0] == grpc.StatusCode.UNAVAILABLE
        blocking.release.set()
        t.join(10)
        assert "value" in out
        assert alice.select(_request("busy-2", data, method="random")).summary.rows_sent == 4


def test_graceful_stop_finishes_in_flight_selection(tmp_path, data, blocking):
    from owner_node.server import build_server

    server, port = build_server(_config(tmp_path), data)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        alice = OwnerClient.of(ch, "alice")
        t, out = _in_thread(lambda: alice.select(_request("inflight-1", data)))
        assert blocking.started.wait(10)
        closed = server.stop(grace=10)
        time.sleep(0.2)
        blocking.release.set()
        t.join(15)
        assert out.get("value") is not None, out.get("error")
        assert out["value"].summary.rows_sent == 4
        assert closed.wait(15)


def test_python_m_owner_node_runs_and_stops_on_sigterm(tmp_path):
    cfg = tmp_path / "owner.toml"
    cfg.write_text(
        '[owner]\nname = "proc"\nlisten = "127.0.0.1:0"\nstate_dir = "state"\n'
        '[data]\nsource = "digits"\n'
        f'[[trainers]]\nid = "alice"\ntoken = "{TOKENS["alice"]}"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "owner_node", "--config", str(cfg)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            match = re.search(r"on port (\d+)", line)
            port = int(match.group(1)) if match else None
        assert port, "the owner did not report its port"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert OwnerClient.of(ch, "alice").describe().owner_name == "proc"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert (tmp_path / "state" / "ledger.db").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()


def test_bad_config_exits_2_with_message(tmp_path, capsys):
    from owner_node.__main__ import main

    bad = tmp_path / "owner.toml"
    bad.write_text('[owner]\nname = "x"\n[data]\nsource = "digits"\n[[trainers]]\nid = "a"\n')
    assert main(["--config", str(bad)]) == 2
    assert "trainers[0].token" in capsys.readouterr().err
