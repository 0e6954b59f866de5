"""FuncFeat: gradient-matching OMP whose weight solve is penalised by feature distance,
(A_S A_Sᵀ + λI + λ₂·diag(ψ_S)²) w = A_S t, with ψ_i the distance of owner row i's embedding to
the geometric median (Weiszfeld) of the D_hard embeddings OMP matches: the group's (gradient.py
splits each class's D_hard into small clusters), the class's with `cluster_size=0`. Rows that
match the gradient but sit far from D_hard in feature space lose weight.

*Open* (METHOD.md §2): whether ψ should also enter the greedy pick. `psi_in_pick=True` ranks
picks by (Aᵀr)_j / (1 + λ₂ψ_j²) instead of (Aᵀr)_j; default off until measured on real data.
"""

from __future__ import annotations

import numpy as np

from selection.base import register
from selection.gradient import GradientMatching
from selection.last_layer_grads import DEFAULT_BATCH
from selection.params import Boolean, Interval


def geometric_median(x: np.ndarray, iters: int = 200, tol: float = 1e-7) -> np.ndarray:
    """Weiszfeld's algorithm (with the Vardi–Zhang guard when an iterate hits a data point)."""
    x = np.asarray(x, dtype=np.float64)
    y = x.mean(axis=0)
    for _ in range(iters):
        dist = np.linalg.norm(x - y, axis=1)
        at = dist < 1e-12
        if at.all():
            return y
        inv = 1.0 / dist[~at]
        t = (x[~at] * inv[:, None]).sum(axis=0) / inv.sum()
        if at.any():  # y coincides with a data point: move only if the pull exceeds its weight
            pull = np.linalg.norm(((x[~at] - y) * inv[:, None]).sum(axis=0))
            eta = at.sum()
            t = y if pull <= eta else (1 - eta / pull) * t + (eta / pull) * y
        if np.linalg.norm(t - y) <= tol * max(1.0, np.linalg.norm(y)):
            return t
        y = t
    return y


@register("funcfeat")
class FuncFeat(GradientMatching):
    needs_hard_embeddings = True  # ψ is measured against D_hard's embeddings
    param_constraints = {
        **GradientMatching.param_constraints,
        "lam2": Interval(float, 0, 1e6),
        "psi_in_pick": Boolean(),
    }

    def __init__(
        self,
        lam: float = 0.5,
        lam2: float = 2.0,
        psi_in_pick: bool = False,
        cluster_size: int = 2,
        pool_factor: int = 2,
        prefilter_min: int | None = 10_000,
        prefilter_factor: int = 10,
        batch_size: int = DEFAULT_BATCH,
        workers: int = 1,
    ) -> None:
        super().__init__(
            lam, cluster_size, pool_factor, prefilter_min, prefilter_factor, batch_size, workers
        )
        self.lam2 = lam2
        self.psi_in_pick = psi_in_pick

    def _lam2(self) -> float:
        return self.lam2

    def _psi_in_pick(self) -> bool:
        return self.psi_in_pick

    def _psi(self, emb_c: np.ndarray, hard_emb_c: np.ndarray | None) -> np.ndarray | None:
        if hard_emb_c is None or len(hard_emb_c) == 0:
            raise ValueError("funcfeat needs D_hard embeddings of every class it matches")
        med = geometric_median(hard_emb_c).astype(np.float32)
        return np.linalg.norm(emb_c - med, axis=1).astype(np.float64)
