"""The budget ledger: which distinct rows each trainer has seen and how many queries it has
asked, durable in SQLite.

Invariants (each enforced inside one BEGIN IMMEDIATE transaction, so two concurrent
requests of the same trainer cannot both spend the last rows or queries):
- distinct rows ever revealed to a trainer never exceed its cap; re-revealing a row is free;
- every computation over the owner's rows is one query, charged (and committed) before it
  starts; the queries charged never exceed the trainer's allowance;
- a finished request id replays the same rows, in the same order, with no new charge of
  either kind;
- a row charge is committed (synchronous=FULL) before the caller sends a single row.

A charge is a handful of statements whatever its size: the row ids travel as one JSON array
(`json_each`), `usage` and `query_usage` keep each trainer's counts (no count(*) per call), and
the audit is the `requests` row itself (ranked row ids as an int64 blob); `audit()` expands it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mycroft.messages import Allowance
from owner_node.config import DEFAULT_QUERIES
from owner_node.errors import (
    BudgetExhausted,
    Busy,
    QueryAllowanceExhausted,
    RequestConflict,
    UnknownTrainer,
)
from owner_node.ledger_db import (
    AuditRecord,
    ChargeResult,
    PastRequest,
    QueryGrant,
    QueryRecord,
    Transaction,
    connect,
    json_ids,
    migrate,
)
from owner_node.ledger_history import LedgerHistory

if TYPE_CHECKING:
    from owner_node.metrics import OwnerMetrics

__all__ = [
    "AuditRecord",
    "ChargeResult",
    "Ledger",
    "QueryGrant",
    "QueryRecord",
    "request_fingerprint",
]


def request_fingerprint(*parts: bytes | str) -> str:
    """A digest of a request's parameters, so a reused request id with other ones is caught."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


