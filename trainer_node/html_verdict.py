"""The top of the HTML report: the verdict box (whom to pay, whose rows hurt, warnings) and
Mycroft's selection beside random rows.

The wording comes from trainer_node.verdict (shared with the terminal summary); this module only
escapes it and marks owner names up.
"""

from __future__ import annotations

from typing import Any

from trainer_node.html_common import esc, pct, signed_cell, table
from trainer_node.verdict import (
    OwnerName,
    Sentence,
    decision_sentences,
    harm_sentences,
    other_sentences,
)
from trainer_node.versus_random import TRUTH_LABELS, share_pair, truth_columns, versus_random

VERDICT_CSS = """
.verdict { border: 2px solid #2f6db5; border-radius: 6px; background: #f3f7fc;
           padding: .7em 1.1em .5em; margin: .8em 0 1.2em; }
.verdict.none { border-color: #9aa5b1; background: #f5f7fa; }
.verdict h2 { border: 0; margin: 0 0 .3em; padding: 0; font-size: 1.2em; }
.verdict p, .verdict ul { margin: .3em 0 .5em; } .verdict ul { padding-left: 1.3em; }
.verdict .decision { font-size: 15px; }
.verdict .harms li { color: #8a1c1c; }
.verdict .harms li::marker { content: "⚠ "; }
.verdict .warnings { color: #7a4a00; }
"""


def _sentence(parts: Sentence) -> str:
    return "".join(
        f'<b class="owner-name">{esc(p)}</b>' if isinstance(p, OwnerName) else esc(p) for p in parts
    )


def _items(sentences: list[Sentence], cls: str) -> str:
    if not sentences:
        return ""
    items = "".join(f"<li>{_sentence(s)}</li>" for s in sentences)
    return f'<ul class="{cls}">{items}</ul>'


def verdict_box(verdict: dict[str, Any]) -> str:
    """The box for a verdict dict (trainer_node.verdict.compute_verdict)."""
    decision = " ".join(_sentence(s) for s in decision_sentences(verdict))
    warnings = [["Warning: " + w] for w in verdict["warnings"]]
    return (
        f'<section id="verdict" class="verdict {esc(verdict["decision"])}">'
        "<h2>Verdict: whom to pay</h2>"
        f'<p class="decision">{decision}</p>'
        + _items(harm_sentences(verdict), "harms")
        + _items(other_sentences(verdict), "others")
        + _items(warnings, "warnings")
        + "</section>"
    )


def versus_random_table(report: dict[str, Any]) -> str:
    """Mycroft's selection beside random rows from the same owner at the same budget (empty
    when random was not run at the ranking budget)."""
    rows = versus_random(report)
    if not rows:
        return ""
    first = rows[0]
    keys = truth_columns(rows)
    body = []
    for r in rows:
        ci = r["difference_ci95"]
        interval = f" [{pct(ci[0], True)}, {pct(ci[1], True)}]" if ci else ""
        ratio = f"{r['ratio']:.1f}×" if r["ratio"] is not None and r["ratio"] > 0 else "–"
        body.append(
            f"<tr><td>{esc(r['owner'])}</td>{signed_cell(r['smart_gain'])}"
            f'{signed_cell(r["random_gain"])}<td class="num">{ratio}</td>'
            f"{signed_cell(r['difference'], esc(interval))}"
            + "".join(f'<td class="num">{esc(share_pair(r, k))}</td>' for k in keys)
            + "</tr>"
        )
    head = [
        "owner",
        f"{esc(first['method'])} gain (pp)",
        "random gain (pp)",
        "ratio",
        "difference (pp) [95% CI]",
    ] + [f"{TRUTH_LABELS[k]} ({esc(first['method'])} / random)" for k in keys]
    known = (
        " Needles are rows of the sub-population the trainer's data lacks; this simulation "
        "knows which rows they are (a real trainer does not)."
        if "needle" in keys
        else ""
    )
    return (
        '<section id="versus-random"><h3>Selection vs random rows, same owner and budget</h3>'
        f'<p class="note">D_hard-eval gain with {first["budget"]} rows chosen by '
        f"{esc(first['method'])} and with {first['budget']} rows drawn at random from the same "
        f"owner, paired by training seed ({first['seeds']} seeds).{known}</p>"
        + table(head, body, num_cols=range(1, 5 + len(keys)), table_id="versus-random-table")
        + "</section>"
    )
