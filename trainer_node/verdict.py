"""The report's verdict: whom to pay, whose rows hurt the trainer, and why an owner gained nothing.

Computed from a report dict alone (report.json), so `mycroft report RUN.json` re-renders it and an
older report without a stored verdict gets one too. Pure: no I/O, no plotting. The wording lives
in `verdict_sentences`, shared by the terminal summary and the HTML page; owner names in it are
`OwnerName`s so the page can mark them up (after escaping) without a second copy of the text.
"""

from __future__ import annotations

from typing import Any

from trainer_node.config import FULL_METHOD
from trainer_node.ranking import gain_stats

# A class "collapses" when its mean test accuracy falls by at least this much from the baseline
# and the fall is beyond seed noise (the 95% interval of the per-seed drops lies above 0; with
# one seed there is no interval and the threshold alone decides).
# 15 points: smaller per-class moves are common between fine-tuning runs of a small model.
CLASS_DROP = 0.15
# Overall test accuracy averages over every class, so a much smaller fall is already a harm.
TEST_DROP = 0.02

Report = dict[str, Any]
Sentence = list[str]  # plain strings and OwnerName parts, joined in order


class OwnerName(str):
    """An owner's name inside a sentence: renderers may emphasise it (after escaping it)."""


def primary(report: Report) -> tuple[str, int, str]:
    """The ranking's (method, budget, training mode)."""
    r = report["settings"]["rank_by"]
    return r["method"], r["budget"], r["training_mode"]


def primary_results(owner: dict[str, Any], report: Report) -> list[dict[str, Any]]:
    """The owner's per-seed results under the ranking's (method, budget, training mode)."""
    method, budget, mode = primary(report)
    return [
        r
        for r in owner["results"]
        if (r["method"], r["budget"], r["training_mode"]) == (method, budget, mode)
    ]


def primary_failures(owner: dict[str, Any], report: Report) -> list[dict[str, Any]]:
    """The owner's cells under the ranking's setting that could not be evaluated."""
    setting = primary(report)
    return [
        f
        for f in owner.get("evaluation_failures") or []  # absent in older reports
        if (f["method"], f["budget"], f["training_mode"]) == setting
    ]


def primary_request(owner: dict[str, Any], report: Report) -> dict[str, Any] | None:
    """The request behind the ranking's setting."""
    method, budget, _ = primary(report)
    return setting_request(owner, method, budget)


def _weighted_truth(ok: list[dict[str, Any]]) -> dict[str, float | None] | None:
    """Rounds' truth shares combined, weighted by the rows each round returned."""
    parts = [(q["truth"], q["rows_received"]) for q in ok if q.get("truth")]
    if not parts:
        return None
    out: dict[str, float | None] = {}
    for key in parts[0][0]:
        known = [(t[key], n) for t, n in parts if t.get(key) is not None]
        total = sum(n for _, n in known)
        out[key] = sum(v * n for v, n in known) / total if total else None
    return out


def setting_request(owner: dict[str, Any], method: str, budget: int) -> dict[str, Any] | None:
    """The owner's request for (method, budget); with selection.rounds its rounds' records
    merged into one (rows summed, ok when any round was answered)."""
    parts = [q for q in owner["requests"] if (q["method"], q["budget"]) == (method, budget)]
    if len(parts) <= 1:
        return parts[0] if parts else None
    ok = [q for q in parts if q["status"] == "ok"]
    last = (ok or parts)[-1]
    return {
        **last,
        "status": "ok" if ok else "failed",
        "rows_requested": budget,
        "rows_received": sum(q["rows_received"] for q in ok),
        "new_rows_charged": sum(q["new_rows_charged"] for q in ok),
        # a class is missing when no round could return it
        "missing_classes": sorted(set.intersection(*(set(q["missing_classes"]) for q in ok)))
        if ok
        else last["missing_classes"],
        "truth": _weighted_truth(ok),
    }


def _pp(x: float) -> str:
    return f"{100 * x:+.1f} pp"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _interval(ci: list[float]) -> str:
    return f"{100 * ci[0]:+.1f} to {100 * ci[1]:+.1f} pp"


