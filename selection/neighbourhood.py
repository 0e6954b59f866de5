"""Feature neighbourhoods of D_hard for gradient matching: which owner rows OMP may pick from,
and which rows fill a class budget OMP leaves unused.

Why: a class's summed D_hard gradient is one direction; when D_hard mixes failure modes (a
colour-inverted sub-population beside ordinary confusions) that sum points between them, and OMP
on a class's whole row set picks rows with large gradients along it, i.e. confidently wrong rows
(flipped labels) rather than rows like D_hard's. Measured on Fashion-MNIST with an inverted
sub-population (selection/README.md): matching small clusters of D_hard, each among the owner
rows nearest that cluster, restores feature matching's precision and halves the flipped picks.

`cluster_hard` splits a class's D_hard into groups (spherical k-means on L2-normalised
embeddings, seeded); `Neighbours` ranks the class's owner rows by cosine similarity to chosen
D_hard points, round-robin over the points as `feature` does (every point's nearest row before
any point's second), through the FAISS indexes of a `FeatureIndexCache`.
"""

from __future__ import annotations

import numpy as np

from selection.feature import ClassIndex, FeatureMatching, l2_normalise, round_robin

_KMEANS_ITERS = 10


def cluster_hard(points: np.ndarray, n_groups: int, seed: int) -> list[np.ndarray]:
    """Indices of `points` (L2-normalised rows) in at most `n_groups` non-empty groups, largest
    first. Spherical k-means from seeded distinct starting points; deterministic for a seed."""
    m = len(points)
    n_groups = max(1, min(int(n_groups), m))
    if n_groups == 1:
        return [np.arange(m)]
    rng = np.random.default_rng(seed)
    centres = points[rng.choice(m, n_groups, replace=False)].astype(np.float64)
    x = points.astype(np.float64)
    for _ in range(_KMEANS_ITERS):
        assign = np.argmax(x @ centres.T, axis=1)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        filled = norms[:, 0] > 1e-12  # an emptied centre keeps its place (it may refill)
        centres[filled] = sums[filled] / norms[filled]
    assign = np.argmax(x @ centres.T, axis=1)
    groups = [np.flatnonzero(assign == g) for g in range(n_groups)]
    groups = [g for g in groups if len(g)]
    groups.sort(key=lambda g: (-len(g), int(g[0])))
    return groups


class Neighbours:
    """One class's owner rows (ids into the class index) ranked by similarity to D_hard points
    of that class. The neighbour table is searched once and deepened (doubled) only when a
    request cannot be met from it."""

    def __init__(self, index: ClassIndex, hard_embeddings: np.ndarray) -> None:
        self.ci = index
        self.n = int(index.index.ntotal)
        self.queries = l2_normalise(hard_embeddings)
        self.depth = 0
        self.ids = np.empty((len(self.queries), 0), np.int64)
        self.sims = np.empty((len(self.queries), 0), np.float32)

    def _search(self, depth: int) -> None:
        params = FeatureMatching._params(self.ci, depth)
        sims, ids = self.ci.index.search(self.queries, depth, params=params)
        self.ids, self.sims, self.depth = ids.astype(np.int64), sims, depth

    def nearest(
        self, points: np.ndarray, need: int, exclude: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to `need` row ids not in `exclude` (a bool mask over the class's rows), nearest
        first, round-robin over `points` (indices into the class's D_hard rows), with their
        cosine similarities. Fewer only when the class has no more rows."""
        if need <= 0 or len(points) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        depth = min(self.n, max(self.depth, 2 * -(-need // len(points)) + 2))
        while True:
            if depth > self.depth:
                self._search(depth)
            ids = self.ids[points]
            usable = ids >= 0
            usable[usable] = ~exclude[ids[usable]]
            got, sims = round_robin(np.where(usable, ids, -1), self.sims[points], need)
            if len(got) >= need or self.depth >= self.n:
                return got, sims
            depth = min(self.n, 2 * self.depth)
