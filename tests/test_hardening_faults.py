"""Faults: an owner process SIGKILLed in the middle of Select streams, and slow or dead owners.

The kill test checks what users rely on after a crash: the ledger file is consistent, every row
the trainer saw before the crash was charged first (durable before rows leave), a retry under
the same request id gets exactly the charged rows in the same order, and the distinct rows ever
revealed stay within the cap.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers_grpc import (
    TOKENS,
    acquire_context,
    digits_data,
    owner_config,
    raw_request,
    request_chunks,
    running_owner,
    tiny_model_bytes,
)
from helpers_hardening import SLOW_READER_OPTIONS, OwnerProcess, synthetic_data, write_owner

import selection.base
from mycroft import wire
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc
from owner_node.ledger import Ledger
from selection.base import SelectionResult, Strategy, register

KILLS = 24
CAP = 900  # of 1000 rows: later requests hit the cap, so cuts are crash-tested too
BUDGET = 150  # 150 rows of 16 KiB: three 1 MiB chunks per stream
AUTH = (("authorization", f"Bearer {TOKENS['alice']}"),)


def _read_stream(stub: pb_grpc.DataOwnerStub, request: pb.SelectRequest, pace: float) -> dict:
    """Row ids in arrival order, the summary if it came, the status if the stream broke."""
    out: dict = {"ids": [], "summary": None, "code": None}
    try:
        for msg in stub.Select(request_chunks(request), metadata=AUTH, timeout=60):
            if msg.WhichOneof("payload") == "rows":
                out["ids"] += wire.decode(msg.rows.row_ids, "row_ids", dtype="int64").tolist()
            else:
                out["summary"] = msg.summary
            time.sleep(pace)  # a slow reader: the kill can land between chunks
    except grpc.RpcError as e:
        out["code"] = e.code()
    return out


def _check_ledger_file(db: Path) -> dict[str, list[int]]:
    """Open the dead owner's ledger and check its invariants; request id -> rows, in order."""
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        counted = raw.execute("SELECT used FROM query_usage WHERE trainer = 'alice'").fetchone()
    ledger = Ledger(db, {"alice": CAP})
    try:
        audit = ledger.audit("alice")
        revealed = ledger.revealed("alice")
        entries = ledger.entries("alice")
        state = ledger.budget("alice")
        queries = ledger.query_log("alice")
    finally:
        ledger.close()
    # The query allowance: each computation was charged before it began, so every request
    # whose rows were charged has its query charged, and the counter matches the log.
    assert (counted[0] if counted else 0) == state.queries_used == len(queries)
    assert state.queries_used <= state.queries
    assert {e.request_id for e in entries} <= {q.request_id for q in queries}
    by_request: dict[str, list[int]] = {}
    for record in audit:
        by_request.setdefault(record.request_id, []).append(record.row_id)
    assert state.used == len(revealed) <= CAP
    assert revealed == {r.row_id for r in audit if r.new}
    assert sum(e.new_rows for e in entries) == len(revealed)
    for e in entries:
        rows = by_request.get(e.request_id, [])
        assert len(rows) == e.rows and len(set(rows)) == len(rows), e.request_id
        assert set(rows) <= revealed
    return by_request


