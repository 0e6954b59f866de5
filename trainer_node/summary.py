"""The run summary printed at the end of `mycroft trainer run`: the verdict, then the ranking.

Reads the report's JSON form only, so a saved report prints the same as a fresh one.
"""

from __future__ import annotations

import sys
from typing import Any

from trainer_node.verdict import verdict_lines, zero_gain_reason
from trainer_node.versus_random import versus_random_lines


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def summary_rows(obj: dict[str, Any]) -> list[list[str]]:
    """The ranking table's rows (rank, owner, setting, gain ± CI, test change, rows, status)."""
    rows = []
    by_owner = {o["name"]: o for o in obj["owners"]}
    for r in obj["ranking"]:
        ci = r["ci95"]
        ci_text = f" [{_pct(ci[0], True)}, {_pct(ci[1], True)}]" if ci else ""
        rows_recv = sum(
            q["rows_received"]
            for q in by_owner[r["owner"]]["requests"]
            if q["method"] == r["method"] and q["budget"] == r["budget"] and q["status"] == "ok"
        )
        rows.append(
            [
                str(r["rank"]),
                r["owner"],
                f"{r['method']}@{r['budget']} ({r['training_mode']})",
                _pct(r["dhard_gain_mean"], True) + ci_text,
                _pct(r["test_gain_mean"], True),
                str(rows_recv),
                zero_gain_reason(by_owner[r["owner"]], obj) or "",
            ]
        )
    for o in obj["owners"]:
        if o["status"] != "ok":
            rows.append(["-", o["name"], "failed", "-", "-", "0", o["error_code"] or "error"])
        elif o["rank"] is None:
            reason = zero_gain_reason(o, obj) or "no primary result"
            rows.append(["-", o["name"], "not ranked", "-", "-", "-", reason])
    return rows


def _corr(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def agreement_lines(obj: dict[str, Any]) -> list[str]:
    fi = obj.get("full_information")
    if not fi:
        return []
    return [
        f"agreement with full information, {a['method']}@{a['budget']} ({a['n_owners']} owners):"
        f" Spearman {_corr(a['spearman'])}, Kendall tau {_corr(a['kendall_tau'])}"
        for a in fi["agreement"]
    ]


def failure_lines(obj: dict[str, Any]) -> list[str]:
    lines = [f"{o['name']}: {o['error']}" for o in obj["owners"] if o["status"] != "ok"]
    for o in obj["owners"]:
        failed = o.get("evaluation_failures") or []  # absent in older reports
        if failed:
            f = failed[0]
            cell = f"{f['method']}@{f['budget']} {f['training_mode']} seed {f['seed']}"
            lines.append(
                f"{o['name']}: {len(failed)} evaluation cell{'s' if len(failed) > 1 else ''} "
                f"failed (first: {cell}: {f['error']})"
            )
    return lines


def warning_lines(obj: dict[str, Any]) -> list[str]:
    return [f"warning: {w}" for w in obj.get("warnings", [])]  # absent in older reports


def format_summary(obj: dict[str, Any]) -> str:
    """A plain-text summary (for logs and non-terminals)."""
    b = obj["baseline"]
    lines = (
        verdict_lines(obj)
        + versus_random_lines(obj)
        + [
            f"run {obj['run_id']}  trainer {obj['trainer_id']}  data {obj['data']['name']}",
            f"baseline: test {_pct(b['test_accuracy'])}%  D_hard-eval "
            f"{_pct(b['dhard_eval_accuracy'])}%  (D_hard shared {obj['dhard']['shared_total']}, "
            f"eval {obj['dhard']['eval_total']})",
            "rank  owner  setting  D_hard gain (pp) [95% CI]  test change (pp)  rows",
        ]
    )
    lines += ["  ".join(r) for r in summary_rows(obj)]
    return "\n".join(lines + agreement_lines(obj) + failure_lines(obj) + warning_lines(obj))


def print_summary(obj: dict[str, Any]) -> None:
    """A rich table when rich is installed, else plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(format_summary(obj))
        return
    b = obj["baseline"]
    # Logs and CI capture are wider than rich's 80-column fallback; keep owner names whole.
    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(
        title=f"Mycroft run {obj['run_id']}: owners ranked by D_hard utility gain",
        caption=f"baseline: test {_pct(b['test_accuracy'])}%, D_hard-eval "
        f"{_pct(b['dhard_eval_accuracy'])}%; gains in points over a control run on own rows",
    )
    for col in ("rank", "owner", "setting", "D_hard gain [95% CI]", "test change", "rows"):
        table.add_column(col, justify="right" if col in ("rank", "rows") else "left")
    table.add_column("note")
    for row in summary_rows(obj):
        table.add_row(*(row + [""] * (7 - len(row))))
    for line in verdict_lines(obj) + versus_random_lines(obj):  # the decision, then evidence
        console.print(line, markup=False, highlight=False)
    console.print(table)
    for line in agreement_lines(obj) + failure_lines(obj) + warning_lines(obj):
        console.print(line, markup=False, highlight=False)
