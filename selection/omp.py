"""Non-negative regularised orthogonal matching pursuit (GradMatch-style).

Objective on a support S (|S| <= k), w >= 0:
    ||t - A_Sᵀ w||² + λ ||w||² + λ₂ Σ_{i∈S} ψ_i² w_i²
Greedy: pick j = argmax (A r)_j over rows never tried; solve (A_S A_Sᵀ + λI + λ₂ diag(ψ_S)²) w
= A_S t; while any w < 0 drop the most negative (dropped rows are never re-picked, which also
guarantees termination) and re-solve; r = t - A_Sᵀ w.

`omp` keeps a Cholesky factor of the regularised Gram matrix and updates it when a row enters
(one triangular solve) or leaves (a rank-1 update of the trailing block): O(k²) per step instead
of O(k³). `omp_naive` re-solves from scratch with a dense A; tests and the benchmark compare both.

The per-step cost is dominated by the correlations A r. With `FactoredAtoms` (g = u ⊗ [1, e],
see selection/last_layer_grads.py) that is (E R_Wᵀ + r_b)·u row-wise: n·C·(d+1) flops reading
only n·(C+d) floats, and the (n, C·(d+1)) gradient matrix is never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_triangular

from selection.last_layer_grads import gradient_rows

_TINY = 1e-10


class DenseAtoms:
    """Atoms given as an explicit (n, D) matrix."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = np.asarray(a)
        self.n = self.a.shape[0]

    def matvec(self, r: np.ndarray) -> np.ndarray:
        return (self.a @ r.astype(self.a.dtype)).astype(np.float64)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.a[idx].astype(np.float64)


class FactoredAtoms:
    """Last-layer gradients as outer products: row i is [u_i, vec(u_i ⊗ e_i)].

    Stored transposed, (C, n) and (d, n): the per-step product is then R_W (C×d) @ Eᵀ (d×n),
    which OpenBLAS runs ~1.5× faster than E @ R_Wᵀ with its 10-column output (measured)."""

    def __init__(self, u: np.ndarray, e: np.ndarray, chunk: int = 262_144) -> None:
        self.ut = np.ascontiguousarray(np.asarray(u, dtype=np.float32).T)
        self.et = np.ascontiguousarray(np.asarray(e, dtype=np.float32).T)
        self.c, self.n = self.ut.shape
        self.d = self.et.shape[0]
        self.chunk = chunk

    def matvec(self, r: np.ndarray) -> np.ndarray:
        rb = r[: self.c, None].astype(np.float32)
        rw = np.ascontiguousarray(r[self.c :].reshape(self.c, self.d), dtype=np.float32)
        out = np.empty(self.n, dtype=np.float64)
        for lo in range(0, self.n, self.chunk):
            hi = lo + self.chunk
            z = rw @ self.et[:, lo:hi]
            z += rb
            z *= self.ut[:, lo:hi]
            out[lo:hi] = z.sum(axis=0)
        return out

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return gradient_rows(self.ut[:, idx].T, self.et[:, idx].T).astype(np.float64)


Atoms = DenseAtoms | FactoredAtoms


@dataclass
class OMPResult:
    indices: np.ndarray  # selected atom indices, ranked by weight (largest first)
    weights: np.ndarray  # their non-negative weights
    residual_norm: float
    iterations: int
    dropped: int  # rows removed by the non-negativity step


def _as_atoms(a: Atoms | np.ndarray) -> Atoms:
    return a if isinstance(a, DenseAtoms | FactoredAtoms) else DenseAtoms(a)


def _pick_scores(
    corr: np.ndarray, psi2: np.ndarray | None, lam2: float, psi_in_pick: bool
) -> np.ndarray:
    if psi_in_pick and psi2 is not None:
        # open question (METHOD.md §2): discount rows far from D_hard already at the pick
        return corr / (1.0 + lam2 * psi2)
    return corr


def _check_lam(lam: float, lam2: float) -> None:
    # lam > 0 keeps every regularised Gram matrix positive definite (Cholesky never fails)
    if not lam > 0 or lam2 < 0:
        raise ValueError(f"need lam > 0 and lam2 >= 0, got lam={lam}, lam2={lam2}")