@pytest.mark.slow
def test_sigkill_mid_select_keeps_ledger_and_retries_exact(tmp_path: Path) -> None:
    data = synthetic_data(rows=1000, dim=4096, classes=4)
    config = write_owner(
        tmp_path,
        data,
        {"alice": CAP},
        budget={"max_rows_per_request": BUDGET},
        selection={"methods": ["random"]},
    )
    hard = synthetic_data(rows=400, dim=4096, classes=4, seed=1)  # 6.5 MB: parsing takes a while
    rng = np.random.default_rng(1234)
    owner = OwnerProcess(config).start()
    seen: set[int] = set()
    where = Counter()
    queries_before = 0
    try:
        for i in range(KILLS):
            rid = f"kill-{i}"
            request = raw_request(rid, "random", BUDGET, "", hard.features, hard.labels, seed=i)
            timer = threading.Timer(float(rng.uniform(0.0, 0.3)), owner.kill)
            with grpc.insecure_channel(owner.address, options=SLOW_READER_OPTIONS) as ch:
                timer.start()
                first = _read_stream(pb_grpc.DataOwnerStub(ch), request, pace=0.05)
            timer.join()
            assert not owner.alive()
            seen.update(first["ids"])
            charged = _check_ledger_file(tmp_path / "state" / "ledger.db")
            queries_now = _queries_used(tmp_path / "state" / "ledger.db")
            assert queries_now >= queries_before  # a kill never loses a charged query
            if rid in charged:
                assert queries_now > queries_before  # rows were charged: so was the query
            queries_before = queries_now
            where[_moment(first, rid in charged)] += 1
            if rid in charged:  # whatever arrived before the crash is a prefix of the charge
                assert first["ids"] == charged[rid][: len(first["ids"])]
            else:
                assert first["ids"] == [] and first["summary"] is None, "rows left uncharged"

            owner.start()
            with grpc.insecure_channel(owner.address, options=SLOW_READER_OPTIONS) as ch:
                retry = _read_stream(pb_grpc.DataOwnerStub(ch), request, pace=0.0)
            if retry["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert rid not in charged and not retry["ids"]
                continue
            assert retry["code"] is None and retry["summary"] is not None
            assert retry["summary"].replayed == (rid in charged)
            if rid in charged:
                assert retry["ids"] == charged[rid]  # same ids, same order
            assert retry["ids"][: len(first["ids"])] == first["ids"]
            seen.update(retry["ids"])
            assert retry["summary"].budget.used <= CAP
        owner.kill()
        final = _check_ledger_file(tmp_path / "state" / "ledger.db")
        revealed = {r for rows in final.values() for r in rows}
        assert seen <= revealed and len(revealed) <= CAP
    finally:
        owner.kill()
    print(f"kill moments over {KILLS} kills: {dict(where)}")
    # Random delays must put some kills inside the call, not all after the stream ended.
    assert where["before charge"] + where["charged, stream cut"] >= 1, where


def _queries_used(db: Path) -> int:
    ledger = Ledger(db, {"alice": CAP})
    try:
        return ledger.budget("alice").queries_used
    finally:
        ledger.close()


def _moment(first: dict, charged: bool) -> str:
    if not charged:
        return "before charge"
    if first["summary"] is None:
        return "charged, stream cut"
    return "after stream"


# --- slow and dead owners, seen from the trainer ---


class Sleepy(Strategy):
    """The first `budget` rows after a delay; rows with ids >= STUCK_BASE never finish in time."""

    STUCK_BASE = 1_000_000
    release = threading.Event()

    def select(self, candidates, hard, budget, *, head=None, seed=0) -> SelectionResult:
        stuck = int(candidates.row_ids[0]) >= self.STUCK_BASE
        Sleepy.release.wait(120 if stuck else 2.0)
        ids = candidates.row_ids[:budget]
        return SelectionResult(ids, np.ones(len(ids), dtype=np.float32))


@pytest.fixture
def sleepy():
    register("hardening_sleepy")(Sleepy)
    Sleepy.release.clear()
    yield Sleepy
    Sleepy.release.set()
    selection.base._REGISTRY.pop("hardening_sleepy", None)


@pytest.mark.slow
def test_trainer_finishes_with_one_owner_down_one_slow_one_stuck(tmp_path, sleepy) -> None:
    from trainer_node.acquire import acquire_all
    from trainer_node.config import ClientSettings, OwnerEndpoint

    digits = digits_data()
    part = digits.subset(np.arange(300))
    stuck_rows = type(part)(
        part.features, part.labels, part.class_names, part.row_ids + Sleepy.STUCK_BASE, "stuck"
    )
    ctx = acquire_context(digits, tiny_model_bytes(digits), ("hardening_sleepy",), (5,), "faults")
    selection_cfg = {"methods": ["hardening_sleepy", "random"]}
    deadline = 6.0
    with (
        running_owner(owner_config(tmp_path / "slow", selection=selection_cfg), part) as (_, p1),
        running_owner(owner_config(tmp_path / "stk", selection=selection_cfg), stuck_rows) as (
            stuck_server,
            p2,
        ),
    ):
        endpoints = [
            OwnerEndpoint(
                name="down", address="127.0.0.1:1", token=TOKENS["alice"], deadline_seconds=deadline
            ),
            OwnerEndpoint(
                name="slow",
                address=f"127.0.0.1:{p1}",
                token=TOKENS["alice"],
                deadline_seconds=deadline,
            ),
            OwnerEndpoint(
                name="stuck",
                address=f"127.0.0.1:{p2}",
                token=TOKENS["alice"],
                deadline_seconds=deadline,
            ),
        ]
        settings = ClientSettings(retries=1, backoff=0.1, backoff_max=0.2, concurrency=3)
        start = time.monotonic()
        outcomes = acquire_all(endpoints, settings, ctx)
        took = time.monotonic() - start
        sleepy.release.set()  # let the stuck selection end so the server stops promptly
        stuck_used = stuck_server.ledger.budget("alice").used
    by_name = {o.endpoint.name: o for o in outcomes}
    assert list(by_name) == ["down", "slow", "stuck"]  # every owner reported, in config order
    assert by_name["down"].error_code == "UNAVAILABLE" and by_name["down"].error
    slow = by_name["slow"]
    assert slow.ok and len(slow.requests[0].subset) == 5 and slow.budget.used == 5
    assert by_name["stuck"].error_code == "DEADLINE_EXCEEDED"
    # Each owner gets at most (retries + 1) deadlines plus backoff; they run in parallel.
    assert took < 2 * deadline + 10, took
    assert stuck_used == 0  # a selection that never answered charged nothing
