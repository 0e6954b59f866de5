"""Tabular binning distance (network-flow style features).

Each feature is cut into `n_bins` equal-width bins spanning D_hard's range for that feature, so
D_hard occupies a handful of non-empty bins; owner values outside the range get bin numbers
beyond it (not clipped), so rows far from D_hard stay far. The distance of an owner row to a D_hard
row is the sum over features of |bin difference|; an owner row's score is its distance to the
nearest D_hard row of the same label. Per class (budget split as in gradient matching), the rows
at the smallest distances are shared first; `diverse_share` of each class budget is instead drawn
at random (seeded) from the remaining rows, for coverage beyond D_hard's immediate neighbourhood.
"""

from __future__ import annotations

import numpy as np

from selection.base import Job, Ranked, Strategy, register
from selection.params import Interval


def bin_edges(
    hard_features: np.ndarray, owner_features: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """(lo, width) per feature, widths from D_hard's range (owner range if D_hard is constant)."""
    lo = hard_features.min(axis=0).astype(np.float64)
    width = (hard_features.max(axis=0) - lo) / n_bins
    flat = width <= 0
    if flat.any():
        spread = owner_features.max(axis=0) - owner_features.min(axis=0)
        width[flat] = np.where(spread[flat] > 0, spread[flat] / n_bins, 1.0)
    return lo, width


def to_bins(x: np.ndarray, lo: np.ndarray, width: np.ndarray, n_bins: int) -> np.ndarray:
    b = np.floor((x.astype(np.float64) - lo) / width)
    inside = (b == n_bins) & np.isclose(x, lo + n_bins * width)  # the range's top edge
    b[inside] = n_bins - 1
    return np.clip(b, -(2**30), 2**30).astype(np.int64)


def min_bin_distance(
    owner_bins: np.ndarray, hard_bins: np.ndarray, chunk_elems: int = 1 << 24
) -> np.ndarray:
    """For each owner row, min over D_hard rows of the L1 distance between bin vectors."""
    hard_bins = np.unique(hard_bins, axis=0)
    f = owner_bins.shape[1]
    step = max(1, chunk_elems // max(1, len(hard_bins) * f))
    out = np.empty(len(owner_bins), dtype=np.int64)
    for lo in range(0, len(owner_bins), step):
        block = owner_bins[lo : lo + step]
        out[lo : lo + step] = np.abs(block[:, None, :] - hard_bins[None, :, :]).sum(2).min(1)
    return out


@register("binning")
class BinningDistance(Strategy):
    """`n_bins` equal-width bins per feature over D_hard's range; `diverse_share` of each class
    budget is drawn at random (seeded) from the rows past the nearest."""

    needs_features = True
    param_constraints = {
        "n_bins": Interval(int, 1, 1000),
        "diverse_share": Interval(float, 0, 1),
    }

    def __init__(self, n_bins: int = 5, diverse_share: float = 0.0) -> None:
        if n_bins < 1:
            raise ValueError("n_bins must be >= 1")
        if not 0.0 <= diverse_share <= 1.0:
            raise ValueError("diverse_share must lie in [0, 1]")
        self.n_bins = n_bins
        self.diverse_share = diverse_share

    def _rank(self, job: Job) -> Ranked:
        candidates, hard, plan, timer = job.candidates, job.hard, job.plan, job.timer
        rng = np.random.default_rng(job.seed)
        with timer("plan"):
            alloc = plan.split(job.budget)
        with timer("bins"):
            lo, width = bin_edges(hard.features, candidates.features, self.n_bins)
            hard_bins = to_bins(hard.features, lo, width, self.n_bins)
        pos_out, score_out = [], []
        with timer("distance"):
            for c in plan.classes.tolist():
                k = alloc[c]
                if k == 0:
                    continue
                pos = plan.positions[c]
                owner_bins = to_bins(candidates.features[pos], lo, width, self.n_bins)
                dist = min_bin_distance(owner_bins, hard_bins[hard.labels == c])
                order = np.lexsort((pos, dist))  # nearest first, ties by row position
                n_div = int(round(self.diverse_share * k))
                near = order[: k - n_div]
                rest = order[k - n_div :]
                div = rng.choice(rest, size=min(n_div, len(rest)), replace=False)
                pick = np.concatenate([near, div]).astype(np.int64)
                pos_out.append(pos[pick])
                score_out.append(-dist[pick].astype(np.float32))
        return Ranked.by_score(pos_out, score_out)
