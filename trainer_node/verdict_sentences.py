"""The verdict in words, shared by the terminal summary and the HTML page.

A sentence is a list of plain strings and `OwnerName` parts, so the page can mark owner names up
(after escaping them) without a second copy of the text.
"""

from __future__ import annotations

from typing import Any

Sentence = list[str]  # plain strings and OwnerName parts, joined in order


class OwnerName(str):
    """An owner's name inside a sentence: renderers may emphasise it (after escaping it)."""


def interval_text(ci: list[float]) -> str:
    return f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} pp"


def _pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def sentence_text(sentence: Sentence) -> str:
    return "".join(sentence)


def _names(names: list[str]) -> Sentence:
    """'a', 'a and b', 'a, b and c' with each name an OwnerName."""
    parts: Sentence = []
    for i, name in enumerate(names):
        if i:
            parts.append(" and " if i == len(names) - 1 else ", ")
        parts.append(OwnerName(name))
    return parts


def decision_sentences(v: dict[str, Any]) -> list[Sentence]:
    s = v["setting"]
    where = f"{s['method']} @ {s['budget']}, {s['training_mode']}"
    by_name = {o["name"]: o for o in v["owners"]}
    if not v["pay"]:
        return [[f"No owner is clearly worth paying: no owner's D_hard gain ({where}) has a "
                 "95% interval above 0."]]  # fmt: skip
    best = by_name[v["pay"][0]]
    gain = f"{_pp(best['gain'])} on D_hard-eval (95% CI {interval_text(best['ci95'])}, {where})"
    if v["decision"] == "pay":
        out = [
            ["Pay ", OwnerName(best["name"]), f": {gain}; no other owner's interval reaches it."]
        ]
    else:
        either = "either is" if len(v["pay"]) == 2 else "any of them is"
        out = [
            _names(v["pay"]) + [f" are tied (their 95% intervals overlap); {either} worth paying."],
            [OwnerName(best["name"]), f" has the highest mean gain: {gain}."],
        ]
    others = [o["name"] for o in v["owners"] if o["worth_paying"] and o["name"] not in v["pay"]]
    if others:
        out.append(["Also a real but clearly smaller gain: "] + _names(others) + ["."])
    if v["best_value"]:
        out.append(_value_sentence(v, by_name))
    return out


def _value_sentence(v: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> Sentence:
    best = by_name[v["best_value"]]
    if v["value_basis"] == "price":
        if not best["cost"]:
            return [OwnerName(best["name"]), " is the best value: its rows are free."]
        return [
            "Per unit of price (price × rows received), ",
            OwnerName(best["name"]),
            f" gives the most: {100 * best['gain_per_cost']:+.2f} pp per unit "
            f"(price {best['price']:g} × {best['rows_received']} rows).",
        ]
    return [
        "Per row received, ",
        OwnerName(best["name"]),
        f" gives the most: {100 * best['gain_per_row']:+.2f} pp per row "
        f"({best['rows_received']} rows).",
    ]


def _what(harm: dict[str, Any]) -> str:
    name = harm["class_name"]
    # "the trainer's 1 from 86% to 49%" misreads: a class named by a number is said as one.
    what = "overall test accuracy" if name is None else name
    what = f"class {name}" if name is not None and not any(c.isalpha() for c in name) else what
    return what + (" (a D_hard class)" if harm["dhard_class"] else "")


def harm_sentences(v: dict[str, Any]) -> list[Sentence]:
    """First the collapses every measured owner shares (one sentence each: they do not tell the
    owners apart), then one sentence per owner for the harms its rows alone caused."""
    measured = [o["name"] for o in v["owners"] if o["rows_received"] and o["gain"] is not None]
    by_class: dict[str | None, dict[str, dict[str, Any]]] = {}
    for h in v["harms"]:
        by_class.setdefault(h["class_name"], {})[h["owner"]] = h
    shared = [c for c, hs in by_class.items() if len(measured) > 1 and set(measured) <= set(hs)]
    out = []
    for cls in shared:
        hs = by_class[cls]
        first = hs[measured[0]]
        sentence: Sentence = [f"{_what(first)} fell from {_pct(first['before'])} with every "
                              "owner's rows: to "]  # fmt: skip
        for i, name in enumerate(measured):
            sentence += [", " if i else "", f"{_pct(hs[name]['after'])} with ", OwnerName(name)]
        sentence.append("; so it does not tell the owners apart (the fine-tuning itself may "
                        "cause it).")  # fmt: skip
        out.append(sentence)
    gains = {o["name"]: o["gain"] for o in v["owners"]}
    by_owner: dict[str, list[str]] = {}
    for h in v["harms"]:
        if h["class_name"] not in shared:
            change = f"{_what(h)} from {_pct(h['before'])} to {_pct(h['after'])}"
            by_owner.setdefault(h["owner"], []).append(change)
    for name, changes in by_owner.items():
        gain = gains.get(name)
        tail = "" if gain is None else f", while changing D_hard-eval by {_pp(gain)}"
        tail = f", while improving D_hard-eval by {_pp(gain)}" if gain and gain > 0 else tail
        out.append([OwnerName(name), "'s rows took the trainer's " + _join(changes) + tail + "."])
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def other_sentences(v: dict[str, Any]) -> list[Sentence]:
    """Owners not worth paying, each with the reason when the report shows one."""
    out = []
    for o in v["owners"]:
        if o["worth_paying"]:
            continue
        gain = f" ({_pp(o['gain'])})" if o["gain"] is not None else ""
        why = f": {o['reason']}" if o["reason"] else ""
        out.append(["Not worth paying: ", OwnerName(o["name"]), f"{gain}{why}."])
    return out


def all_sentences(v: dict[str, Any]) -> list[Sentence]:
    return decision_sentences(v) + harm_sentences(v) + other_sentences(v)