def _chol_rank1_update(lo: np.ndarray, x: np.ndarray) -> None:
    """In place: lo lo^T + x x^T, lo lower triangular."""
    n = len(x)
    for k in range(n):
        r = np.hypot(lo[k, k], x[k])
        c, s = r / lo[k, k], x[k] / lo[k, k]
        lo[k, k] = r
        if k + 1 < n:
            lo[k + 1 :, k] = (lo[k + 1 :, k] + s * x[k + 1 :]) / c
            x[k + 1 :] = c * x[k + 1 :] - s * lo[k + 1 :, k]


class _Factor:
    """Cholesky factor L of the regularised Gram matrix of the support and its inverse L⁻¹, in
    preallocated buffers. Each step is then a few matrix-vector products on sub-blocks (no
    triangular solves, which would copy the sub-block every call: measured ~2× slower). A row
    entering extends both factors by one row; a row leaving updates L with a rank-1 update of the
    trailing block and re-inverts it (drops are rare)."""

    def __init__(self, cap: int, dim: int) -> None:
        self.lo = np.zeros((cap, cap))
        self.inv = np.zeros((cap, cap))
        self.rows = np.zeros((cap, dim))  # dense atom rows of the support
        self.b = np.zeros(cap)  # b_S = A_S t
        self.y = np.zeros(cap)  # L⁻¹ b_S
        self.m = 0

    def try_add(self, a_j: np.ndarray, diag: float, b_j: float) -> bool:
        m = self.m
        inv = self.inv[:m, :m]
        l_new = inv @ (self.rows[:m] @ a_j)
        d2 = a_j @ a_j + diag - l_new @ l_new
        if d2 <= _TINY * max(1.0, diag):
            return False  # numerically dependent on the support: skip the row
        delta = np.sqrt(d2)
        self.lo[m, :m], self.lo[m, m] = l_new, delta
        self.inv[m, :m], self.inv[m, m] = -(l_new @ inv) / delta, 1.0 / delta
        self.rows[m], self.b[m] = a_j, b_j
        self.y[m] = (b_j - l_new @ self.y[:m]) / delta
        self.m = m + 1
        return True

    def weights(self) -> np.ndarray:
        m = self.m
        return self.inv[:m, :m].T @ self.y[:m]

    def delete(self, p: int) -> None:
        m = self.m
        x = self.lo[p + 1 : m, p].copy()
        for mat in (self.lo, self.inv):  # shift rows up, then columns left
            mat[p : m - 1, :m] = mat[p + 1 : m, :m]
            mat[: m - 1, p : m - 1] = mat[: m - 1, p + 1 : m]
            mat[m - 1, :m] = 0.0
            mat[:m, m - 1] = 0.0
        self.rows[p : m - 1] = self.rows[p + 1 : m]
        self.b[p : m - 1] = self.b[p + 1 : m]
        m -= 1
        self.m = m
        if len(x):
            _chol_rank1_update(self.lo[p:m, p:m], x)
        if m:  # rows before p keep their factor rows; the rest are recomputed
            lo = self.lo[:m, :m]
            self.inv[:m, :m] = solve_triangular(lo, np.eye(m), lower=True, check_finite=False)
            self.y[:m] = self.inv[:m, :m] @ self.b[:m]


