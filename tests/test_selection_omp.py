"""Non-negative regularised OMP: incremental == naive, brute-force optimum on designed cases."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from scipy.optimize import nnls

from selection.funcfeat import geometric_median
from selection.omp import _Factor, objective, omp, omp_naive

LAM, LAM2 = 0.5, 2.0


def brute_force(a, t, k, psi=None, lam2=0.0):
    """Best objective over all supports of size <= k, with exact non-negative weights."""
    n = a.shape[0]
    best = float(t @ t)
    pen = np.zeros(n) if psi is None else lam2 * psi**2
    for size in range(1, k + 1):
        for s in combinations(range(n), size):
            s = list(s)
            # ||t - A_S^T w||² + Σ (λ + pen_i) w_i²  as one least-squares system
            m = np.vstack([a[s].T, np.diag(np.sqrt(LAM + pen[s]))])
            w, _ = nnls(m, np.concatenate([t, np.zeros(size)]))
            best = min(best, objective(a, t, np.array(s), w, lam=LAM, lam2=lam2, psi=psi))
    return best


def designed_case(seed: int, dim: int = 40, n: int = 8):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim)) / np.sqrt(dim) * 3.0
    support = rng.choice(n, 3, replace=False)
    t = rng.uniform(1.0, 3.0, 3) @ a[support] + 0.05 * rng.normal(size=dim)
    return a, t


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("with_psi", [False, True])
def test_greedy_reaches_brute_force_optimum(seed: int, with_psi: bool) -> None:
    a, t = designed_case(seed)
    psi = np.random.default_rng(100 + seed).uniform(0, 0.5, len(a)) if with_psi else None
    lam2 = LAM2 if with_psi else 0.0
    res = omp(a, t, 3, lam=LAM, lam2=lam2, psi=psi)
    got = objective(a, t, res.indices, res.weights, lam=LAM, lam2=lam2, psi=psi)
    best = brute_force(a, t, 3, psi, lam2)
    assert got <= best * (1 + 1e-6) + 1e-9
    assert (res.weights >= 0).all() and len(res.indices) <= 3


@pytest.mark.parametrize("seed", range(6))
def test_greedy_close_to_optimum_on_random_nonneg_targets(seed: int) -> None:
    # no planted support: greedy is not exact in general, but must stay near the optimum
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(8, 12))
    t = rng.uniform(0, 1, 8) @ a
    res = omp(a, t, 3, lam=LAM)
    got = objective(a, t, res.indices, res.weights, lam=LAM)
    assert got <= 1.5 * brute_force(a, t, 3) + 1e-9


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["plain", "psi", "psi_pick"])
def test_incremental_equals_naive(seed: int, mode: str) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(400, 30))
    t = rng.normal(size=30) + a[:20].sum(0) * 0.3
    kw = {}
    if mode != "plain":
        kw = dict(lam2=LAM2, psi=rng.uniform(0, 1, 400), psi_in_pick=mode == "psi_pick")
    fast = omp(a, t, 40, lam=LAM, **kw)
    slow = omp_naive(a, t, 40, lam=LAM, **kw)
    np.testing.assert_array_equal(fast.indices, slow.indices)
    np.testing.assert_allclose(fast.weights, slow.weights, rtol=1e-7, atol=1e-9)
    assert fast.dropped == slow.dropped
    assert fast.residual_norm == pytest.approx(slow.residual_norm, rel=1e-8)


def test_negative_weights_are_dropped_and_never_repicked() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=25)
    # near-duplicate atoms make the joint solve push one weight negative
    a = np.vstack(
        [base + 0.1 * rng.normal(size=25) for _ in range(30)] + [rng.normal(size=(30, 25))]
    )
    t = base * 5 + rng.normal(size=25)
    res = omp(a, t, 15, lam=LAM)
    assert res.dropped > 0
    assert (res.weights >= 0).all()
    assert len(set(res.indices.tolist())) == len(res.indices)
    assert np.all(np.diff(res.weights) <= 0)  # ranked by weight


def test_factor_delete_matches_fresh_cholesky() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(9, 6))
    fac = _Factor(9, 6)
    for j in range(9):
        assert fac.try_add(a[j], LAM, float(j))
    for p in (4, 0, 6):
        fac.delete(p)
    keep = [1, 2, 3, 5, 6, 7]  # positions shift after each delete
    want = np.linalg.cholesky(a[keep] @ a[keep].T + LAM * np.eye(6))
    np.testing.assert_allclose(fac.lo[:6, :6], want, atol=1e-10)
    np.testing.assert_allclose(fac.weights(), np.linalg.solve(want @ want.T, np.array(keep, float)))


def test_lambda_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lam"):
        omp(np.eye(3), np.ones(3), 2, lam=0.0)


def test_geometric_median() -> None:
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(30, 4)), [[50, 50, 50, 50]]])
    med = geometric_median(x)
    ref = minimize(
        lambda y: np.linalg.norm(x - y, axis=1).sum(),
        x.mean(0),
        method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000},
    ).x
    cost = lambda y: np.linalg.norm(x - y, axis=1).sum()  # noqa: E731
    assert cost(med) <= cost(ref) + 1e-6
    assert np.linalg.norm(med) < 1.0  # robust to the outlier, unlike the mean
    np.testing.assert_allclose(geometric_median(np.ones((5, 3))), np.ones(3))
