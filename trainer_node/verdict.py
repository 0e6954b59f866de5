"""The report's verdict: whom to pay, whose rows hurt the trainer, and why an owner gained nothing.

Computed from a report dict alone (report.json), so `mycroft report RUN.json` re-renders it and an
older report without a stored verdict gets one too. Pure: no I/O, no plotting. The wording lives
in `verdict_sentences`, shared by the terminal summary and the HTML page.
"""

from __future__ import annotations

from typing import Any

from trainer_node.config import FULL_METHOD
from trainer_node.ranking import gain_stats
from trainer_node.verdict_sentences import (
    all_sentences,
    decision_sentences,
    harm_sentences,
    interval_text,
    other_sentences,
    sentence_text,
)

# A class "collapses" when its mean test accuracy falls by at least this much from the baseline
# and the fall is beyond seed noise (the 95% interval of the per-seed drops lies above 0; with
# one seed there is no interval and the threshold alone decides).
# 15 points: smaller per-class moves are common between fine-tuning runs of a small model.
CLASS_DROP = 0.15
# Overall test accuracy averages over every class, so a much smaller fall is already a harm.
TEST_DROP = 0.02

Report = dict[str, Any]


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
            else f"gain not distinguishable from 0 (95% CI {interval_text(ci)})"
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
