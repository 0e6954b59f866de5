"""The budget ledger: which distinct rows each trainer has seen, durable in SQLite.

Invariants (each enforced inside one BEGIN IMMEDIATE transaction, so two concurrent
requests of the same trainer cannot both spend the last rows):
- distinct rows ever revealed to a trainer never exceed its cap;
- re-revealing a row costs nothing;
- a finished request id replays the same rows, in the same order, with no new charge;
- the charge is committed (synchronous=FULL) before the caller sends a single row.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from owner_node.errors import BudgetExhausted, RequestConflict, UnknownTrainer

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trainers (
    trainer TEXT PRIMARY KEY,
    cap INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revealed (
    trainer TEXT NOT NULL,
    row_id INTEGER NOT NULL,
    request_id TEXT NOT NULL,  -- the request that first revealed it
    PRIMARY KEY (trainer, row_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    trainer TEXT NOT NULL,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    budget INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    row_ids BLOB NOT NULL,  -- int64 little-endian, ranked order as sent
    scores BLOB NOT NULL,  -- float32 little-endian
    new_rows INTEGER NOT NULL,
    cut INTEGER NOT NULL,
    ts REAL NOT NULL,
    note TEXT NOT NULL,  -- JSON: what the summary said (missing classes, shortfall)
    PRIMARY KEY (trainer, request_id)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    trainer TEXT NOT NULL,
    request_id TEXT NOT NULL,
    method TEXT NOT NULL,
    row_id INTEGER NOT NULL,
    new INTEGER NOT NULL  -- 1 if this request was the first to reveal the row
);
CREATE INDEX IF NOT EXISTS audit_trainer ON audit (trainer, id);
"""


@dataclass(frozen=True)
class BudgetState:
    cap: int
    used: int
    left: int


@dataclass(frozen=True)
class ChargeResult:
    row_ids: np.ndarray  # (K,) int64, the rows to send, in ranked order
    scores: np.ndarray  # (K,) float32
    new_rows: int  # rows this trainer had not seen before (0 on replay)
    cut: int  # new rows dropped because the cap was reached
    replayed: bool
    budget: BudgetState  # after the charge
    note: dict[str, Any] = field(default_factory=dict)  # as given to charge(), for replays


@dataclass(frozen=True)
class LedgerEntry:
    request_id: str
    method: str
    rows: int
    new_rows: int
    timestamp: float


@dataclass(frozen=True)
class AuditRecord:
    timestamp: float
    request_id: str
    method: str
    row_id: int
    new: bool


@dataclass(frozen=True)
class PastRequest:
    method: str
    budget: int
    fingerprint: str