def _distinguishable(ci: list[float] | None) -> bool:
    """A gain is worth paying for only when its whole 95% interval lies above 0."""
    return ci is not None and ci[0] > 0


def _overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _short(message: str | None, limit: int = 120) -> str:
    """An error's first line, cut to `limit` characters: the verdict is a summary."""
    lines = (message or "").strip().splitlines()
    line = lines[0] if lines else "no message"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def zero_gain_reason(owner: dict[str, Any], report: Report) -> str | None:
    """Why an owner's rows could not help (or helped less than asked), from what the report
    recorded: the owner's failure, its Describe class counts, and the primary request."""
    if owner["status"] != "ok":
        return f"failed ({owner['error_code'] or 'error'}): {_short(owner['error'])}"
    hard = report["dhard"]["classes"]
    describe = owner.get("describe")
    if hard and describe and describe["classes"]:
        counts = dict(zip(describe["classes"], describe["class_counts"], strict=False))
        if not any(counts.get(c, 0) for c in hard):
            return "holds none of the D_hard classes"
    q = primary_request(owner, report)
    if q is None:
        return "was not asked at the ranking setting"
    if q["status"] != "ok":
        return f"request failed ({q['error_code'] or 'error'}): {_short(q['error'])}"
    failed = primary_failures(owner, report)
    if failed:
        seeds = f"{len(failed)} seed{'s' if len(failed) > 1 else ''}"
        return f"{seeds} failed to evaluate: {_short(failed[0]['error'])}"
    if hard and set(hard) <= set(q["missing_classes"]):
        return "holds none of the D_hard classes"
    got, asked = q["rows_received"], q["rows_requested"]
    reason = q["shortfall_reason"]
    if got == 0:
        return "returned 0 rows" + (f" ({reason})" if reason else "")
    if got < asked and reason and reason.startswith("budget cap"):
        return f"budget exhausted: {got} of {asked} rows"
    if got < asked:
        return f"returned {got} of {asked} rows" + (f" ({reason})" if reason else "")
    return None


def _owner_entry(
    owner: dict[str, Any], entry: dict[str, Any] | None, report: Report
) -> dict[str, Any]:
    q = primary_request(owner, report)
    rows = q["rows_received"] if q and q["status"] == "ok" else 0
    gain = entry["dhard_gain_mean"] if entry else None
    ci = entry["ci95"] if entry else None
    price = owner.get("price")
    cost = price * rows if price is not None else None
    reason = zero_gain_reason(owner, report)
    if reason is None and entry is not None and not _distinguishable(ci):
        reason = (
            "one seed: no confidence interval"
            if ci is None
            else f"gain not distinguishable from 0 (95% CI {_interval(ci)})"
        )
    return {
        "name": owner["name"],
        "status": owner["status"],
        "rank": entry["rank"] if entry else None,
        "gain": gain,
        "ci95": ci,
        "rows_received": rows,
        "gain_per_row": gain / rows if gain is not None and rows else None,
        "price": price,
        "cost": cost,
        "gain_per_cost": gain / cost if gain is not None and cost else None,
        "worth_paying": entry is not None and _distinguishable(ci),
        "reason": reason,
    }


def _drop_harm(before: float, afters: list[float], threshold: float) -> float | None:
    """The mean after-value when it fell by >= threshold and beyond seed noise, else None."""
    drops = gain_stats([before - a for a in afters])
    noisy = drops.ci95 is not None and drops.ci95[0] <= 0
    return None if drops.mean < threshold or noisy else sum(afters) / len(afters)


