"""Small HTML building blocks shared by the report page and its verdict box.

Every string taken from the report goes through `esc`: owner names and error messages come from
the network and must not become markup.
"""

from __future__ import annotations

import html
from collections.abc import Collection
from typing import Any


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def signed_cell(x: float | None, extra: str = "", digits: int = 1) -> str:
    cls = "" if x is None or abs(x) < 5e-4 else ("pos" if x > 0 else "neg")
    text = "–" if x is None else f"{100 * x:+.{digits}f}"
    return f'<td class="num {cls}">{text}{extra}</td>'


def table(
    head: list[str], rows: list[str], num_cols: Collection[int] = (), table_id: str | None = None
) -> str:
    """`head` is trusted markup (our own column names); `rows` are already-escaped <tr>s."""
    ths = "".join(
        f'<th class="num">{h}</th>' if i in num_cols else f"<th>{h}</th>"
        for i, h in enumerate(head)
    )
    tid = f' id="{table_id}"' if table_id else ""
    return f"<table{tid}><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def figure(uri: str | None, alt: str, caption: str, empty: str = "") -> str:
    """An embedded chart; `empty` (a note, or nothing) when there was nothing to draw."""
    if uri is None:
        return f'<p class="note">{esc(empty)}</p>' if empty else ""
    return f'<figure><img src="{uri}" alt="{esc(alt)}"><figcaption>{caption}</figcaption></figure>'
