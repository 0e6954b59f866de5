"""`mycroft owner inspect`: what the ledger says each trainer has received.

Read beside a running node: the ledger is SQLite in WAL mode, so readers never block the
node's charges and always see committed state.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from typing import Any

from mycroft.errors import ConfigError
from owner_node.config import load_config
from owner_node.ledger import Ledger


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ledger_view(config_path: str, trainer: str | None = None) -> list[dict[str, Any]]:
    """Per trainer: budget and the requests it made, oldest first."""
    config = load_config(config_path)
    trainers = [t.id for t in config.trainers]
    if trainer is not None:
        if trainer not in trainers:
            raise ConfigError(f"--trainer: {trainer!r} is not in {config_path}")
        trainers = [trainer]
    db = config.owner.state_dir / "ledger.db"
    if not db.exists():
        raise ConfigError(f"owner.state_dir: no ledger at {db} (has the node run yet?)")
    ledger = Ledger(
        db, {t.id: t.cap for t in config.trainers}, {t.id: t.queries for t in config.trainers}
    )
    try:
        return [
            {
                "trainer": t,
                "budget": _budget(ledger, t),
                "requests": [asdict(e) for e in ledger.entries(t)],
                "queries": [asdict(q) for q in ledger.query_log(t)],
            }
            for t in trainers
        ]
    finally:
        ledger.close()


def _budget(ledger: Ledger, trainer: str) -> dict[str, int]:
    state = ledger.budget(trainer)
    return {**asdict(state), "queries_left": state.queries_left}


def inspect_ledger(config_path: str, trainer: str | None = None, as_json: bool = False) -> int:
    view = ledger_view(config_path, trainer)
    if as_json:
        print(json.dumps(view, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title="Budget per trainer: rows revealed and queries asked")
    columns = ("trainer", "row cap", "rows used", "rows left")
    columns += ("queries", "queries used", "queries left", "requests", "last request (UTC)")
    for col in columns:
        summary.add_column(col, justify="left" if col == "trainer" else "right")
    for item in view:
        b, reqs = item["budget"], item["requests"]
        last = _when(reqs[-1]["timestamp"]) if reqs else "-"
        counts = ("cap", "used", "left", "queries", "queries_used", "queries_left")
        summary.add_row(item["trainer"], *(str(b[k]) for k in counts), str(len(reqs)), last)
    console.print(summary)
    for item in view:
        if not item["requests"]:
            continue
        table = Table(title=f"Requests from {item['trainer']}")
        for col in ("when (UTC)", "request id", "method", "rows sent", "new rows"):
            table.add_column(col, justify="right" if "rows" in col else "left")
        for r in item["requests"]:
            table.add_row(
                _when(r["timestamp"]),
                r["request_id"],
                r["method"],
                str(r["rows"]),
                str(r["new_rows"]),
            )
        console.print(table)
    return 0
