"""The values of the page's top (templates/_verdict.html.j2): the verdict box (whom to pay,
whose rows hurt, warnings) and Mycroft's selection beside random rows.

The wording comes from trainer_node.verdict (shared with the terminal summary); the template
escapes it and marks owner names up.
"""

from __future__ import annotations

from typing import Any

from trainer_node.html_common import DASH, interval, signed
from trainer_node.verdict_sentences import decision_sentences, harm_sentences, other_sentences
from trainer_node.versus_random import TRUTH_LABELS, share_pair, truth_columns, versus_random


def verdict_view(verdict: dict[str, Any]) -> dict[str, Any]:
    """The box for a verdict dict (trainer_node.verdict.compute_verdict)."""
    return {
        "decision": verdict["decision"],
        "decision_sentences": decision_sentences(verdict),
        "harms": harm_sentences(verdict),
        "others": other_sentences(verdict),
        "warnings": [["Warning: " + w] for w in verdict["warnings"]],
    }


def versus_random_view(report: dict[str, Any]) -> dict[str, Any] | None:
    """Mycroft's selection beside random rows from the same owner at the same budget (None
    when random was not run at the ranking budget)."""
    rows = versus_random(report)
    if not rows:
        return None
    first = rows[0]
    keys = truth_columns(rows)
    return {
        "method": first["method"],
        "budget": first["budget"],
        "seeds": first["seeds"],
        "knows_needles": "needle" in keys,
        "truth_heads": [f"{TRUTH_LABELS[k]} ({first['method']} / random)" for k in keys],
        "rows": [
            {
                "owner": r["owner"],
                "smart_gain": signed(r["smart_gain"]),
                "random_gain": signed(r["random_gain"]),
                "ratio": (
                    f"{r['ratio']:.1f}×" if r["ratio"] is not None and r["ratio"] > 0 else DASH
                ),
                "difference": signed(r["difference"]),
                "interval": interval(r["difference_ci95"]),
                "shares": [share_pair(r, k) for k in keys],
            }
            for r in rows
        ],
    }
