"""Random baseline: B rows drawn from the owner's rows whose labels appear in D_hard, stratified in
proportion to D_hard's class counts (what a class lacks goes to the others), seeded. Always
report it: at very small budgets it beats many published coreset methods (METHOD.md §2)."""

from __future__ import annotations

import numpy as np

from selection.base import Job, Ranked, Strategy, register


@register("random")
class RandomSelection(Strategy):
    param_constraints = {}  # takes no parameters

    def _rank(self, job: Job) -> Ranked:
        rng = np.random.default_rng(job.seed)
        plan = job.plan
        with job.timer("sample"):
            alloc = plan.split(job.budget)
            picked = [
                rng.choice(plan.positions[c], size=alloc[c], replace=False)
                for c in plan.classes.tolist()
                if alloc[c] > 0
            ]
            positions = np.concatenate(picked) if picked else np.empty(0, np.int64)
            positions = rng.permutation(positions)  # any prefix stays roughly stratified
        return Ranked(positions, np.ones(len(positions), dtype=np.float32))
