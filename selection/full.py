"""Full information: every owner row, whatever the budget. An evaluation ceiling for the
owner-ranking check (METHOD.md §1 step 5), never a deployment mode: the owner node must refuse
`full` unless it is configured for evaluation. It is the one strategy exempt from the budget
cap (`ignores_budget = True`); the budget must still be a positive integer."""

from __future__ import annotations

import numpy as np

from selection._contract import finalize, plan_classes, validate
from selection.base import Candidates, HardSet, Head, SelectionResult, Strategy, Timer, register


@register("full")
class FullInformation(Strategy):
    ignores_budget = True

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
        with timer("plan"):
            plan = plan_classes(candidates, hard)
        positions = np.arange(len(candidates), dtype=np.int64)
        scores = np.ones(len(positions), dtype=np.float32)
        return finalize(
            candidates,
            positions,
            scores,
            budget,
            plan=plan,
            timings=timer.timings,
            enforce_budget=False,
        )
