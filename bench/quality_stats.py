"""Aggregation for the quality bench: per-seed cells -> means with 95% CIs, share of the
full-information gain recovered, gain relative to random, and owner-ranking agreement.

Every gain here is control-relative (the cell's `dhard_gain` / `test_gain`: accuracy minus that
of the same schedule on as many of the trainer's own rows); the baseline-relative gains are kept
alongside as `base_dhard_gain` / `base_test_gain` for reference only.

Statistics reuse trainer_node.ranking (t-interval, Spearman, Kendall tau-b)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from typing import Any

import numpy as np

from bench.quality_core import FULL, Cell
from trainer_node.ranking import gain_stats, kendall_tau_b, spearman

Key = tuple[str, str, float | None]  # (owner, method, budget share; None = full)


def _stat(values: list[float]) -> dict[str, Any]:
    s = gain_stats(values)
    half = None if s.ci95 is None else (s.ci95[1] - s.ci95[0]) / 2
    return {"mean": s.mean, "ci95_half": half, "std": s.std, "n": s.n}


def _ratio(num: float, den: float) -> float | None:
    # A ratio to a gain that is not clearly positive says nothing: leave it out.
    return num / den if den > 1e-9 else None


def group(cells: list[Cell]) -> dict[Key, list[Cell]]:
    out: dict[Key, list[Cell]] = defaultdict(list)
    for c in cells:
        out[(c.owner, c.method, c.budget_share)].append(c)
    return out


def _mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarise(cells: list[Cell], owners: list[str], methods: tuple[str, ...], budgets) -> dict:
    """Everything the report needs, JSON-ready."""
    groups = group(cells)
    rows: list[dict[str, Any]] = []
    for (owner, method, share), cs in groups.items():
        rows.append(
            {
                "owner": owner,
                "method": method,
                "budget_share": share,
                "rows": int(round(np.mean([c.rows for c in cs]))),
                "dhard_accuracy": _stat([c.dhard_accuracy for c in cs]),
                "test_accuracy": _stat([c.test_accuracy for c in cs]),
                "control_dhard_accuracy": _stat([c.control_dhard_accuracy for c in cs]),
                "control_test_accuracy": _stat([c.control_test_accuracy for c in cs]),
                "dhard_gain": _stat([c.dhard_gain for c in cs]),
                "test_gain": _stat([c.test_gain for c in cs]),
                "base_dhard_gain": _stat([c.base_dhard_gain for c in cs]),
                "base_test_gain": _stat([c.base_test_gain for c in cs]),
                "relevant_share": _mean_or_none([c.relevant_share for c in cs]),
                "clean_share": _mean_or_none([c.clean_share for c in cs]),
                "select_seconds": float(np.mean([c.select_seconds for c in cs])),
                "train_seconds": float(np.mean([c.train_seconds for c in cs])),
            }
        )
    by_key = {(r["owner"], r["method"], r["budget_share"]): r for r in rows}
    full_gain = {o: by_key[(o, FULL, None)]["dhard_gain"]["mean"] for o in owners}
    for r in rows:
        g = r["dhard_gain"]["mean"]
        r["recovered_of_full"] = _ratio(g, full_gain[r["owner"]])
        rnd = by_key.get((r["owner"], "random", r["budget_share"]))
        r["x_random"] = None if rnd is None else _ratio(g, rnd["dhard_gain"]["mean"])
    _per_seed_recovery(rows, groups)

    full_order = sorted(owners, key=lambda o: -full_gain[o])
    agreement = []
    for method in methods:
        for share in budgets:
            gains = [by_key[(o, method, share)]["dhard_gain"]["mean"] for o in owners]
            fulls = [full_gain[o] for o in owners]
            agreement.append(
                {
                    "method": method,
                    "budget_share": share,
                    "spearman": spearman(gains, fulls),
                    "kendall_tau": kendall_tau_b(gains, fulls),
                    "order": [o for _, o in sorted(zip(gains, owners, strict=True), reverse=True)],
                    "per_seed_spearman": _per_seed_rank(groups, owners, method, share),
                }
            )
    return {
        "rows": sorted(rows, key=lambda r: (r["owner"], r["method"], r["budget_share"] or 2.0)),
        "full_gain": full_gain,
        "full_order": full_order,
        "agreement": agreement,
    }


def _per_seed_recovery(rows: list[dict], groups: dict[Key, list[Cell]]) -> None:
    """recovered_of_full per seed (gain / that seed's full gain), mean and CI over seeds."""
    for r in rows:
        full = {c.seed: c.dhard_gain for c in groups[(r["owner"], FULL, None)]}
        cs = groups[(r["owner"], r["method"], r["budget_share"])]
        ratios = [c.dhard_gain / full[c.seed] for c in cs if full[c.seed] > 0]
        r["recovered_per_seed"] = _stat(ratios) if ratios else None


def _per_seed_rank(groups, owners: list[str], method: str, share: float) -> list[float | None]:
    """Spearman per seed: how often one seed's budgeted ranking matches that seed's full one."""
    seeds = [c.seed for c in groups[(owners[0], FULL, None)]]
    out = []
    for seed in seeds:
        a = [next(c for c in groups[(o, method, share)] if c.seed == seed) for o in owners]
        b = [next(c for c in groups[(o, FULL, None)] if c.seed == seed) for o in owners]
        out.append(spearman([c.dhard_gain for c in a], [c.dhard_gain for c in b]))
    return out


def cells_json(cells: list[Cell]) -> list[dict]:
    return [asdict(c) for c in cells]


def paired_vs_random(cells: list[dict], owner: str, share: float) -> dict[str, dict]:
    """Per method: per-seed D_hard gain minus random's on the same seed (same data, baseline
    and D_hard), mean and 95% t-interval. The fair test of "beats random": seeds move both."""
    at = [c for c in cells if c["owner"] == owner and c["budget_share"] == share]
    rnd = {c["seed"]: c["dhard_gain"] for c in at if c["method"] == "random"}
    out = {}
    for method in sorted({c["method"] for c in at} - {"random"}):
        diffs = [c["dhard_gain"] - rnd[c["seed"]] for c in at if c["method"] == method]
        out[method] = _stat(diffs)
    return out
