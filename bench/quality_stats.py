"""Aggregation for the quality bench: per-seed cells -> means with 95% CIs, the share of each
reference (full information, the yardstick) recovered, gain relative to random, and
owner-ranking agreement.

Every gain here is control-relative (the cell's `dhard_gain` / `test_gain`: accuracy minus that
of the same schedule on as many of the trainer's own rows); the baseline-relative gains are kept
alongside as `base_dhard_gain` / `base_test_gain` for reference only.

Intervals are plain two-sided 95% t-intervals (trainer_node.ranking.mean_interval), never
clamped: trainer_node.ranking.gain_stats clamps to [-1, 1], which suits a single accuracy gain but not a ratio (a share of 250% of the
reference printed as `250.0 ± -12.9`), a difference of two gains (range [-2, 2]) or an accuracy
near 1 (the clamp shrinks the half-width). Spearman and Kendall reuse trainer_node.ranking."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from bench.quality_core import FULL, REFERENCES, Cell
from trainer_node.ranking import kendall_tau_b, mean_interval, spearman

Key = tuple[str, str, float | None]  # (owner, method, budget share; None = a reference)
# Per-cell metrics averaged with a CI (gains and accuracies; None where a cell has none).
MEASURES = (
    "dhard_accuracy",
    "test_accuracy",
    "control_dhard_accuracy",
    "control_test_accuracy",
    "dhard_gain",
    "test_gain",
    "subpop_accuracy",
    "rest_accuracy",
    "subpop_gain",
    "rest_gain",
    "base_dhard_gain",
    "base_test_gain",
)
# Per-cell shares of the picks, averaged over the seeds that returned rows.
SHARES = (
    "relevant_share",
    "clean_share",
    "needle_share",
    "wrong_label_share",
    "noisy_feature_share",
)


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and the half-width of the unclamped 95% t-interval (None for one
    value), as JSON."""
    s = mean_interval(values)
    half = None if s.ci95 is None else (s.ci95[1] - s.ci95[0]) / 2
    return {"mean": s.mean, "ci95_half": half, "std": s.std, "n": s.n}


def _mean_ci_or_none(values: Iterable[float | None]) -> dict[str, Any] | None:
    vals = [v for v in values if v is not None]
    return mean_ci(vals) if vals else None


def _ratio(num: float, den: float) -> float | None:
    # A ratio to a gain that is not clearly positive says nothing: leave it out.
    return num / den if den > 1e-9 else None


