"""A ledger's history, read for reports, `mycroft owner inspect` and the metrics: what each
trainer asked and was sent, oldest first. Reads only; charges live in `owner_node.ledger`."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import numpy as np

from mycroft.messages import Allowance, LedgerEntry
from owner_node.ledger_db import AuditRecord, QueryRecord


class LedgerHistory:
    """Mixed into `Ledger`, which opens `_db` and guards it with `_lock`."""

    _db: sqlite3.Connection
    _lock: threading.Lock

    def totals(self) -> Allowance:
        """Every trainer's allowance in the ledger added up (the metrics' budget gauges)."""
        with self._lock:
            row = self._db.execute(
                "SELECT coalesce(sum(t.cap), 0), coalesce(sum(u.used), 0), "
                "coalesce(sum(t.queries), 0), coalesce(sum(q.used), 0) FROM trainers AS t "
                "LEFT JOIN usage AS u ON u.trainer = t.trainer "
                "LEFT JOIN query_usage AS q ON q.trainer = t.trainer"
            ).fetchone()
        return Allowance.counted(*(int(v) for v in row))

    def query_log(self, trainer: str) -> list[QueryRecord]:
        """The trainer's charged queries, oldest first."""
        rows = self._oldest_first("request_id, kind, method, ts FROM queries", trainer)
        return [QueryRecord(r[0], r[1], r[2], float(r[3])) for r in rows]

    def entries(self, trainer: str) -> list[LedgerEntry]:
        """The trainer's requests, oldest first."""
        columns = "request_id, method, length(row_ids) / 8, new_rows, ts FROM requests"
        rows = self._oldest_first(columns, trainer)
        return [LedgerEntry(r[0], r[1], int(r[2]), int(r[3]), float(r[4])) for r in rows]

    def _oldest_first(self, columns_from: str, trainer: str) -> list[tuple[Any, ...]]:
        """`SELECT columns_from` for `trainer`, oldest first (rowid orders equal timestamps)."""
        with self._lock:
            return self._db.execute(
                f"SELECT {columns_from} WHERE trainer = ? ORDER BY ts, rowid", (trainer,)
            ).fetchall()

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
