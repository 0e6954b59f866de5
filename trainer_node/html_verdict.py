"""The verdict box at the top of the HTML report: whom to pay, whose rows hurt, warnings.

The wording comes from trainer_node.verdict (shared with the terminal summary); this module only
escapes it and marks owner names up.
"""

from __future__ import annotations

from typing import Any

from trainer_node.html_common import esc
from trainer_node.verdict import (
    OwnerName,
    Sentence,
    decision_sentences,
    harm_sentences,
    other_sentences,
)

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
