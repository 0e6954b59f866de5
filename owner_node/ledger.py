"""The budget ledger: which distinct rows each trainer has seen, durable in SQLite.

Invariants (each enforced inside one BEGIN IMMEDIATE transaction, so two concurrent
requests of the same trainer cannot both spend the last rows):
- distinct rows ever revealed to a trainer never exceed its cap;
- re-revealing a row costs nothing;
- a finished request id replays the same rows, in the same order, with no new charge;
- the charge is committed (synchronous=FULL) before the caller sends a single row.

A charge is a handful of statements whatever its size: the row ids travel as one JSON array
(`json_each`) for the already-revealed check and the `revealed` insert, `usage` keeps each
trainer's distinct-row count (no count(*) over `revealed` per call), and the audit is the
`requests` row itself (ranked row ids as an int64 blob) instead of one `audit` row per row
sent; `audit()` expands it on demand. An older ledger's per-row `audit` table is left as it
was and no longer written: `requests` holds the same facts for those requests.
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
CREATE TABLE IF NOT EXISTS usage (
    trainer TEXT PRIMARY KEY,
    used INTEGER NOT NULL  -- this trainer's rows in `revealed`, updated in the same transaction
);
"""
_VERSION = 2  # PRAGMA user_version; below 2, `usage` is rebuilt from `revealed` on open


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
        self._migrate()
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
            is_new = ~self._already_revealed(trainer, ids)
            # New rows take the places left in ranked order; re-reveals are always free.
            keep = ~is_new | (np.cumsum(is_new) <= state.left)
            kept_new = is_new[keep]
            new_count = int(kept_new.sum())
            cut = int(is_new.sum()) - new_count
            if not keep.any() and len(ids) > 0 and state.left == 0:
                raise BudgetExhausted(
                    f"trainer {trainer!r} has used its whole budget ({state.cap} rows) and "
                    "none of the selected rows were revealed to it before"
                )
            note = dict(note or {})
            kept_ids = ids[keep]
            kept_scores = sc[keep]
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
                    time.time(),
                    json.dumps(note),
                ),
            )
            if new_count:
                # One statement for all new rows; sorted, the inserts walk the B-tree in order.
                self._db.execute(
                    "INSERT INTO revealed (trainer, row_id, request_id) "
                    "SELECT ?, value, ? FROM json_each(?)",
                    (trainer, request_id, _json_ids(np.sort(kept_ids[kept_new]))),
                )
                self._db.execute(
                    "INSERT INTO usage (trainer, used) VALUES (?, ?) "
                    "ON CONFLICT (trainer) DO UPDATE SET used = used + excluded.used",
                    (trainer, new_count),
                )
            used = state.used + new_count
            after = BudgetState(cap=state.cap, used=used, left=max(0, state.cap - used))
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
        """Every row sent to `trainer` (including re-sends), in the order sent.

        Expanded from `requests` (commit order): a row is `new` for the request that `revealed`
        names as its first revealer. Replays send no new rows and are not recorded again.
        """
        with self._lock:
            requests = self._db.execute(
                "SELECT ts, request_id, method, row_ids FROM requests WHERE trainer = ? "
                "ORDER BY rowid",
                (trainer,),
            ).fetchall()
            first: dict[int, str] = dict(
                self._db.execute(
                    "SELECT row_id, request_id FROM revealed WHERE trainer = ?", (trainer,)
                ).fetchall()
            )
        return [
            AuditRecord(float(ts), request_id, method, rid, first.get(rid) == request_id)
            for ts, request_id, method, blob in requests
            for rid in np.frombuffer(blob, dtype="<i8").tolist()
        ]

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

    def _migrate(self) -> None:
        """Ledgers written before `usage` existed: count each trainer's revealed rows once."""
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= _VERSION:
            return
        with self._tx():
            self._db.execute("DELETE FROM usage")
            self._db.execute(
                "INSERT INTO usage (trainer, used) "
                "SELECT trainer, count(*) FROM revealed GROUP BY trainer"
            )
            self._db.execute(f"PRAGMA user_version = {_VERSION}")

    def _budget(self, trainer: str) -> BudgetState:
        row = self._db.execute(
            "SELECT t.cap, coalesce(u.used, 0) FROM trainers AS t "
            "LEFT JOIN usage AS u ON u.trainer = t.trainer WHERE t.trainer = ?",
            (trainer,),
        ).fetchone()
        if row is None:
            raise UnknownTrainer(f"trainer {trainer!r} is not configured")
        cap, used = int(row[0]), int(row[1])
        return BudgetState(cap=cap, used=used, left=max(0, cap - used))

    def _already_revealed(self, trainer: str, ids: np.ndarray) -> np.ndarray:
        """Mask over `ids`: True where the row was revealed to `trainer` before (one query)."""
        if len(ids) == 0:
            return np.zeros(0, dtype=bool)
        # IN (subquery), not a join: SQLite would scan the trainer's whole `revealed` range
        # against the virtual table; this probes the primary key once per id.
        rows = self._db.execute(
            "SELECT row_id FROM revealed WHERE trainer = ? "
            "AND row_id IN (SELECT value FROM json_each(?))",
            (trainer, _json_ids(ids)),
        ).fetchall()
        seen = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return np.isin(ids, seen)


def _json_ids(ids: np.ndarray) -> str:
    """Row ids as a JSON array, bound as one parameter and read back by json_each."""
    return "[" + ",".join(map(str, ids.tolist())) + "]"


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
