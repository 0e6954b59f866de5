"""Utility statistics over seeds, owner ranking, and agreement with full information.

Kept free of training code so the maths can be tested on constructed numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GainStats:
    """Mean, sample std and a two-sided 95% t-interval of per-seed gains."""

    mean: float
    std: float  # sample std (ddof=1); 0 for a single seed
    ci95: tuple[float, float] | None  # None for a single seed: no interval can be claimed
    n: int


def t_critical_95(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_interval(values: Sequence[float]) -> GainStats:
    """Mean, std and the 95% t-interval of any per-seed quantity, unbounded (a ratio or a
    paired difference of gains may lie outside [-1, 1])."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("no values to summarise")
    mean = float(x.mean())
    if n == 1:
        return GainStats(mean, 0.0, None, 1)
    std = float(x.std(ddof=1))
    half = t_critical_95(n - 1) * std / math.sqrt(n)
    return GainStats(mean, std, (mean - half, mean + half), n)


def gain_stats(gains: Sequence[float]) -> GainStats:
    """`mean_interval` of accuracy gains, whose interval is cut to [-1, 1]: with few seeds the
    t-interval can overshoot that range, and a bound no run could reach would only mislead."""
    s = mean_interval(gains)
    if s.ci95 is None:
        return s
    return GainStats(s.mean, s.std, (max(-1.0, s.ci95[0]), min(1.0, s.ci95[1])), s.n)


@dataclass(frozen=True)
class Candidate:
    """One owner's summary for the ranked (method, budget, training mode)."""

    owner: str
    gain: GainStats
    test_gain_mean: float


def rank_owners(candidates: Sequence[Candidate]) -> list[tuple[int, Candidate]]:
    """Owners best first: by mean D_hard gain, then the lower CI bound (the surer gain wins),
    then the test-set change (less forgetting wins), then the name, so ties never depend on
    thread timing or dict order. Ranks are 1..n with no shared ranks."""

    def key(c: Candidate):
        low = c.gain.ci95[0] if c.gain.ci95 is not None else c.gain.mean
        return (-_round(c.gain.mean), -_round(low), -_round(c.test_gain_mean), c.owner)

    return [(i + 1, c) for i, c in enumerate(sorted(candidates, key=key))]


def _round(x: float) -> float:
    # Float noise (1e-17) from different summation orders must not decide a rank.
    return round(x, 9)


def _correlation(
    label: str, scipy_name: str, a: Sequence[float], b: Sequence[float]
) -> float | None:
    """scipy's rank correlation `scipy_name` (tau-b for kendalltau, average ranks for spearmanr);
    None where it is undefined: fewer than two pairs, or a side without two distinct values
    (scipy's nan, which would print as "nan" in every report)."""
    if len(a) != len(b):
        raise ValueError(f"{label}: sequences differ in length")
    if len(a) < 2:
        return None
    import scipy.stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)  # answered as None
        value = float(getattr(scipy.stats, scipy_name)(a, b).statistic)
    return None if math.isnan(value) else value


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho with average ranks; None when undefined (n < 2 or a constant side)."""
    return _correlation("spearman", "spearmanr", a, b)


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b (tie-corrected); None when undefined."""
    return _correlation("kendall", "kendalltau", a, b)
