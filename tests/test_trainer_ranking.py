"""Utility statistics and owner ranking on constructed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer_node import ranking
from trainer_node.ranking import gain_stats, kendall_tau_b, rank_owners, spearman


def test_gain_stats_t_interval():
    g = gain_stats([0.1, 0.2, 0.3])
    assert g.mean == pytest.approx(0.2)
    assert g.std == pytest.approx(0.1)  # sample std, ddof=1
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2)
    assert g.ci95 == pytest.approx((0.2 - half, 0.2 + half))
    assert g.n == 3


def test_gain_stats_single_seed_has_no_interval():
    g = gain_stats([0.25])
    assert (g.mean, g.std, g.ci95, g.n) == (0.25, 0.0, None, 1)
    with pytest.raises(ValueError):
        gain_stats([])


def _c(owner: str, mean: float, ci=None, test: float = 0.0) -> ranking.Candidate:
    return ranking.Candidate(owner, ranking.GainStats(mean, 0.0, ci, 3 if ci else 1), test)


def test_rank_by_mean_then_ci_then_test_then_name():
    cands = [
        _c("e", 0.10, (0.05, 0.15)),
        _c("a", 0.30),
        _c("d", 0.10, (0.08, 0.12)),  # same mean as e, surer: ahead
        _c("c", 0.10, (0.08, 0.12), test=0.02),  # same again, less forgetting: ahead of d
        _c("b", 0.10, (0.08, 0.12), test=0.02),  # full tie with c: name decides
        _c("f", -0.05),
    ]
    ranked = rank_owners(cands)
    assert [(r, c.owner) for r, c in ranked] == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
        (4, "d"),
        (5, "e"),
        (6, "f"),
    ]
    # Order of the input never matters.
    assert [c.owner for _, c in rank_owners(list(reversed(cands)))] == list("abcdef")


def test_float_noise_does_not_decide_rank():
    ranked = rank_owners([_c("b", 0.1 + 1e-15), _c("a", 0.1)])
    assert [c.owner for _, c in ranked] == ["a", "b"]


def _reference_spearman(a: list[float], b: list[float]) -> float | None:
    """Average ranks by counting, then Pearson's r on them. Ranks and their mean, (n + 1) / 2,
    are multiples of 1/2, so every sum below is exact in floats."""

    def ranks(x: list[float]) -> list[float]:
        return [sum(y < v for y in x) + (sum(y == v for y in x) + 1) / 2 for v in x]

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)
    return None if var == 0 else cov / math.sqrt(var)


def _reference_tau_b(a: list[float], b: list[float]) -> float | None:
    """Every pair counted: (concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b))."""
    n = len(a)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    sign = [(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])) for i, j in pairs]
    tied_a = sum(a[i] == a[j] for i, j in pairs)
    tied_b = sum(b[i] == b[j] for i, j in pairs)
    denom = (len(pairs) - tied_a) * (len(pairs) - tied_b)
    return None if denom == 0 else float(sum(sign)) / math.sqrt(denom)


def _tie_heavy_pair(rng: np.random.Generator) -> tuple[list[float], list[float]]:
    n = int(rng.integers(0, 16))
    a = rng.integers(0, rng.integers(1, 5), size=n) * 0.1  # few distinct values, some constant
    shape = rng.integers(0, 3)
    if shape == 0:
        b = rng.integers(0, rng.integers(1, 5), size=n).astype(float)  # unrelated
    elif shape == 1:
        b = np.round(a + rng.normal(0, 0.1, size=n), 1)  # related, rounded into ties
    else:
        b = -a  # reversed
    return a.tolist(), b.tolist()


def test_rank_correlations_equal_a_brute_force_reference():
    rng = np.random.default_rng(7)
    mismatches, undefined = [], 0
    for _ in range(3000):
        a, b = _tie_heavy_pair(rng)
        for ours, ref in ((spearman, _reference_spearman), (kendall_tau_b, _reference_tau_b)):
            got, want = ours(a, b), ref(a, b) if len(a) >= 2 else None
            undefined += want is None
            if (got is None) != (want is None) or (want is not None and abs(got - want) > 1e-12):
                mismatches.append((ours.__name__, a, b, got, want))
    assert mismatches == []
    assert 500 < undefined < 4000  # the undefined cases were exercised, not the only ones


def test_rank_correlations_undefined_cases():
    assert spearman([1.0], [2.0]) is None
    assert kendall_tau_b([1.0, 1.0], [1.0, 2.0]) is None  # one side constant
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau_b([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)


def test_ci_is_clamped_to_the_possible_range_of_an_accuracy_gain():
    wide = gain_stats([0.95, 0.05])  # two seeds: t = 12.7, the raw interval overshoots
    assert wide.ci95 == (-1.0, 1.0)
    narrow = gain_stats([0.30, 0.32, 0.31])  # well inside the range: untouched
    assert narrow.ci95 is not None and -1.0 < narrow.ci95[0] < narrow.ci95[1] < 1.0