def omp(
    atoms: Atoms | np.ndarray,
    target: np.ndarray,
    k: int,
    *,
    lam: float = 0.5,
    lam2: float = 0.0,
    psi: np.ndarray | None = None,
    psi_in_pick: bool = False,
    max_iter: int | None = None,
) -> OMPResult:
    """Incremental-Cholesky non-negative regularised OMP (see module docstring)."""
    _check_lam(lam, lam2)
    atoms = _as_atoms(atoms)
    t = np.asarray(target, dtype=np.float64)
    n = atoms.n
    k = min(int(k), n)
    psi2 = None if psi is None else np.asarray(psi, dtype=np.float64) ** 2
    pen = np.zeros(n) if psi2 is None else lam2 * psi2
    max_iter = max_iter if max_iter is not None else 3 * k + 10
    c0 = atoms.matvec(t)  # A t: also the right-hand side entries A_S t
    corr = c0.copy()
    tried = np.zeros(n, dtype=bool)
    sel: list[int] = []
    fac = _Factor(max(k, 1), len(t))
    w = np.empty(0)
    it = dropped = 0
    while len(sel) < k and it < max_iter:
        it += 1
        score = _pick_scores(corr, psi2, lam2, psi_in_pick)
        score[tried] = -np.inf
        j = int(np.argmax(score))
        if not score[j] > _TINY:
            break
        tried[j] = True
        if not fac.try_add(atoms.rows(np.array([j]))[0], lam + pen[j], c0[j]):
            continue
        sel.append(j)
        w = fac.weights()
        while len(w) and w.min() < 0:
            p = int(np.argmin(w))
            fac.delete(p)
            del sel[p]
            dropped += 1
            w = fac.weights()
        if len(sel) < k:
            corr = atoms.matvec(t - fac.rows[: fac.m].T @ w) if sel else c0.copy()
    return _result(sel, w, fac.rows[: fac.m], t, it, dropped)


def _result(
    sel: list[int], w: np.ndarray, rows: np.ndarray, t: np.ndarray, it: int, dropped: int
) -> OMPResult:
    idx = np.asarray(sel, dtype=np.int64)
    w = np.asarray(w, dtype=np.float64) if len(sel) else np.empty(0)
    resid = float(np.linalg.norm(t - rows.T @ w)) if len(sel) else float(np.linalg.norm(t))
    order = np.argsort(-w, kind="stable")
    return OMPResult(idx[order], w[order], resid, it, dropped)


def omp_naive(
    a: np.ndarray,
    target: np.ndarray,
    k: int,
    *,
    lam: float = 0.5,
    lam2: float = 0.0,
    psi: np.ndarray | None = None,
    psi_in_pick: bool = False,
    max_iter: int | None = None,
) -> OMPResult:
    """Reference: same algorithm, dense A, every weight solve from scratch."""
    _check_lam(lam, lam2)
    a = np.asarray(a)
    t = np.asarray(target, dtype=np.float64)
    n = a.shape[0]
    k = min(int(k), n)
    psi2 = None if psi is None else np.asarray(psi, dtype=np.float64) ** 2
    pen = np.zeros(n) if psi2 is None else lam2 * psi2
    max_iter = max_iter if max_iter is not None else 3 * k + 10
    corr = (a @ t.astype(a.dtype)).astype(np.float64)
    tried = np.zeros(n, dtype=bool)
    sel: list[int] = []
    w = np.empty(0)
    it = dropped = 0

    def solve(s: list[int]) -> np.ndarray:
        a_s = a[s].astype(np.float64)
        gram = a_s @ a_s.T + np.diag(lam + pen[s])
        return np.linalg.solve(gram, a_s @ t)

    while len(sel) < k and it < max_iter:
        it += 1
        score = _pick_scores(corr, psi2, lam2, psi_in_pick)
        score[tried] = -np.inf
        j = int(np.argmax(score))
        if not score[j] > _TINY:
            break
        tried[j] = True
        sel = [*sel, j]
        w = solve(sel)
        while len(sel) and w.min() < 0:
            del sel[int(np.argmin(w))]
            dropped += 1
            w = solve(sel) if sel else np.empty(0)
        r = t - (a[sel].astype(np.float64).T @ w if sel else 0.0)
        corr = (a @ np.asarray(r, dtype=a.dtype)).astype(np.float64)
    rows = a[sel].astype(np.float64) if sel else np.empty((0, len(t)))
    return _result(sel, w, rows, t, it, dropped)


def objective(
    a: np.ndarray,
    target: np.ndarray,
    idx: np.ndarray,
    w: np.ndarray,
    *,
    lam: float = 0.5,
    lam2: float = 0.0,
    psi: np.ndarray | None = None,
) -> float:
    """The regularised objective OMP greedily minimises (for tests and quality checks)."""
    a_s = np.asarray(a, dtype=np.float64)[idx]
    r = np.asarray(target, dtype=np.float64) - a_s.T @ w
    pen = 0.0 if psi is None else lam2 * float(np.sum(np.asarray(psi)[idx] ** 2 * w**2))
    return float(r @ r + lam * w @ w + pen)
