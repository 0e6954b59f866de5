"""Mycroft's selection against random rows from the same owner, at the same budget.

A buyer's first question after "whom to pay" is whether the targeted selection earned its
keep: the same number of rows drawn at random from the same owner is the naive purchase.
Each owner is compared at the ranking's (method, budget, training mode) with the `random`
method's results at that budget and mode, paired by training seed (both runs fine-tune from
the same baseline with the same seed, so the per-seed difference cancels seed noise).

In a simulation the report also knows what each request returned (RequestRecord.truth): the
share of needles (rows of the sub-population the trainer lacks) and of wrong labels, shown
beside the gains because they explain them.

Computed from a report dict alone, like the verdict, so a saved report renders the same.
"""

from __future__ import annotations

from typing import Any

from trainer_node.ranking import mean_interval
from trainer_node.verdict import primary, setting_request

RANDOM = "random"
# A ratio to a random gain below half a point says nothing (random often gains ~0 on rare
# failures): the ratio is then left out and only the difference is shown.
MIN_RANDOM_GAIN = 0.005


def _gains(owner: dict[str, Any], method: str, budget: int, mode: str) -> dict[int, float]:
    return {
        r["seed"]: r["dhard_gain"]
        for r in owner["results"]
        if (r["method"], r["budget"], r["training_mode"]) == (method, budget, mode)
        and r["dhard_gain"] is not None
    }


def versus_random(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per owner with both results: the smart and random mean D_hard gains, their paired
    difference (mean and 95% interval; None with one seed) and the ratio. Empty when the
    ranking method is random itself or random was not run at the ranking budget."""
    method, budget, mode = primary(report)
    if method == RANDOM:
        return []
    out = []
    for owner in report["owners"]:
        smart = _gains(owner, method, budget, mode)
        rand = _gains(owner, RANDOM, budget, mode)
        seeds = sorted(set(smart) & set(rand))
        if not seeds:
            continue
        diff = mean_interval([smart[s] - rand[s] for s in seeds])
        smart_mean = sum(smart[s] for s in seeds) / len(seeds)
        rand_mean = sum(rand[s] for s in seeds) / len(seeds)
        out.append(
            {
                "owner": owner["name"],
                "method": method,
                "budget": budget,
                "seeds": len(seeds),
                "smart_gain": smart_mean,
                "random_gain": rand_mean,
                "difference": diff.mean,
                "difference_ci95": list(diff.ci95) if diff.ci95 else None,
                "ratio": smart_mean / rand_mean if rand_mean >= MIN_RANDOM_GAIN else None,
                "smart_truth": _truth(owner, method, budget),
                "random_truth": _truth(owner, RANDOM, budget),
            }
        )
    return out


def _truth(owner: dict[str, Any], method: str, budget: int) -> dict[str, float | None]:
    q = setting_request(owner, method, budget)
    return (q or {}).get("truth") or {}


def truth_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The truth shares any row knows, in a fixed order ("needle", "wrong_label", ...)."""
    keys = ("needle", "wrong_label", "noisy_features")
    return [
        k
        for k in keys
        if any(r[side].get(k) is not None for r in rows for side in ("smart_truth", "random_truth"))
    ]


TRUTH_LABELS = {"needle": "needles", "wrong_label": "wrong labels", "noisy_features": "noisy"}


def share_pair(row: dict[str, Any], key: str) -> str:
    """'75% / 4%': the share among the method's rows, then among random's."""

    def one(side: str) -> str:
        v = row[side].get(key)
        return "–" if v is None else f"{100 * v:.0f}%"

    return f"{one('smart_truth')} / {one('random_truth')}"


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def comparison_text(row: dict[str, Any]) -> str:
    """'+45.1 vs +8.0 pp (5.6×); difference +37.1 pp, 95% CI +30.2 to +44.0'."""
    ratio = f" ({row['ratio']:.1f}×)" if row["ratio"] is not None and row["ratio"] > 0 else ""
    ci = row["difference_ci95"]
    interval = f", 95% CI {_pp(ci[0])} to {_pp(ci[1])}" if ci else " (one seed: no interval)"
    return (
        f"{_pp(row['smart_gain'])} vs {_pp(row['random_gain'])} pp{ratio}; "
        f"difference {_pp(row['difference'])} pp{interval}"
    )


def versus_random_lines(report: dict[str, Any]) -> list[str]:
    """Terminal lines: a heading, then one line per owner."""
    rows = versus_random(report)
    if not rows:
        return []
    first = rows[0]
    head = (
        f"Mycroft's selection vs random rows, same owner and budget "
        f"({first['method']} vs random @ {first['budget']} rows, D_hard-eval gain):"
    )
    width = max(len(r["owner"]) for r in rows)
    keys = truth_columns(rows)

    def known(r: dict[str, Any]) -> str:
        # what the simulation knows about the rows: it explains the gains
        parts = [f"{TRUTH_LABELS[k]} {share_pair(r, k)}" for k in keys]
        return f"; {', '.join(parts)}" if parts else ""

    return [head] + [f"  {r['owner']:<{width}}  {comparison_text(r)}{known(r)}" for r in rows]