class Ledger(LedgerHistory):
    """Thread-safe: one connection guarded by a lock (charges are short; SQLite serialises
    writers anyway). Several processes may share the file: BEGIN IMMEDIATE + busy timeout."""

    def __init__(
        self,
        path: str | Path,
        caps: Mapping[str, int],
        queries: Mapping[str, int] | None = None,
        metrics: OwnerMetrics | None = None,
    ):
        """`metrics` counts queries, charges and refusals once each committed."""
        self.path = Path(path)
        self.metrics = metrics
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = connect(str(self.path))
        migrate(self._db, self._lock)
        # Rows reserved by queries in flight, per trainer: in memory, since a restart ends them.
        self._reserved: dict[str, int] = {}
        self.set_caps(caps, queries)

    def set_caps(self, caps: Mapping[str, int], queries: Mapping[str, int] | None = None) -> None:
        """The config is the source of truth for caps and query allowances; lowering either
        below what was used leaves 0. A trainer missing from `queries` keeps its allowance
        (new trainers get DEFAULT_QUERIES)."""
        queries = queries or {}
        with self._tx():
            for trainer, cap in caps.items():
                allowance = queries.get(trainer)
                self._db.execute(
                    "INSERT INTO trainers (trainer, cap, queries) VALUES (?, ?, ?) "
                    "ON CONFLICT (trainer) DO UPDATE SET cap = excluded.cap, "
                    "queries = coalesce(?, trainers.queries)",
                    (
                        trainer,
                        int(cap),
                        DEFAULT_QUERIES if allowance is None else int(allowance),
                        None if allowance is None else int(allowance),
                    ),
                )

    def budget(self, trainer: str) -> Allowance:
        """`trainer`'s lifetime allowance: distinct rows and queries, used and left."""
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
                try:
                    _check_same(request_id, PastRequest(*past[:3]), method, asked, fingerprint)
                except RequestConflict:
                    self._count(method, "refused")
                    raise
                replayed = np.frombuffer(past[3], dtype="<i8").astype(np.int64)
                self._count(method, "replayed", rows_sent=len(replayed))  # nothing to commit
                return ChargeResult(
                    row_ids=replayed,
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
                self._count(method, "refused")
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
                    (trainer, request_id, json_ids(np.sort(kept_ids[kept_new]))),
                )
                self._db.execute(
                    "INSERT INTO usage (trainer, used) VALUES (?, ?) "
                    "ON CONFLICT (trainer) DO UPDATE SET used = used + excluded.used",
                    (trainer, new_count),
                )
            after = self._budget(trainer)
        self._count(method, "charged", new_count, len(kept_ids))  # committed
        return ChargeResult(kept_ids, kept_scores, new_count, cut, False, after, note)

    def begin_query(
        self, trainer: str, request_id: str, *, kind: str, method: str, rows: int
    ) -> QueryGrant:
        """Charge one query to `trainer`, durably, before any computation over the owner's
        rows, and reserve up to `rows` rows of its cap for the answer.

        Every refusal depends only on the trainer's own counters, never on the owner's data:
        QueryAllowanceExhausted when no query is left; BudgetExhausted when rows are wanted
        and the cap is spent; Busy when the trainer's own queries in flight hold every row
        left. A query may reveal at most `grant.rows` rows, so no row is ever cut from an
        answer (a cut would tell the trainer how many unrevealed rows ranked above its rows).
        """
        try:
            grant = self._begin_query(trainer, request_id, kind=kind, method=method, rows=rows)
        except (QueryAllowanceExhausted, BudgetExhausted, Busy):
            if kind == "select":
                self._count(method, "refused")
            raise
        if self.metrics is not None:
            self.metrics.query(kind)
        return grant

    def _begin_query(
        self, trainer: str, request_id: str, *, kind: str, method: str, rows: int
    ) -> QueryGrant:
        with self._tx():
            state = self._budget(trainer)
            if state.queries_left == 0:
                raise QueryAllowanceExhausted(
                    f"trainer {trainer!r} has used its whole query allowance ({state.queries} "
                    "queries over the owner's rows); ask the owner to raise trainers[].queries"
                )
            free = state.left - self._reserved.get(trainer, 0)
            if rows > 0 and state.left == 0:
                raise BudgetExhausted(
                    f"trainer {trainer!r} has used its whole budget ({state.cap} rows)"
                )
            if rows > 0 and free <= 0:
                raise Busy(
                    f"trainer {trainer!r}: every row left ({state.left}) is reserved by its own "
                    "requests in flight; retry when they finish"
                )
            granted = min(rows, max(free, 0))
            self._db.execute(
                "INSERT INTO queries (trainer, request_id, kind, method, ts) VALUES (?, ?, ?, ?, ?)",
                (trainer, request_id, kind, method, time.time()),
            )
            self._db.execute(
                "INSERT INTO query_usage (trainer, used) VALUES (?, 1) "
                "ON CONFLICT (trainer) DO UPDATE SET used = used + 1",
                (trainer,),
            )
            self._reserved[trainer] = self._reserved.get(trainer, 0) + granted
            after = self._budget(trainer)
        return QueryGrant(trainer, request_id, granted, after)

    def end_query(self, grant: QueryGrant) -> None:
        """Release the query's row reservation (after its rows were charged, or it failed)."""
        with self._lock:
            left = self._reserved.get(grant.trainer, 0) - grant.rows
            if left > 0:
                self._reserved[grant.trainer] = left
            else:
                self._reserved.pop(grant.trainer, None)

    def refund_query(self, grant: QueryGrant) -> None:
        """Undo a query that never started computing (it waited in the queue and was cancelled).
        A crash before the refund leaves it charged: the safe direction."""
        self.end_query(grant)
        with self._tx():
            row = self._db.execute(
                "SELECT max(rowid) FROM queries WHERE trainer = ? AND request_id = ?",
                (grant.trainer, grant.request_id),
            ).fetchone()
            if row is None or row[0] is None:
                return
            self._db.execute("DELETE FROM queries WHERE rowid = ?", (row[0],))
            self._db.execute(
                "UPDATE query_usage SET used = max(used - 1, 0) WHERE trainer = ?",
                (grant.trainer,),
            )
        if self.metrics is not None:
            self.metrics.query_refunded()

    def revealed_among(self, trainer: str, ids: np.ndarray) -> np.ndarray:
        """The ids of `ids` that were revealed to `trainer` before, in their order."""
        ids = np.asarray(ids, dtype=np.int64)
        with self._lock:
            return ids[self._already_revealed(trainer, ids)]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- internals; callers hold the lock ---

    def _count(self, method: str, outcome: str, new_rows: int = 0, rows_sent: int = 0) -> None:
        if self.metrics is not None:
            self.metrics.selection(method, outcome, new_rows, rows_sent)

    def _tx(self) -> Transaction:
        return Transaction(self._db, self._lock)

    def _budget(self, trainer: str) -> Allowance:
        row = self._db.execute(
            "SELECT t.cap, coalesce(u.used, 0), t.queries, coalesce(q.used, 0) FROM trainers AS t "
            "LEFT JOIN usage AS u ON u.trainer = t.trainer "
            "LEFT JOIN query_usage AS q ON q.trainer = t.trainer WHERE t.trainer = ?",
            (trainer,),
        ).fetchone()
        if row is None:
            raise UnknownTrainer(f"trainer {trainer!r} is not configured")
        return Allowance.counted(*(int(v) for v in row))

    def _already_revealed(self, trainer: str, ids: np.ndarray) -> np.ndarray:
        """Mask over `ids`: True where the row was revealed to `trainer` before (one query)."""
        if len(ids) == 0:
            return np.zeros(0, dtype=bool)
        # IN (subquery), not a join: SQLite would scan the trainer's whole `revealed` range
        # against the virtual table; this probes the primary key once per id.
        rows = self._db.execute(
            "SELECT row_id FROM revealed WHERE trainer = ? "
            "AND row_id IN (SELECT value FROM json_each(?))",
            (trainer, json_ids(ids)),
        ).fetchall()
        seen = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return np.isin(ids, seen)


def _check_same(
    request_id: str, past: PastRequest, method: str, budget: int, fingerprint: str
) -> None:
    if past.method != method or past.budget != budget or past.fingerprint != fingerprint:
        raise RequestConflict(
            f"request_id {request_id!r} was already used with different parameters "
            f"(method {past.method!r}, budget {past.budget}); a retry must repeat the request "
            "exactly, a new request needs a new request_id"
        )