def request_fingerprint(*parts: bytes | str) -> str:
    """A digest of a request's parameters, so a reused request id with other ones is caught."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class Ledger:
    """Thread-safe: one connection guarded by a lock (charges are short; SQLite serialises
    writers anyway). Several processes may share the file: BEGIN IMMEDIATE + busy timeout."""

    def __init__(self, path: str | Path, caps: Mapping[str, int]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        self._db = sqlite3.connect(
            str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self.set_caps(caps)

    def set_caps(self, caps: Mapping[str, int]) -> None:
        """The config is the source of truth for caps; lowering one below `used` leaves 0."""
        with self._tx():
            for trainer, cap in caps.items():
                self._db.execute(
                    "INSERT INTO trainers (trainer, cap) VALUES (?, ?) "
                    "ON CONFLICT (trainer) DO UPDATE SET cap = excluded.cap",
                    (trainer, int(cap)),
                )

    def budget(self, trainer: str) -> BudgetState:
        with self._lock:
            return self._budget(trainer)

    def lookup(self, trainer: str, request_id: str) -> PastRequest | None:
        """The parameters of a finished request, to answer a retry without re-selecting."""
        with self._lock:
            row = self._db.execute(
                "SELECT method, budget, fingerprint FROM requests "
                "WHERE trainer = ? AND request_id = ?",
                (trainer, request_id),
            ).fetchone()
        return PastRequest(*row) if row else None

    def replay(
        self, trainer: str, request_id: str, method: str, budget: int, fingerprint: str
    ) -> ChargeResult | None:
        """The stored answer of a finished request (RequestConflict if parameters differ)."""
        if self.lookup(trainer, request_id) is None:
            return None
        return self.charge(trainer, request_id, method, [], budget=budget, fingerprint=fingerprint)

    def charge(
        self,
        trainer: str,
        request_id: str,
        method: str,
        row_ids: Sequence[int] | np.ndarray,
        scores: Sequence[float] | np.ndarray | None = None,
        *,
        budget: int | None = None,
        fingerprint: str = "",
        note: dict[str, Any] | None = None,
    ) -> ChargeResult:
        """Charge `row_ids` (ranked best first) to `trainer` and record the request.

        Returns the rows to send. Raises RequestConflict if `request_id` was used with other
        parameters, BudgetExhausted if nothing at all can be sent (nothing is recorded then).
        `note` (JSON-able) is stored with the request and returned again on replay.
        """
        ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
        if scores is None:
            sc = np.zeros(len(ids), dtype=np.float32)
        else:
            sc = np.asarray(scores, dtype=np.float32).reshape(-1)
        if len(sc) != len(ids):
            raise ValueError(f"{len(ids)} row ids but {len(sc)} scores")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("row ids must be distinct")
        asked = int(budget) if budget is not None else len(ids)
        with self._tx():
            past = self._db.execute(
                "SELECT method, budget, fingerprint, row_ids, scores, note FROM requests "
                "WHERE trainer = ? AND request_id = ?",
                (trainer, request_id),
            ).fetchone()
            if past is not None:
                _check_same(request_id, PastRequest(*past[:3]), method, asked, fingerprint)
                return ChargeResult(
                    row_ids=np.frombuffer(past[3], dtype="<i8").astype(np.int64),
                    scores=np.frombuffer(past[4], dtype="<f4").astype(np.float32),
                    new_rows=0,
                    cut=0,
                    replayed=True,
                    budget=self._budget(trainer),
                    note=json.loads(past[5]),
                )
            state = self._budget(trainer)
            seen = self._already_revealed(trainer, ids)
            keep: list[int] = []
            new_mask: list[bool] = []
            new_count = 0
            cut = 0
            for i, rid in enumerate(ids.tolist()):
                if rid in seen:
                    keep.append(i)
                    new_mask.append(False)
                elif new_count < state.left:
                    keep.append(i)
                    new_mask.append(True)
                    new_count += 1
                else:
                    cut += 1
            if not keep and len(ids) > 0 and state.left == 0:
                raise BudgetExhausted(
                    f"trainer {trainer!r} has used its whole budget ({state.cap} rows) and "
                    "none of the selected rows were revealed to it before"
                )
            note = dict(note or {})
            kept_ids = ids[keep]
            kept_scores = sc[keep]
            now = time.time()
            self._db.execute(
                "INSERT INTO requests (trainer, request_id, method, budget, fingerprint, "
                "row_ids, scores, new_rows, cut, ts, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trainer,
                    request_id,
                    method,
                    asked,
                    fingerprint,
                    kept_ids.astype("<i8").tobytes(),
                    kept_scores.astype("<f4").tobytes(),
                    new_count,
                    cut,
                    now,
                    json.dumps(note),
                ),
            )
            new_ids = [int(r) for r, new in zip(kept_ids, new_mask, strict=True) if new]
            self._db.executemany(
                "INSERT INTO revealed (trainer, row_id, request_id) VALUES (?, ?, ?)",
                [(trainer, rid, request_id) for rid in new_ids],
            )
            self._db.executemany(
                "INSERT INTO audit (ts, trainer, request_id, method, row_id, new) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (now, trainer, request_id, method, int(r), int(new))
                    for r, new in zip(kept_ids, new_mask, strict=True)
                ],
            )
            after = self._budget(trainer)
        return ChargeResult(kept_ids, kept_scores, new_count, cut, False, after, note)

    def entries(self, trainer: str) -> list[LedgerEntry]:
        """The trainer's requests, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT request_id, method, length(row_ids) / 8, new_rows, ts FROM requests "
                "WHERE trainer = ? ORDER BY ts, rowid",
                (trainer,),
            ).fetchall()
        return [LedgerEntry(r[0], r[1], int(r[2]), int(r[3]), float(r[4])) for r in rows]

    def audit(self, trainer: str) -> list[AuditRecord]:
        """Every row sent to `trainer` (including re-sends), in the order sent."""
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, request_id, method, row_id, new FROM audit WHERE trainer = ? "
                "ORDER BY id",
                (trainer,),
            ).fetchall()
        return [AuditRecord(float(r[0]), r[1], r[2], int(r[3]), bool(r[4])) for r in rows]

    def revealed(self, trainer: str) -> set[int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT row_id FROM revealed WHERE trainer = ?", (trainer,)
            ).fetchall()
        return {int(r[0]) for r in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- internals; callers hold the lock ---

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def _budget(self, trainer: str) -> BudgetState:
        row = self._db.execute("SELECT cap FROM trainers WHERE trainer = ?", (trainer,)).fetchone()
        if row is None:
            raise UnknownTrainer(f"trainer {trainer!r} is not configured")
        cap = int(row[0])
        used = int(
            self._db.execute(
                "SELECT count(*) FROM revealed WHERE trainer = ?", (trainer,)
            ).fetchone()[0]
        )
        return BudgetState(cap=cap, used=used, left=max(0, cap - used))

    def _already_revealed(self, trainer: str, ids: np.ndarray) -> set[int]:
        seen: set[int] = set()
        values = ids.tolist()
        for start in range(0, len(values), 500):  # stay under SQLite's variable limit
            part = values[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(
                f"SELECT row_id FROM revealed WHERE trainer = ? AND row_id IN ({marks})",
                (trainer, *part),
            ).fetchall()
            seen.update(int(r[0]) for r in rows)
        return seen


def _check_same(
    request_id: str, past: PastRequest, method: str, budget: int, fingerprint: str
) -> None:
    if past.method != method or past.budget != budget or past.fingerprint != fingerprint:
        raise RequestConflict(
            f"request_id {request_id!r} was already used with different parameters "
            f"(method {past.method!r}, budget {past.budget}); a retry must repeat the request "
            "exactly, a new request needs a new request_id"
        )


class _Transaction:
    """BEGIN IMMEDIATE under the lock; COMMIT on success, ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()
