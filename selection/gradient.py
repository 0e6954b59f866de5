"""Gradient matching: per D_hard class, non-negative regularised OMP over the owner's rows of that
class against the sum of D_hard's last-layer gradients of that class.

Candidate gradients are never materialised: OMP works on the factors u = p - y and e (see
selection/omp.py), so memory is O(N·(C+d)) rather than O(N·C·(d+1)).

Large classes: when a class has more than M = max(prefilter_factor·k_c, prefilter_min) rows, OMP
runs on the top M rows by initial alignment Aᵀt only (OMP's first pick is the argmax of that
same score). Needed for the 1e6-row target (OMP cost is linear in the rows it scans); measured on
a 1e5-row class with k_c = 1000: M = 10 000 selects the same rows as no prefilter at a fifth of
the CPU time (bench/selection_speed.py repeats it). Switch off with prefilter_min=None.

If OMP stops early (no untried row correlates positively with the residual), the rest of the
class budget is filled with untried rows by initial alignment, with score 0, so the budget
contract's "fewer only when rows run out" holds.

Which checkpoint the head comes from is the trainer's choice (METHOD.md §2: an early checkpoint
picks more relevant rows); the strategy uses whatever head and embeddings it is given.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from selection.base import HardSet, Head, Job, Ranked, Strategy, register
from selection.last_layer_grads import DEFAULT_BATCH, last_layer_gradients, softmax_residuals
from selection.omp import FactoredAtoms, omp
from selection.params import Interval


@register("gradient")
class GradientMatching(Strategy):
    needs_embeddings = True
    needs_gradients = True
    needs_head = True
    param_constraints = {
        "lam": Interval(float, 0, 1e6, closed="right"),  # OMP needs lam > 0
        "prefilter_min": Interval(int, 1, 10_000_000, allow_none=True),  # None: no prefilter
        "prefilter_factor": Interval(int, 1, 10_000),
        "batch_size": Interval(int, 1, DEFAULT_BATCH),
        "workers": Interval(int, 1, 64),
    }

    def __init__(
        self,
        lam: float = 0.5,
        prefilter_min: int | None = 10_000,
        prefilter_factor: int = 10,
        batch_size: int = DEFAULT_BATCH,
        workers: int = 1,
    ) -> None:
        self.lam = lam
        self.workers = max(1, int(workers))
        self.prefilter_min = prefilter_min
        self.prefilter_factor = prefilter_factor
        self.batch_size = batch_size

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

        def run(c: int) -> tuple[np.ndarray, np.ndarray]:
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
        # rank rows by OMP weight across classes
        return Ranked.by_score([p for p, _ in parts], [s for _, s in parts])

    def _target(self, hard: HardSet, head: Head, c: int) -> np.ndarray:
        mask = hard.labels == c
        if hard.gradients is not None:
            return hard.gradients[mask].astype(np.float64).sum(axis=0)
        g = last_layer_gradients(hard.embeddings[mask], hard.labels[mask], head, self.batch_size)
        return g.astype(np.float64).sum(axis=0)

    def _select_class(self, job: Job, c: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        candidates, hard, head, timer = job.candidates, job.hard, job.head, job.timer
        pos = job.plan.positions[c]
        with timer("gradients"):
            emb = candidates.embeddings[pos]
            u = softmax_residuals(emb, candidates.labels[pos], head, self.batch_size)
            t = self._target(hard, head, c)
            atoms = FactoredAtoms(u, emb)
            align = atoms.matvec(t)  # Aᵀt: prefilter and fill order
        with timer("psi"):
            hard_emb = None if hard.embeddings is None else hard.embeddings[hard.labels == c]
            psi = self._psi(emb, hard_emb)
        sub = np.arange(len(pos))
        with timer("prefilter"):
            if self.prefilter_min is not None:
                m = max(self.prefilter_factor * k, self.prefilter_min)
                if len(pos) > m:
                    sub = np.sort(np.argpartition(-align, m - 1)[:m])
                    atoms = FactoredAtoms(u[sub], emb[sub])
        with timer("omp"):
            res = omp(
                atoms,
                t,
                k,
                lam=self.lam,
                lam2=self._lam2(),
                psi=None if psi is None else psi[sub],
                psi_in_pick=self._psi_in_pick(),
            )
        chosen = sub[res.indices]
        scores = res.weights.astype(np.float32)
        if len(chosen) < k:
            rest = np.setdiff1d(np.arange(len(pos)), chosen)
            fill = rest[np.argsort(-align[rest], kind="stable")[: k - len(chosen)]]
            chosen = np.concatenate([chosen, fill])
            scores = np.concatenate([scores, np.zeros(len(fill), np.float32)])
        return pos[chosen], scores
