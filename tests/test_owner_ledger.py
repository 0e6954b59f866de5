"""The budget ledger: caps, free re-reveals, idempotent request ids, durability."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owner_node.errors import BudgetExhausted, RequestConflict, UnknownTrainer
from owner_node.ledger import Ledger

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db", {"t": 10, "u": 3})
    yield led
    led.close()


def test_cap_cut_and_free_rereveal(ledger):
    r1 = ledger.charge("t", "r1", "feature", [5, 1, 2, 3], [0.9, 0.8, 0.7, 0.6])
    assert r1.new_rows == 4 and r1.cut == 0 and not r1.replayed
    assert (r1.budget.cap, r1.budget.used, r1.budget.left) == (10, 4, 6)
    # rows 1, 2 were revealed before: free; 8 new rows compete for 6 places, rank decides
    r2 = ledger.charge("t", "r2", "gradient", [1, 20, 21, 2, 22, 23, 24, 25, 26, 27])
    assert r2.row_ids.tolist() == [1, 20, 21, 2, 22, 23, 24, 25]
    assert r2.new_rows == 6 and r2.cut == 2 and r2.budget.left == 0
    # full budget: already revealed rows still go out, new ones are cut
    r3 = ledger.charge("t", "r3", "random", [30, 5, 31])
    assert r3.row_ids.tolist() == [5] and r3.new_rows == 0 and r3.cut == 2
    with pytest.raises(BudgetExhausted):
        ledger.charge("t", "r4", "random", [40, 41])
    assert ledger.lookup("t", "r4") is None  # a refused request is not recorded
    assert len(ledger.revealed("t")) == 10
    assert [e.request_id for e in ledger.entries("t")] == ["r1", "r2", "r3"]
    assert [(e.rows, e.new_rows) for e in ledger.entries("t")] == [(4, 4), (8, 6), (1, 0)]
    audit = ledger.audit("t")
    assert len(audit) == 4 + 8 + 1 and audit[0].row_id == 5 and audit[0].new
    assert audit[-1].request_id == "r3" and not audit[-1].new


def test_replay_returns_same_rows_without_charge(ledger):
    first = ledger.charge(
        "u",
        "a",
        "feature",
        [7, 3, 9],
        [3.0, 2.0, 1.0],
        budget=3,
        fingerprint="f",
        note={"shortfall_reason": "x"},
    )
    again = ledger.charge("u", "a", "feature", [1, 2, 3], budget=3, fingerprint="f")
    assert again.replayed and again.new_rows == 0
    assert again.row_ids.tolist() == [7, 3, 9] and again.scores.tolist() == [3.0, 2.0, 1.0]
    assert again.note == {"shortfall_reason": "x"}
    assert again.budget == first.budget
    assert ledger.replay("u", "a", "feature", 3, "f").row_ids.tolist() == [7, 3, 9]
    assert ledger.replay("u", "b", "feature", 3, "f") is None
    for method, budget, fp in (("gradient", 3, "f"), ("feature", 4, "f"), ("feature", 3, "g")):
        with pytest.raises(RequestConflict, match="'a'"):
            ledger.charge("u", "a", method, [7], budget=budget, fingerprint=fp)
    # request ids are per trainer: another trainer may use the same id
    assert not ledger.charge("t", "a", "feature", [7]).replayed


def test_unknown_trainer_and_bad_input(ledger):
    with pytest.raises(UnknownTrainer):
        ledger.budget("nobody")
    with pytest.raises(ValueError):
        ledger.charge("t", "x", "m", [1, 1])
    with pytest.raises(ValueError):
        ledger.charge("t", "x", "m", [1, 2], [0.5])


def test_survives_close_and_reopen_and_cap_changes(tmp_path):
    path = tmp_path / "ledger.db"
    led = Ledger(path, {"t": 5})
    led.charge("t", "r1", "feature", [1, 2, 3], budget=3, fingerprint="f")
    led.close()
    led = Ledger(path, {"t": 4})  # the config lowered the cap
    assert led.budget("t").used == 3 and led.budget("t").left == 1
    assert led.replay("t", "r1", "feature", 3, "f").row_ids.tolist() == [1, 2, 3]
    led.close()
    led = Ledger(path, {"t": 2})  # below what was already revealed: nothing left, never negative
    assert (led.budget("t").used, led.budget("t").left) == (3, 0)
    led.close()


def test_ledger_written_before_the_usage_table_is_counted_on_open(tmp_path):
    path = tmp_path / "ledger.db"
    led = Ledger(path, {"t": 10, "u": 10})
    led.charge("t", "r1", "feature", [1, 2, 3])
    led.charge("u", "r1", "feature", [4])
    led.close()
    with sqlite3.connect(path) as raw:  # as the previous version left it: no `usage`
        raw.execute("DROP TABLE usage")
        raw.execute("PRAGMA user_version = 0")
    led = Ledger(path, {"t": 10, "u": 10})
    assert (led.budget("t").used, led.budget("u").used) == (3, 1)
    led.charge("t", "r2", "feature", [3, 5])
    assert led.budget("t").used == 4 == len(led.revealed("t"))
    assert [(a.request_id, a.row_id, a.new) for a in led.audit("t")] == [
        ("r1", 1, True),
        ("r1", 2, True),
        ("r1", 3, True),
        ("r2", 3, False),
        ("r2", 5, True),
    ]
    led.close()


def test_two_ledgers_on_one_file_share_the_cap(tmp_path):
    """Several processes may open one ledger file; the count stays exact across them."""
    a = Ledger(tmp_path / "ledger.db", {"t": 5})
    b = Ledger(tmp_path / "ledger.db", {"t": 5})
    a.charge("t", "r1", "m", [1, 2, 3])
    r2 = b.charge("t", "r2", "m", [3, 4, 5, 6])
    assert r2.row_ids.tolist() == [3, 4, 5] and r2.cut == 1
    assert a.budget("t") == b.budget("t") and a.budget("t").used == 5
    a.close()
    b.close()


def test_committed_charge_survives_process_kill(tmp_path):
    path = tmp_path / "ledger.db"
    script = (
        "import os, sys\n"
        "from owner_node.ledger import Ledger\n"
        f"led = Ledger({str(path)!r}, {{'t': 100}})\n"
        "led.charge('t', 'r1', 'feature', list(range(40)))\n"
        "os._exit(0)  # no close, no cleanup: like a SIGKILL right after the charge\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=60)
    led = Ledger(path, {"t": 100})
    assert led.budget("t").used == 40
    assert led.lookup("t", "r1") is not None
    led.close()


def test_concurrent_charges_never_exceed_cap(tmp_path):
    led = Ledger(tmp_path / "ledger.db", {"t": 50})
    rng = np.random.default_rng(0)
    requests = [rng.choice(200, 20, replace=False) for _ in range(16)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            led.charge("t", f"r{i}", "random", requests[i])
        except BudgetExhausted:
            pass
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert led.budget("t").used == len(led.revealed("t")) == 50
    sent = {r.row_id for r in led.audit("t")}
    assert sent == led.revealed("t")
    led.close()


@settings(max_examples=40, deadline=None)
@given(
    cap=st.integers(0, 30),
    batches=st.lists(st.lists(st.integers(0, 60), max_size=15, unique=True), max_size=8),
)
def test_distinct_revealed_rows_never_exceed_cap(tmp_path_factory, cap, batches):
    led = Ledger(tmp_path_factory.mktemp("l") / "ledger.db", {"t": cap})
    sent: set[int] = set()
    for i, batch in enumerate(batches):
        try:
            res = led.charge("t", f"r{i}", "random", batch)
        except BudgetExhausted:
            assert led.budget("t").left == 0
            continue
        assert set(res.row_ids.tolist()) <= set(batch)
        # ranked order is kept among the rows that survive
        assert res.row_ids.tolist() == [r for r in batch if r in set(res.row_ids.tolist())]
        sent |= set(res.row_ids.tolist())
        assert len(sent) <= cap
    assert led.budget("t").used == len(sent)
    led.close()
