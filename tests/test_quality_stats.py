"""The quality bench's statistics on constructed numbers: intervals of ratios and paired
differences are never clamped (a share of 250% of the reference once printed as
`250.0 ± -12.9`), and owner rankings are judged against the chosen yardstick."""

from __future__ import annotations

import math

import pytest

from bench.quality_core import FULL, Cell
from bench.quality_report import ci
from bench.quality_stats import mean_ci, paired_difference, per_seed_ratio, summarise
from bench.quality_train import ORACLE
from trainer_node.ranking import t_critical_95


def test_interval_of_a_share_above_one_is_the_plain_t_interval():
    shares = [2.4, 2.6, 2.5]  # 240-260% of the reference
    s = mean_ci(shares)
    assert s["mean"] == pytest.approx(2.5)
    assert s["ci95_half"] == pytest.approx(t_critical_95(2) * 0.1 / math.sqrt(3))
    assert ci(s) == "250.0 ± 24.8"  # percent, a positive half-width


def test_interval_of_an_accuracy_near_one_is_not_shrunk():
    s = mean_ci([0.99, 0.97, 0.95])
    assert s["ci95_half"] == pytest.approx(t_critical_95(2) * 0.02 / math.sqrt(3))
    assert s["mean"] + s["ci95_half"] > 1.0  # the t-interval itself, not cut at 1


def test_paired_difference_of_gains_may_exceed_one():
    d = paired_difference({0: 0.9, 1: 0.8, 2: 0.7}, {0: -0.6, 1: -0.5, 2: -0.7})
    assert d is not None and d["mean"] == pytest.approx(1.4)
    assert d["ci95_half"] > 0 and d["n"] == 3


def test_per_seed_ratio_leaves_out_seeds_whose_reference_gained_nothing():
    r = per_seed_ratio({0: 0.2, 1: 0.3, 2: 0.1}, {0: 0.1, 1: 0.0, 2: -0.1})
    assert r is not None and r["n"] == 1 and r["mean"] == pytest.approx(2.0)
    assert r["ci95_half"] is None  # one seed: no interval claimed
    assert per_seed_ratio({0: 0.2}, {0: 0.0}) is None


def test_single_value_has_no_interval_and_empty_is_an_error():
    assert mean_ci([0.3])["ci95_half"] is None
    with pytest.raises(ValueError):
        mean_ci([])


def _cell(seed: int, owner: str, method: str, share: float | None, gain: float) -> Cell:
    return Cell(
        seed=seed,
        owner=owner,
        method=method,
        budget_share=share,
        rows=10,
        relevant_share=1.0,
        clean_share=1.0,
        needle_share=None,
        wrong_label_share=None,
        noisy_feature_share=None,
        select_seconds=0.0,
        dhard_accuracy=gain,
        test_accuracy=0.5,
        control_dhard_accuracy=0.0,
        control_test_accuracy=0.5,
        dhard_gain=gain,
        test_gain=0.0,
        subpop_accuracy=None,
        rest_accuracy=None,
        subpop_gain=None,
        rest_gain=None,
        base_dhard_gain=gain,
        base_test_gain=0.0,
        train_seconds=0.0,
    )


def _constructed() -> list[Cell]:
    """Three owners: full information ranks a > b > c, the oracle c > b > a; the budgeted
    method's gains follow the oracle and exceed full information on owner c."""
    gains = {
        FULL: {"a": 0.30, "b": 0.20, "c": 0.10},
        ORACLE: {"a": 0.05, "b": 0.15, "c": 0.40},
        "feature": {"a": 0.02, "b": 0.10, "c": 0.25},
        "random": {"a": 0.01, "b": 0.05, "c": 0.05},
    }
    cells = []
    for seed, jitter in enumerate((-0.01, 0.0, 0.01)):
        for method, by_owner in gains.items():
            share = None if method in (FULL, ORACLE) else 0.01
            for owner, g in by_owner.items():
                cells.append(_cell(seed, owner, method, share, g + jitter))
    return cells


def test_summary_judges_rankings_against_the_yardstick_and_keeps_full_beside_it():
    s = summarise(_constructed(), ["a", "b", "c"], ("random", "feature"), (0.01,), ORACLE)
    assert s["yardstick"] == ORACLE
    assert s["yardstick_order"] == ["c", "b", "a"] and s["full_order"] == ["a", "b", "c"]
    feature = next(a for a in s["agreement"] if a["method"] == "feature")
    assert feature["spearman"] == pytest.approx(1.0)  # matches the oracle's ranking
    assert feature["spearman_full"] == pytest.approx(-1.0)  # the reverse of full's
    assert feature["per_seed_spearman"] == [pytest.approx(1.0)] * 3


def test_summary_shares_of_a_reference_above_one_keep_their_interval():
    s = summarise(_constructed(), ["a", "b", "c"], ("random", "feature"), (0.01,), ORACLE)
    row = next(r for r in s["rows"] if (r["owner"], r["method"]) == ("c", "feature"))
    rec = row["recovered_per_seed_full"]  # 0.24/0.09, 0.25/0.10, 0.26/0.11: about 250%
    assert rec["mean"] > 2.0 and rec["ci95_half"] > 0
    assert "± -" not in ci(rec)
    assert row["vs_random"]["mean"] == pytest.approx(0.20)  # paired, per seed
    assert row["x_random"] == pytest.approx(0.25 / 0.05)


def test_summary_refuses_a_yardstick_that_was_not_run():
    cells = [c for c in _constructed() if c.method != ORACLE]
    with pytest.raises(ValueError, match="yardstick"):
        summarise(cells, ["a", "b", "c"], ("random", "feature"), (0.01,), ORACLE)
