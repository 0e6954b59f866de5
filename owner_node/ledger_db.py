"""The ledger's SQLite plumbing and records: schema, migrations, transactions, and the plain
records it hands out. `ledger.py` holds the rules.

Schema versions (PRAGMA user_version): 2 added `usage` (each trainer's distinct-row count);
3 added the query allowance (`trainers.queries`, `queries`, `query_usage`).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mycroft.messages import Allowance

SCHEMA = """
CREATE TABLE IF NOT EXISTS trainers (
    trainer TEXT PRIMARY KEY,
    cap INTEGER NOT NULL,
    queries INTEGER NOT NULL DEFAULT 0  -- query allowance: computations over the owner's rows
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
CREATE TABLE IF NOT EXISTS queries (
    trainer TEXT NOT NULL,
    request_id TEXT NOT NULL,  -- the Select's id, or "upload:<sha>" for a warm-up
    kind TEXT NOT NULL,  -- "select" | "warm"
    method TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS queries_by_trainer ON queries (trainer, ts);
CREATE TABLE IF NOT EXISTS query_usage (
    trainer TEXT PRIMARY KEY,
    used INTEGER NOT NULL  -- this trainer's rows in `queries`, updated in the same transaction
);
"""
VERSION = 3


def connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    if db.execute("PRAGMA user_version").fetchone()[0] < 3:
        _add_query_column(db)  # before SCHEMA: its index and tables assume version 3
    db.executescript(SCHEMA)
    return db


def migrate(db: sqlite3.Connection, lock: threading.Lock) -> None:
    """Older ledgers: count each trainer's revealed rows once into `usage` (version 2)."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= VERSION:
        return
    with Transaction(db, lock):
        db.execute("DELETE FROM usage")
        db.execute(
            "INSERT INTO usage (trainer, used) SELECT trainer, count(*) FROM revealed GROUP BY trainer"
        )
        db.execute(f"PRAGMA user_version = {VERSION}")


def _add_query_column(db: sqlite3.Connection) -> None:
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'trainers'"
    ).fetchone()
    if not exists:
        return
    columns = {row[1] for row in db.execute("PRAGMA table_info(trainers)")}
    if "queries" not in columns:
        db.execute("ALTER TABLE trainers ADD COLUMN queries INTEGER NOT NULL DEFAULT 0")


def json_ids(ids: np.ndarray) -> str:
    """Row ids as a JSON array, bound as one parameter and read back by json_each."""
    return "[" + ",".join(map(str, ids.tolist())) + "]"


class Transaction:
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


@dataclass(frozen=True)
class QueryGrant:
    """One charged query: the rows it may reveal are reserved until `Ledger.end_query`."""

    trainer: str
    request_id: str
    rows: int  # rows this query may return: min(asked, left minus other queries' reservations)
    budget: Allowance  # after the query was charged


@dataclass(frozen=True)
class ChargeResult:
    row_ids: np.ndarray  # (K,) int64, the rows to send, in ranked order
    scores: np.ndarray  # (K,) float32
    new_rows: int  # rows this trainer had not seen before (0 on replay)
    cut: int  # new rows dropped because the cap was reached
    replayed: bool
    budget: Allowance  # after the charge
    note: dict[str, Any] = field(default_factory=dict)  # as given to charge(), for replays


@dataclass(frozen=True)
class AuditRecord:
    timestamp: float
    request_id: str
    method: str
    row_id: int
    new: bool


@dataclass(frozen=True)
class QueryRecord:
    request_id: str
    kind: str  # "select" | "warm"
    method: str
    timestamp: float


@dataclass(frozen=True)
class PastRequest:
    method: str
    budget: int
    fingerprint: str
