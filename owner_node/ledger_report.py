"""`mycroft owner inspect`: what the ledger says each trainer has received.

Read beside a running node: the ledger is SQLite in WAL mode, so readers never block the
node's charges and always see committed state.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mycroft.errors import ConfigError
from owner_node.config import load_config
from owner_node.ledger import Ledger


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ledger_view(config_path: str, trainer: str | None = None) -> list[dict[str, Any]]:
    """Per trainer: budget and the requests it made, oldest first."""
    config = load_config(config_path, secrets=False)  # the ledger needs no trainer tokens
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
        return [trainer_ledger(ledger, t) for t in trainers]
    finally:
        ledger.close()


def trainer_ledger(ledger: Ledger, trainer: str) -> dict[str, Any]:
    """One trainer's budget, and the requests and queries it made, oldest first."""
    return {
        "trainer": trainer,
        "budget": asdict(ledger.budget(trainer)),
        "requests": [asdict(e) for e in ledger.entries(trainer)],
        "queries": [asdict(q) for q in ledger.query_log(trainer)],
    }


def inspect_ledger(config_path: str, trainer: str | None = None, as_json: bool = False) -> int:
    view = ledger_view(config_path, trainer)
    if as_json:
        print(json.dumps(view, indent=2))
        return 0
    console = Console()
    console.print(_summary_table(view))
    for item in view:
        if item["requests"]:
            _print_requests(console, item["trainer"], item["requests"])
    return 0


def _summary_table(view: list[dict[str, Any]]) -> Table:
    """One row per trainer, laid out to fit 80 terminal columns without cutting anything:
    two-line headers and dates, light borders; "fold" breaks what still does not fit (a long
    trainer id, a huge count) over lines instead of cutting it to "..."."""
    header = ("trainer", "row\ncap", "rows\nused", "rows\nleft", "queries", "queries\nused")
    header += ("queries\nleft", "requests", "last request\n(UTC)")
    counts = ("cap", "used", "left", "queries", "queries_used", "queries_left")
    table = Table(
        title="Budget per trainer: rows revealed and queries asked",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", overflow="fold")
    for item in view:
        b, reqs = item["budget"], item["requests"]
        last = _when(reqs[-1]["timestamp"]).replace(" ", "\n") if reqs else "-"
        row = (item["trainer"], *(str(b[k]) for k in counts), str(len(reqs)), last)
        table.add_row(*(Text(cell) for cell in row))  # Text: ids are not rich markup
    return table


def _print_requests(console: Console, trainer: str, requests: list[dict[str, Any]]) -> None:
    """One line per request, its id last and whole: an operator copies or greps request ids
    (up to 128 characters), so no terminal width may cut or break one."""
    console.print(Text(f"\nRequests from {trainer}", style="italic"), soft_wrap=True)
    console.print(Text(_REQUEST_LINE.format(*_REQUEST_COLUMNS), style="bold"), soft_wrap=True)
    for r in requests:
        line = _REQUEST_LINE.format(
            _when(r["timestamp"]), r["method"], r["rows"], r["new_rows"], r["request_id"]
        )
        console.print(Text(line), soft_wrap=True)  # soft_wrap: rich neither wraps nor cuts


_REQUEST_COLUMNS = ("when (UTC)", "method", "rows sent", "new rows", "request id")
_REQUEST_LINE = "{:<19}  {:<12}  {:>9}  {:>8}  {}"
