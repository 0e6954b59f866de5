"""Concurrency: many simultaneous Selects of one trainer against one owner.

Every call must end with a definite answer within its deadline (rows, or a proper status), and
however the calls interleave, the distinct rows revealed to the trainer never exceed its cap and
match the ledger row for row.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest
from helpers_grpc import TOKENS, OwnerClient, digits_data, owner_config, raw_request, running_owner

CALLS = 32
CAP = 96
BUDGET = 3 * CAP // CALLS  # budgets add up to three times the cap
DEFINITE = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}


@dataclass
class Outcome:
    ids: list[int] = field(default_factory=list)
    new_rows: int = 0
    replayed: bool = False
    code: grpc.StatusCode | None = None
    details: str = ""
    attempts: int = 0
    done: bool = False


@pytest.fixture(scope="module")
def hard():
    test = digits_data("test")
    return test.features[:40], test.labels[:40]


def _select_until_definite(client: OwnerClient, request, retry_busy: bool) -> Outcome:
    """One logical request; UNAVAILABLE (owner busy) is retried under the same id when asked."""
    out = Outcome()
    for _ in range(400):
        out.attempts += 1
        try:
            got = client.select(request, timeout=60)
        except grpc.RpcError as e:
            out.code, out.details = e.code(), e.details() or ""
            if out.code == grpc.StatusCode.UNAVAILABLE and retry_busy:
                time.sleep(0.02)
                continue
        else:
            out.code = None
            out.ids = got.row_ids.tolist()
            out.new_rows = int(got.summary.new_rows_charged)
            out.replayed = bool(got.summary.replayed)
        break
    out.done = True
    return out


def _run_all(port: int, requests: list, retry_busy: bool) -> list[Outcome]:
    outcomes = [Outcome() for _ in requests]
    barrier = threading.Barrier(len(requests))

    def worker(i: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            client = OwnerClient.of(ch, "alice")
            barrier.wait(30)  # release all calls at once
            outcomes[i] = _select_until_definite(client, requests[i], retry_busy)

    threads = [
        threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(requests))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a Select call hung"
    assert all(o.done for o in outcomes)
    return outcomes


def _config(tmp_path, queue: int):
    # Each queued selection holds a gRPC thread: max_workers leaves room for uploads and the
    # rest; one trainer may use every place here.
    owner = {
        "max_workers": 2 + queue + 4 + 4,
        "selection_workers": 2,
        "selection_queue": queue,
        "selections_per_trainer": 2 + queue,
    }
    trainers = [{"id": "alice", "token": TOKENS["alice"], "cap": CAP}]
    return owner_config(tmp_path, owner=owner, trainers=trainers)


@pytest.mark.parametrize(
    ("queue", "retry_busy"),
    [(CALLS, False), (6, False), (6, True)],
    ids=["all-queued", "busy-refused", "busy-retried"],
)
def test_concurrent_selects_never_exceed_cap(tmp_path, data, hard, queue, retry_busy) -> None:
    requests = [
        raw_request(f"conc-{i}", "random", BUDGET, "", hard[0], hard[1], seed=i)
        for i in range(CALLS)
    ]
    with running_owner(_config(tmp_path, queue), data) as (server, port):
        outcomes = _run_all(port, requests, retry_busy)
        revealed = server.ledger.revealed("alice")
        audit = server.ledger.audit("alice")
        entries = server.ledger.entries("alice")
    answered = [o for o in outcomes if o.code is None]
    for o in outcomes:
        assert o.code is None or o.code in DEFINITE, o.code
        assert len(o.ids) <= BUDGET and len(set(o.ids)) == len(o.ids)
    received = {r for o in answered for r in o.ids}
    assert len(revealed) <= CAP
    assert received == revealed  # every row that left is charged, every charge was sent
    assert sum(o.new_rows for o in answered) == len(revealed)
    assert len(entries) == len(answered)
    assert sorted(r.row_id for r in audit) == sorted(r for o in answered for r in o.ids)
    busy = [o for o in outcomes if o.code == grpc.StatusCode.UNAVAILABLE]
    if retry_busy:  # every request was served in the end: 3x the cap was asked
        assert len(revealed) == CAP and not busy
    elif queue >= CALLS:
        # The queue holds every call; what is refused is a call that found every row left
        # reserved by the trainer's own calls in flight (a cut would leak; a retry is served).
        assert all("reserved by its own requests in flight" in o.details for o in busy)
        assert answered
    else:
        assert answered, "no call was served at all"


def test_concurrent_retries_of_one_request_id_charge_once(tmp_path, data, hard) -> None:
    request = raw_request("same-id", "random", 20, "", hard[0], hard[1], seed=7)
    with running_owner(_config(tmp_path, 6), data) as (server, port):
        outcomes = _run_all(port, [request] * 16, retry_busy=True)
        entries = server.ledger.entries("alice")
        revealed = server.ledger.revealed("alice")
    assert all(o.code is None for o in outcomes), [o.code for o in outcomes]
    first = outcomes[0].ids
    assert len(first) == 20 and all(o.ids == first for o in outcomes)  # same rows, same order
    assert [e.request_id for e in entries] == ["same-id"]
    assert sum(o.new_rows for o in outcomes) == 20 == len(revealed)
    assert sum(not o.replayed for o in outcomes) >= 1


def test_two_trainers_concurrently_have_separate_caps(tmp_path, data, hard) -> None:
    """Rows revealed to one trainer cost the other nothing, under interleaving."""
    trainers = [{"id": t, "token": TOKENS[t], "cap": 30} for t in ("alice", "bob")]
    config = owner_config(
        tmp_path,
        trainers=trainers,
        owner={"max_workers": 44, "selection_workers": 2, "selection_queue": 34},
    )
    results: dict[str, list[int]] = {"alice": [], "bob": []}
    lock = threading.Lock()
    with running_owner(config, data) as (server, port):

        def worker(name: str, i: int) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                client = OwnerClient.of(ch, name)
                req = raw_request(f"{name}-{i}", "random", 10, "", hard[0], hard[1], seed=i)
                out = _select_until_definite(client, req, retry_busy=True)
            assert out.code in (None, grpc.StatusCode.RESOURCE_EXHAUSTED)
            with lock:
                results[name] += out.ids

        threads = [
            threading.Thread(target=worker, args=(n, i), daemon=True)
            for i in range(8)
            for n in ("alice", "bob")
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads)
        for name in ("alice", "bob"):
            assert set(results[name]) == server.ledger.revealed(name)
            # 80 rows asked each with the same seeds: both reach their own cap of 30
            assert len(server.ledger.revealed(name)) == 30
