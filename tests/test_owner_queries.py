"""The query allowance: every computation over the owner's rows is charged before it starts.

Ledger rules first (charge, reservation, refund, durability, migration), then the owner over
real gRPC: what is charged, what is free, and that a spent allowance stops the caller before any
work is done.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers_grpc import (
    TOKENS,
    acquire_context,
    connected,
    owner_config,
    raw_request,
    running_owner,
    status_of,
    tiny_model_bytes,
)

import selection.base
from owner_node.errors import BudgetExhausted, Busy, QueryAllowanceExhausted
from owner_node.ledger import Ledger
from selection.base import Job, Ranked, Strategy, register

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db", {"t": 10}, {"t": 3})
    yield led
    led.close()


def test_queries_are_charged_and_refused_when_spent(ledger):
    first = ledger.begin_query("t", "r1", kind="select", method="feature", rows=4)
    assert first.rows == 4 and first.budget.queries_used == 1 and first.budget.queries_left == 2
    ledger.end_query(first)
    warm = ledger.begin_query("t", "upload:x", kind="warm", method="", rows=0)
    assert warm.rows == 0
    ledger.end_query(warm)
    ledger.end_query(ledger.begin_query("t", "r2", kind="select", method="random", rows=1))
    with pytest.raises(QueryAllowanceExhausted, match="query allowance"):
        ledger.begin_query("t", "r3", kind="select", method="random", rows=1)
    assert [q.request_id for q in ledger.query_log("t")] == ["r1", "upload:x", "r2"]
    assert ledger.budget("t").queries_left == 0


def test_rows_are_reserved_so_no_answer_needs_a_cut(ledger):
    ledger.charge("t", "seen", "random", list(range(6)))  # 4 rows left
    a = ledger.begin_query("t", "a", kind="select", method="random", rows=3)
    b = ledger.begin_query("t", "b", kind="select", method="random", rows=3)
    assert (a.rows, b.rows) == (3, 1)  # b gets only what a did not reserve
    with pytest.raises(Busy, match="reserved by its own requests in flight"):
        ledger.begin_query("t", "c", kind="select", method="random", rows=1)
    assert ledger.budget("t").queries_used == 2  # the refused one was not charged
    ledger.end_query(a)
    ledger.end_query(b)
    ledger.charge("t", "fill", "random", [6, 7, 8, 9])
    with pytest.raises(BudgetExhausted):
        ledger.begin_query("t", "d", kind="select", method="random", rows=1)
    # a warm-up reveals no row: allowed with the cap spent
    ledger.end_query(ledger.begin_query("t", "upload:y", kind="warm", method="", rows=0))


def test_refund_undoes_a_query_that_never_ran(ledger):
    grant = ledger.begin_query("t", "queued", kind="select", method="random", rows=2)
    ledger.refund_query(grant)
    assert ledger.budget("t").queries_used == 0 and ledger.query_log("t") == []
    again = ledger.begin_query("t", "queued", kind="select", method="random", rows=10)
    assert again.rows == 10  # the refunded query's reservation was released


def test_allowance_from_config_and_kept_when_not_given(tmp_path):
    path = tmp_path / "ledger.db"
    led = Ledger(path, {"t": 5}, {"t": 7})
    led.end_query(led.begin_query("t", "r", kind="select", method="x", rows=1))
    led.close()
    led = Ledger(path, {"t": 5})  # e.g. `owner inspect` with a cap-only mapping
    assert (led.budget("t").queries, led.budget("t").queries_used) == (7, 1)
    led.close()
    led = Ledger(path, {"t": 5, "new": 5}, {"t": 1})  # lowered below what was used
    assert led.budget("t").queries_left == 0
    assert led.budget("new").queries == 100  # the default allowance
    led.close()


def test_query_charge_is_durable_across_a_kill(tmp_path):
    """A query charged in a process that is then killed stays charged."""
    path = tmp_path / "ledger.db"
    script = (
        "import os, signal\n"
        "from owner_node.ledger import Ledger\n"
        f"led = Ledger({str(path)!r}, {{'t': 10}}, {{'t': 5}})\n"
        "led.begin_query('t', 'r1', kind='select', method='random', rows=3)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=False)
    assert proc.returncode == -9
    led = Ledger(path, {"t": 10}, {"t": 5})
    try:
        assert led.budget("t").queries_used == 1 and led.budget("t").left == 10
        assert [q.request_id for q in led.query_log("t")] == ["r1"]
    finally:
        led.close()


def test_a_version_2_ledger_gains_the_allowance(tmp_path):
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE trainers (trainer TEXT PRIMARY KEY, cap INTEGER NOT NULL);"
            "CREATE TABLE revealed (trainer TEXT NOT NULL, row_id INTEGER NOT NULL,"
            " request_id TEXT NOT NULL, PRIMARY KEY (trainer, row_id)) WITHOUT ROWID;"
            "CREATE TABLE usage (trainer TEXT PRIMARY KEY, used INTEGER NOT NULL);"
            "INSERT INTO trainers VALUES ('t', 10);"
            "INSERT INTO revealed VALUES ('t', 1, 'old'), ('t', 2, 'old');"
            "INSERT INTO usage VALUES ('t', 2);"
            "PRAGMA user_version = 2;"
        )
    led = Ledger(path, {"t": 10}, {"t": 4})
    try:
        state = led.budget("t")
        assert (state.used, state.left, state.queries, state.queries_used) == (2, 8, 4, 0)
        led.end_query(led.begin_query("t", "new", kind="select", method="random", rows=1))
        assert led.budget("t").queries_used == 1
    finally:
        led.close()


# --- over gRPC --------------------------------------------------------------------------------


class Counting(Strategy):
    """The first `budget` rows; counts how often it ran."""

    param_constraints: dict = {}
    calls = 0

    def _rank(self, job: Job) -> Ranked:
        Counting.calls += 1
        n = min(job.budget, len(job.candidates))
        return Ranked(np.arange(n), np.ones(n, dtype=np.float32))


class Failing(Strategy):
    """Fails once it holds the owner's rows, with a message no trainer may see."""

    param_constraints: dict = {}

    def _rank(self, job: Job) -> Ranked:
        raise ValueError(f"secret: row {int(job.candidates.row_ids[0])} is special")


