"""Random baseline: B rows drawn from the owner's rows whose labels appear in D_hard, stratified in
proportion to D_hard's class counts (what a class lacks goes to the others), seeded. Always
report it: at very small budgets it beats many published coreset methods (METHOD.md §2)."""

from __future__ import annotations

import numpy as np

from selection._contract import allocate, finalize, plan_classes, validate
from selection.base import Candidates, HardSet, Head, SelectionResult, Strategy, Timer, register


@register("random")
class RandomSelection(Strategy):
    def select(
        self,
        candidates: Candidates,
        hard: HardSet,
        budget: int,
        *,
        head: Head | None = None,
        seed: int = 0,
    ) -> SelectionResult:
        timer = Timer()
        with timer("validate"):
            budget = validate(candidates, hard, budget)
        rng = np.random.default_rng(seed)
        with timer("sample"):
            plan = plan_classes(candidates, hard)
            alloc = allocate(
                {c: plan.hard_counts[c] for c in plan.positions},
                {c: len(p) for c, p in plan.positions.items()},
                budget,
            )
            picked = [
                rng.choice(plan.positions[c], size=alloc[c], replace=False)
                for c in plan.classes.tolist()
                if alloc[c] > 0
            ]
            positions = np.concatenate(picked) if picked else np.empty(0, np.int64)
            positions = rng.permutation(positions)  # any prefix stays roughly stratified
        scores = np.ones(len(positions), dtype=np.float32)
        return finalize(candidates, positions, scores, budget, plan=plan, timings=timer.timings)
