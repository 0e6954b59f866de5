"""Full information: every owner row, whatever the budget. An evaluation ceiling for the
owner-ranking check (METHOD.md §1 step 5), never a deployment mode: the owner node must refuse
`full` unless it is configured for evaluation. It is the one strategy exempt from the budget
cap (`ignores_budget = True`); the budget must still be a positive integer."""

from __future__ import annotations

import numpy as np

from selection.base import Job, Ranked, Strategy, register


@register("full")
class FullInformation(Strategy):
    ignores_budget = True
    param_constraints = {}  # takes no parameters

    def _rank(self, job: Job) -> Ranked:
        n = len(job.candidates)
        return Ranked(np.arange(n, dtype=np.int64), np.ones(n, dtype=np.float32))