@pytest.fixture
def plugins():
    register("test_counting")(Counting)
    register("test_failing")(Failing)
    Counting.calls = 0
    yield
    for name in ("test_counting", "test_failing"):
        selection.base._REGISTRY.pop(name, None)


def test_query_allowance_is_charged_before_work_and_stops_the_caller(
    tmp_path, plugins, data, model
):
    hard = data.features[:4], data.labels[:4]
    config = owner_config(
        tmp_path,
        trainers=[{"id": "alice", "token": TOKENS["alice"], "cap": 100, "queries": 4}],
        selection={"methods": ["test_counting", "test_failing", "random"]},
    )
    with connected(config, data) as (alice, _):
        assert alice.describe().budget.queries_left == 4
        first = raw_request("q1", "test_counting", 3, "", *hard)
        assert len(alice.select(first).row_ids) == 3
        assert Counting.calls == 1 and alice.ledger().budget.queries_used == 1
        replay = alice.select(first)  # a finished request id: answered from the ledger, free
        assert replay.summary.replayed and Counting.calls == 1
        assert alice.ledger().budget.queries_used == 1
        with pytest.raises(grpc.RpcError) as e:  # invalid: refused before any charge
            alice.select(raw_request("q2", "test_counting", 3, "", *hard, params={"x": 1.0}))
        assert status_of(e)[0] == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:  # fails over the rows: one fixed message, paid
            alice.select(raw_request("q3", "test_failing", 3, "", *hard))
        code, details = status_of(e)
        assert code == grpc.StatusCode.INTERNAL and "secret" not in details
        assert "query was charged" in details
        assert alice.ledger().budget.queries_used == 2
        assert alice.upload(model).present  # a new model: its warm-up is one query
        assert alice.ledger().budget.queries_used == 3
        assert alice.upload(model).present  # the same model again: nothing new to compute
        assert alice.ledger().budget.queries_used == 3
        alice.select(raw_request("q4", "random", 2, "", *hard))
        calls = Counting.calls
        with pytest.raises(grpc.RpcError) as e:
            alice.select(raw_request("q5", "test_counting", 3, "", *hard))
        code, details = status_of(e)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "query allowance" in details
        assert Counting.calls == calls  # refused before anything ran
        with pytest.raises(grpc.RpcError) as e:
            alice.upload(tiny_model_bytes(data, seed=3))
        assert status_of(e)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert alice.select(first).summary.replayed  # replays stay free after the allowance
        budget = alice.ledger().budget
        assert (budget.queries, budget.queries_used, budget.queries_left) == (4, 4, 0)


def test_concurrent_copies_of_one_request_compute_once(tmp_path, plugins, data):
    """A retry racing its original waits for it and replays it: one query, one computation."""
    config = owner_config(
        tmp_path,
        trainers=[{"id": "alice", "token": TOKENS["alice"], "cap": 100, "queries": 50}],
        selection={"methods": ["test_counting"]},
    )
    request = raw_request("same", "test_counting", 5, "", data.features[:4], data.labels[:4])
    results: list = []
    with connected(config, data) as (alice, _):
        threads = [
            threading.Thread(target=lambda: results.append(alice.select(request))) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 8
        assert all(r.row_ids.tolist() == results[0].row_ids.tolist() for r in results)
        assert Counting.calls == 1 and alice.ledger().budget.queries_used == 1


def test_trainer_reports_a_spent_query_allowance(tmp_path, caplog, data, model):
    """The trainer warns before it starts and names the allowance when the owner refuses."""
    from trainer_node.acquire import acquire_all
    from trainer_node.config import ClientSettings, OwnerEndpoint

    ctx = acquire_context(data, model, ("random", "feature"), (3, 5), "allowance")
    trainers = [{"id": "alice", "token": TOKENS["alice"], "cap": 100, "queries": 3}]
    with running_owner(owner_config(tmp_path, trainers=trainers), data) as (_, port):
        endpoint = OwnerEndpoint(name="small", address=f"127.0.0.1:{port}", token=TOKENS["alice"])
        (outcome,) = acquire_all([endpoint], ClientSettings(retries=0), ctx)
    assert "query allowance: 3 of 3 left, this run may need up to 5" in caplog.text
    answered = [r for r in outcome.requests if r.subset is not None]
    assert len(answered) == 2  # the upload's warm-up took the first of 3 queries
    refused = outcome.requests[2].error
    assert refused.code == "RESOURCE_EXHAUSTED" and "query allowance" in refused.message
    assert len(outcome.requests) == 3  # the fourth was never sent
    assert outcome.ok and outcome.budget.queries_left == 0  # ranked on what it answered