def owner_harms(owner: dict[str, Any], report: Report) -> list[dict[str, Any]]:
    """Test-set classes (and overall accuracy) the owner's rows made clearly worse than the
    baseline, under the primary setting."""
    results = primary_results(owner, report)
    if not results:
        return []
    base = report["baseline"]
    hard = set(report["dhard"]["classes"])
    harms = []
    for c, name in enumerate(report["class_names"]):
        before = base["per_class_accuracy"][c]
        afters = [r["per_class_accuracy"][c] for r in results]
        if before is None or any(a is None for a in afters):
            continue
        after = _drop_harm(before, afters, CLASS_DROP)
        if after is not None:
            harms.append(_harm(owner, name, name in hard, before, after, len(results)))
    after = _drop_harm(base["test_accuracy"], [r["test_accuracy"] for r in results], TEST_DROP)
    if after is not None:
        harms.append(_harm(owner, None, False, base["test_accuracy"], after, len(results)))
    return harms


def _harm(
    owner: dict[str, Any], cls: str | None, hard: bool, before: float, after: float, n: int
) -> dict[str, Any]:
    return {
        "owner": owner["name"],
        "class_name": cls,  # None: overall test accuracy
        "dhard_class": hard,
        "before": before,
        "after": after,
        "seeds": n,
    }


def _best_value(pay: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(owner, basis) giving the most gain per unit of price (when every candidate has a price)
    or per row received; (None, None) with fewer than two candidates to choose between."""
    if len(pay) < 2:
        return None, None
    if all(o["price"] is not None for o in pay):
        # a free owner (cost 0) with a positive gain beats any priced one
        best = max(pay, key=lambda o: float("inf") if not o["cost"] else o["gain_per_cost"])
        return best["name"], "price"
    best = max(pay, key=lambda o: o["gain_per_row"] or 0.0)
    return best["name"], "row"


def compute_verdict(report: Report) -> dict[str, Any]:
    """The verdict object stored in report.json (schema: `verdict`)."""
    method, budget, mode = primary(report)
    ranked = {e["owner"]: e for e in report["ranking"]}
    owners = sorted(
        (_owner_entry(o, ranked.get(o["name"]), report) for o in report["owners"]),
        key=lambda o: (o["rank"] is None, o["rank"] or 0, o["name"]),
    )
    eligible = [o for o in owners if o["worth_paying"]]
    pay = []
    if eligible:
        best = eligible[0]  # ranked order: the highest mean gain among the eligible
        pay = [best] + [o for o in eligible[1:] if _overlap(o["ci95"], best["ci95"])]
    value_owner, value_basis = _best_value(pay)
    verdict = {
        "setting": {"method": method, "budget": budget, "training_mode": mode},
        "decision": "none" if not pay else ("tied" if len(pay) > 1 else "pay"),
        "pay": [o["name"] for o in pay],
        "best_value": value_owner,
        "value_basis": value_basis,
        "owners": owners,
        "harms": [h for o in report["owners"] for h in owner_harms(o, report)],
        "warnings": [str(w) for w in report.get("warnings") or []],
    }
    verdict["summary"] = " ".join(sentence_text(s) for s in all_sentences(verdict))
    return verdict


# ---------------------------------------------------------------- wording


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
    gain = f"{_pp(best['gain'])} on D_hard-eval (95% CI {_interval(best['ci95'])}, {where})"
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


def verdict_lines(report: Report) -> list[str]:
    """The verdict as plain-text lines for the terminal summary."""
    v = compute_verdict(report)
    lines = ["Verdict: " + " ".join(sentence_text(s) for s in decision_sentences(v))]
    lines += ["  harm: " + sentence_text(s) for s in harm_sentences(v)]
    # report warnings are printed with the summary's other trailing lines (report.py)
    return lines + ["  " + sentence_text(s) for s in other_sentences(v)]


# The full run reveals all of an owner's rows for evaluation only; budgeted requests are what a
# purchase would reveal. Shared by the chart and the budget table.
def revealed_rows(owner: dict[str, Any]) -> tuple[int, int]:
    """(rows newly revealed by budgeted requests, rows newly revealed by the full run)."""
    ok = [q for q in owner["requests"] if q["status"] == "ok"]
    full = sum(q["new_rows_charged"] for q in ok if q["method"] == FULL_METHOD)
    return sum(q["new_rows_charged"] for q in ok) - full, full