def per_seed_ratio(num: dict[int, float], den: dict[int, float]) -> dict[str, Any] | None:
    """num[seed] / den[seed] over the seeds where the denominator is positive, mean ± CI (the
    paired ratio: each seed's subset against that seed's reference). None when no seed has a
    positive denominator; `n` says how many seeds counted."""
    ratios = [num[s] / den[s] for s in num if s in den and den[s] > 1e-9]
    return mean_ci(ratios) if ratios else None


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Per-seed a - b (same data, baseline, D_hard and control), mean ± CI."""
    diffs = [a[s] - b[s] for s in a if s in b]
    return mean_ci(diffs) if diffs else None


def group(cells: list[Cell]) -> dict[Key, list[Cell]]:
    out: dict[Key, list[Cell]] = defaultdict(list)
    for c in cells:
        out[(c.owner, c.method, c.budget_share)].append(c)
    return out


def _by_seed(cells: list[Cell], metric: str = "dhard_gain") -> dict[int, float]:
    return {c.seed: getattr(c, metric) for c in cells}


def _row(owner: str, method: str, share: float | None, cs: list[Cell]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "owner": owner,
        "method": method,
        "budget_share": share,
        "rows": int(round(np.mean([c.rows for c in cs]))),
        "select_seconds": float(np.mean([c.select_seconds for c in cs])),
        "train_seconds": float(np.mean([c.train_seconds for c in cs])),
    }
    for m in MEASURES:
        row[m] = _mean_ci_or_none(getattr(c, m) for c in cs)
    for s in SHARES:
        vals = [getattr(c, s) for c in cs if getattr(c, s) is not None]
        row[s] = float(np.mean(vals)) if vals else None
    return row


def summarise(
    cells: list[Cell],
    owners: list[str],
    methods: Sequence[str],
    budgets: Sequence[float],
    yardstick: str = FULL,
) -> dict[str, Any]:
    """Everything the report needs, JSON-ready. `yardstick`: the reference (one of
    REFERENCES run for every owner) that owner rankings are judged against."""
    groups = group(cells)
    by_key = {k: _row(*k, cs) for k, cs in groups.items()}
    refs = [r for r in REFERENCES if all((o, r, None) in by_key for o in owners)]
    if yardstick not in refs:
        raise ValueError(f"yardstick {yardstick!r} was not run for every owner (ran: {refs})")
    ref_gain = {r: {o: by_key[(o, r, None)]["dhard_gain"]["mean"] for o in owners} for r in refs}
    for (owner, _method, share), row in by_key.items():
        mine = _by_seed(groups[(owner, row["method"], share)])
        for r in refs:
            ref_cells = groups[(owner, r, None)]
            row[f"recovered_of_{r}"] = _ratio(row["dhard_gain"]["mean"], ref_gain[r][owner])
            row[f"recovered_per_seed_{r}"] = per_seed_ratio(mine, _by_seed(ref_cells))
        rnd = groups.get((owner, "random", share))
        row["x_random"] = None
        row["vs_random"] = None
        if rnd is not None and share is not None:
            row["x_random"] = _ratio(
                row["dhard_gain"]["mean"], by_key[(owner, "random", share)]["dhard_gain"]["mean"]
            )
            row["vs_random"] = paired_difference(mine, _by_seed(rnd))
        # the names the report used before references other than full existed
        row["recovered_of_full"] = row.get(f"recovered_of_{FULL}")
        row["recovered_per_seed"] = row.get(f"recovered_per_seed_{FULL}")
    agreement = [
        _agreement(groups, by_key, owners, method, share, ref_gain, yardstick)
        for method in methods
        for share in budgets
    ]
    rows = sorted(
        by_key.values(), key=lambda r: (r["owner"], r["method"], r["budget_share"] or 2.0)
    )
    return {
        "rows": rows,
        "references": ref_gain,
        "yardstick": yardstick,
        "full_gain": ref_gain[FULL],
        "full_order": sorted(owners, key=lambda o: -ref_gain[FULL][o]),
        "yardstick_order": sorted(owners, key=lambda o: -ref_gain[yardstick][o]),
        "agreement": agreement,
    }


def _agreement(groups, by_key, owners, method, share, ref_gain, yardstick) -> dict[str, Any]:
    gains = [by_key[(o, method, share)]["dhard_gain"]["mean"] for o in owners]
    out: dict[str, Any] = {
        "method": method,
        "budget_share": share,
        "order": [o for _, o in sorted(zip(gains, owners, strict=True), reverse=True)],
    }
    for ref, ref_by_owner in ref_gain.items():
        target = [ref_by_owner[o] for o in owners]
        out[f"spearman_{ref}"] = spearman(gains, target)
        out[f"kendall_tau_{ref}"] = kendall_tau_b(gains, target)
    out["spearman"] = out[f"spearman_{yardstick}"]
    out["kendall_tau"] = out[f"kendall_tau_{yardstick}"]
    out["per_seed_spearman"] = _per_seed_rank(groups, owners, method, share, yardstick)
    return out


def _per_seed_rank(groups, owners, method: str, share: float, ref: str) -> list[float | None]:
    """Spearman per seed: one seed's budgeted ranking against that seed's reference ranking."""
    seeds = sorted(c.seed for c in groups[(owners[0], ref, None)])
    out = []
    for seed in seeds:
        a = [_by_seed(groups[(o, method, share)]).get(seed) for o in owners]
        b = [_by_seed(groups[(o, ref, None)]).get(seed) for o in owners]
        out.append(None if None in a or None in b else spearman(a, b))
    return out


def cells_json(cells: list[Cell]) -> list[dict]:
    return [asdict(c) for c in cells]
