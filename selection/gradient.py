"""Gradient matching: per D_hard class, non-negative regularised OMP over the owner's rows of that
class against summed last-layer gradients of D_hard.

Candidate gradients are never materialised: OMP works on the factors u = p - y and e (see
selection/omp.py), so memory is O(N·(C+d)) rather than O(N·C·(d+1)).

Clusters and neighbourhoods (selection/neighbourhood.py): a class's D_hard is split into groups
of about `cluster_size` points (spherical k-means on its embeddings, at most one group per row
of the class budget); each group gets a share of the class budget in proportion to its size and
its own target (the sum of its gradients), and OMP for it runs on the `pool_factor`·k_g owner
rows nearest its points (feature round-robin, rows other groups took excluded). One summed
target over a whole class points between D_hard's failure modes and drew confidently
mislabelled rows; measured in selection/README.md. `cluster_size=0` keeps one target per class,
`pool_factor=0` lets OMP scan all of the class's rows (then the alignment prefilter below
applies). Without D_hard embeddings they are recovered from the gradients (exact: u ⊗ [1, e]).

Large pools: when OMP would scan more than M = max(prefilter_factor·k, prefilter_min) rows, it
runs on the top M rows by initial alignment Aᵀt only (OMP's first pick is the argmax of that
same score). Measured on a 1e5-row class with k_c = 1000: M = 10 000 selects the same rows as no
prefilter at a fifth of the CPU time. Switch off with prefilter_min=None.

Fill: if OMP stops early (no untried row correlates positively with its residual), the rest of
the class budget is filled with the class's rows nearest D_hard (feature round-robin over all
its points), scored cosine similarity − 2, so always below OMP's non-negative weights;
`SelectionResult.fallback_rows` counts them.

Which checkpoint the head comes from is the trainer's choice (METHOD.md §2: an early checkpoint
picks more relevant rows); the strategy uses whatever head and embeddings it is given.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from selection._contract import allocate
from selection.base import HardSet, Head, Job, Ranked, Strategy, register
from selection.feature import FeatureIndexCache, IndexParams, l2_normalise
from selection.last_layer_grads import (
    DEFAULT_BATCH,
    embeddings_from_gradients,
    last_layer_gradients,
    softmax_residuals,
)
from selection.neighbourhood import Neighbours, cluster_hard
from selection.omp import FactoredAtoms, omp
from selection.params import Interval

# Class sizes up to this get exact neighbour search (IVF would need training on every request)
_EXACT = 2**62
# Fallback rows score cosine similarity (in [-1, 1]) minus this: always below OMP weights (>= 0)
_FALLBACK_OFFSET = 2.0


@dataclass
class _ClassPick:
    positions: np.ndarray  # candidate positions, this class's OMP picks then its fallback rows
    scores: np.ndarray
    fallback: int  # how many of them the fill added


@dataclass
class _ClassData:
    """One class as OMP sees it: owner rows' residuals and embeddings, D_hard's gradients and
    embeddings of that class."""

    u: np.ndarray
    emb: np.ndarray
    hard_grads: np.ndarray  # (m_c, C·(d+1)) float64
    hard_emb: np.ndarray  # (m_c, d); rows with no recoverable embedding already dropped


@register("gradient")
class GradientMatching(Strategy):
    """`lam`: ridge weight of the OMP solve; `cluster_size`: D_hard points per target (0: one
    per class); `pool_factor`: OMP candidates per pick, nearest the group first (0: all rows
    of the class); `prefilter_min`/`prefilter_factor`: the alignment prefilter's size;
    `batch_size`: rows per softmax batch; `workers`: classes run side by side."""

    needs_embeddings = True
    needs_gradients = True
    needs_head = True
    param_constraints = {
        "lam": Interval(float, 0, 1e6, closed="right"),  # OMP needs lam > 0
        "cluster_size": Interval(int, 0, 1_000_000),
        "pool_factor": Interval(int, 0, 10_000),
        "prefilter_min": Interval(int, 1, 10_000_000, allow_none=True),  # None: no prefilter
        "prefilter_factor": Interval(int, 1, 10_000),
        "batch_size": Interval(int, 1, DEFAULT_BATCH),
        "workers": Interval(int, 1, 64),
    }

    def __init__(
        self,
        lam: float = 0.5,
        cluster_size: int = 2,
        pool_factor: int = 2,
        prefilter_min: int | None = 10_000,
        prefilter_factor: int = 10,
        batch_size: int = DEFAULT_BATCH,
        workers: int = 1,
    ) -> None:
        self.lam = lam
        self.cluster_size = cluster_size
        self.pool_factor = pool_factor
        self.workers = max(1, int(workers))
        self.prefilter_min = prefilter_min
        self.prefilter_factor = prefilter_factor
        self.batch_size = batch_size
        # Exact (flat) class indexes, private to this instance: building one is a normalised copy
        # of the class's embeddings, small beside OMP. Not named `cache`, so the owner does not
        # keep it per model beside feature matching's (owner_node/engine.py::_reuse_cache).
        self._indexes = FeatureIndexCache(IndexParams(flat_threshold=_EXACT))

    # funcfeat overrides these
    def _lam2(self) -> float:
        return 0.0

    def _psi(self, emb_c: np.ndarray, hard_emb_c: np.ndarray | None) -> np.ndarray | None:
        return None

    def _psi_in_pick(self) -> bool:
        return False

    def _rank(self, job: Job) -> Ranked:
        with job.timer("plan"):
            alloc = job.plan.split(job.budget)
        todo = [c for c in job.plan.classes.tolist() if alloc[c] > 0]

        def run(c: int) -> _ClassPick:
            return self._select_class(job, c, alloc[c])

        # OMP steps are many small products: multi-threaded BLAS only adds sync cost and
        # spin-waits badly on a loaded machine (1e6 rows: 28 s single-threaded vs 93 s with 2
        # BLAS threads, measured under load), so BLAS runs single-threaded. `workers` > 1 runs
        # classes side by side; default 1, which measured faster on the shared 2-core machine
        # (5e5 rows: 11.8-14.0 s vs 14.8-16.8 s). Step timings are summed over workers.
        with threadpool_limits(limits=1, user_api="blas"):
            if self.workers > 1 and len(todo) > 1:
                with ThreadPoolExecutor(max_workers=self.workers) as pool:
                    parts = list(pool.map(run, todo))
            else:
                parts = [run(c) for c in todo]
        # rank rows by OMP weight across classes (fallback rows score below every weight)
        ranked = Ranked.by_score([p.positions for p in parts], [p.scores for p in parts])
        ranked.fallback_rows = sum(p.fallback for p in parts)
        return ranked

    def _target(self, hard: HardSet, head: Head, c: int) -> np.ndarray:
        """D_hard's class-c gradients (m_c, C·(d+1)) float64: as sent, or from its embeddings."""
        mask = hard.labels == c
        if hard.gradients is not None:
            return hard.gradients[mask].astype(np.float64)
        g = last_layer_gradients(hard.embeddings[mask], hard.labels[mask], head, self.batch_size)
        return g.astype(np.float64)

    def _class_data(self, job: Job, c: int, pos: np.ndarray) -> _ClassData:
        candidates, hard, head = job.candidates, job.hard, job.head
        emb = candidates.embeddings[pos]
        u = softmax_residuals(emb, candidates.labels[pos], head, self.batch_size)
        grads = self._target(hard, head, c)
        if hard.embeddings is not None:
            hard_emb = hard.embeddings[hard.labels == c]
        else:  # gradients only: each is u ⊗ [1, e], so e is recoverable
            hard_emb = embeddings_from_gradients(grads, head.num_classes)
            known = np.all(np.isfinite(hard_emb), axis=1)  # u = 0 carries no embedding (nor target)
            grads, hard_emb = grads[known], hard_emb[known]
        return _ClassData(u, emb, grads, hard_emb)

    def _groups(self, data: _ClassData, k: int, seed: int) -> list[np.ndarray]:
        m = len(data.hard_emb)
        if m == 0:
            return []
        # at most one group per row of the budget: more groups than picks would get nothing
        n_groups = 1 if self.cluster_size == 0 else min(-(-m // self.cluster_size), k)
        return cluster_hard(l2_normalise(data.hard_emb), n_groups, seed)

    def _select_class(self, job: Job, c: int, k: int) -> _ClassPick:
        timer = job.timer
        pos = job.plan.positions[c]
        with timer("gradients"):
            data = self._class_data(job, c, pos)
        with timer("neighbours"):
            groups = self._groups(data, k, job.seed)
            index = self._indexes.get(job.candidates.embeddings, job.candidates.labels, c, pos)
            near = Neighbours(index, data.hard_emb) if len(data.hard_emb) else None
        sizes = {g: len(idx) for g, idx in enumerate(groups)}
        shares = allocate(sizes, {g: len(pos) for g in sizes}, k)
        taken = np.zeros(len(pos), dtype=bool)
        chosen, scores = [], []
        for g, points in enumerate(groups):
            if shares[g] == 0:
                continue
            picks, weights = self._match_group(job, data, near, points, shares[g], taken)
            taken[picks] = True
            chosen.append(picks)
            scores.append(weights)
        fallback = 0
        short = k - int(taken.sum())
        if short > 0:
            with timer("fill"):
                every = np.arange(len(data.hard_emb))
                fill, sims = (
                    near.nearest(every, short, taken) if near is not None else _first(taken, short)
                )
            fallback = len(fill)
            chosen.append(fill)
            scores.append((sims - _FALLBACK_OFFSET).astype(np.float32))
        picked = np.concatenate(chosen) if chosen else np.empty(0, np.int64)
        sc = np.concatenate(scores) if scores else np.empty(0, np.float32)
        return _ClassPick(pos[picked], sc.astype(np.float32), fallback)

    def _match_group(
        self,
        job: Job,
        data: _ClassData,
        near: Neighbours | None,
        points: np.ndarray,
        k: int,
        taken: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """OMP for one group of D_hard points: class row ids it picked and their weights."""
        timer = job.timer
        t = data.hard_grads[points].sum(axis=0)
        with timer("neighbours"):
            if self.pool_factor:
                sub = np.sort(near.nearest(points, self.pool_factor * k, taken)[0])
            else:
                sub = np.flatnonzero(~taken)
        with timer("psi"):
            psi = self._psi(data.emb[sub], data.hard_emb[points])
        atoms = FactoredAtoms(data.u[sub], data.emb[sub])
        with timer("prefilter"):
            if self.prefilter_min is not None:
                m = max(self.prefilter_factor * k, self.prefilter_min)
                if len(sub) > m:
                    keep = np.sort(np.argpartition(-atoms.matvec(t), m - 1)[:m])
                    sub, psi = sub[keep], None if psi is None else psi[keep]
                    atoms = FactoredAtoms(data.u[sub], data.emb[sub])
        with timer("omp"):
            res = omp(
                atoms,
                t,
                k,
                lam=self.lam,
                lam2=self._lam2(),
                psi=psi,
                psi_in_pick=self._psi_in_pick(),
            )
        return sub[res.indices], res.weights.astype(np.float32)


def _first(taken: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Without D_hard embeddings to measure distance by: untaken rows in order, similarity 0."""
    rows = np.flatnonzero(~taken)[:n]
    return rows, np.zeros(len(rows), np.float32)
