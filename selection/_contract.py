"""Input checks, budget allocation and the budget contract, shared by every strategy.

Contract (enforced by `finalize`): at most `budget` distinct row ids, never more; fewer only
with a stated `shortfall_reason`; D_hard classes the owner lacks are listed in
`missing_classes` (not an error); `budget <= 0` is a ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from selection.types import Candidates, HardSet, Head, SelectionResult


def check_budget(budget: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        raise ValueError(f"budget must be an integer, got {type(budget).__name__}")
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    return int(budget)


_FINITE_BLOCK = 1 << 20  # elements per isfinite pass: a bool temporary of 1 MiB, not of N·F


def _finite(name: str, arr: np.ndarray | None) -> None:
    """NaN/inf check in blocks of rows: on 1e6 raw rows (3 GB) one np.isfinite would allocate
    a 784 MB mask; blocks keep it in cache, and never copy a strided array whole. Integer and
    bool arrays are finite by type."""
    if arr is None:
        return
    arr = np.asarray(arr)
    if arr.dtype.kind in "biu":
        return
    if arr.ndim == 0:
        arr = arr.reshape(1)
    per_row = max(1, arr[:1].size)
    step = max(1, _FINITE_BLOCK // per_row)
    for lo in range(0, len(arr), step):
        if not np.isfinite(arr[lo : lo + step]).all():
            raise ValueError(f"{name} contains NaN or infinite values")


def _distinct(ids: np.ndarray) -> bool:
    """Whether `ids` holds no value twice. Owners' ids are usually ascending: one O(N) pass
    says so without np.unique's sort (0.5 s of every Select at 1e6 rows); else sort once."""
    if len(ids) < 2:
        return True
    if (ids[1:] > ids[:-1]).all():
        return True
    ordered = np.sort(ids, kind="stable")
    return bool((ordered[1:] != ordered[:-1]).all())


def _rows(name: str, arr: np.ndarray | None, n: int, what: str) -> None:
    if arr is None:
        return
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows but {what} has {n}")


def validate(
    candidates: Candidates,
    hard: HardSet,
    budget: int,
    head: Head | None = None,
    *,
    needs_embeddings: bool = False,
    needs_features: bool = False,
) -> int:
    """Check shapes, finiteness and required fields; returns the budget as an int."""
    budget = check_budget(budget)
    n, m = len(candidates.row_ids), len(hard.labels)
    if candidates.labels.shape != (n,):
        raise ValueError(f"candidates: {n} row_ids but labels of shape {candidates.labels.shape}")
    if not _distinct(candidates.row_ids):
        raise ValueError("candidates.row_ids must be distinct")
    if hard.labels.ndim != 1:
        raise ValueError(f"hard.labels must be 1-D, got shape {hard.labels.shape}")
    _rows("candidates.embeddings", candidates.embeddings, n, "candidates.row_ids")
    _rows("candidates.features", candidates.features, n, "candidates.row_ids")
    _rows("hard.embeddings", hard.embeddings, m, "hard.labels")
    _rows("hard.gradients", hard.gradients, m, "hard.labels")
    _rows("hard.features", hard.features, m, "hard.labels")
    for name, arr in (
        ("candidates.embeddings", candidates.embeddings),
        ("candidates.features", candidates.features),
        ("hard.embeddings", hard.embeddings),
        ("hard.gradients", hard.gradients),
        ("hard.features", hard.features),
    ):
        _finite(name, arr)
    if m == 0:
        raise ValueError("D_hard is empty: nothing to match against")
    if needs_embeddings:
        if candidates.embeddings is None:
            raise ValueError("this strategy needs candidates.embeddings")
        if hard.embeddings is None:
            raise ValueError("this strategy needs hard.embeddings")
    if needs_features and (candidates.features is None or hard.features is None):
        raise ValueError("this strategy needs candidates.features and hard.features")
    if candidates.embeddings is not None and hard.embeddings is not None:
        if candidates.embeddings.shape[1] != hard.embeddings.shape[1]:
            raise ValueError(
                f"embedding dims differ: candidates {candidates.embeddings.shape[1]}, "
                f"D_hard {hard.embeddings.shape[1]}"
            )
    if candidates.features is not None and hard.features is not None:
        if candidates.features.shape[1] != hard.features.shape[1]:
            raise ValueError(
                f"feature counts differ: candidates {candidates.features.shape[1]}, "
                f"D_hard {hard.features.shape[1]}"
            )
    if head is not None:
        validate_head(head)
        c, d = head.weight.shape
        for name, labels in (
            ("candidates.labels", candidates.labels),
            ("hard.labels", hard.labels),
        ):
            if len(labels) and (labels.min() < 0 or labels.max() >= c):
                raise ValueError(f"{name} must lie in [0, {c}) for a head with {c} classes")
        for name, emb in (("candidates", candidates.embeddings), ("D_hard", hard.embeddings)):
            if emb is not None and emb.shape[1] != d:
                raise ValueError(f"{name} embeddings have dim {emb.shape[1]}, head expects {d}")
        if hard.gradients is not None and hard.gradients.shape[1] != c * (d + 1):
            raise ValueError(
                f"hard.gradients have dim {hard.gradients.shape[1]}, head expects "
                f"C*(d+1) = {c * (d + 1)}"
            )
    return budget


def validate_head(head: Head) -> None:
    if head.weight.ndim != 2:
        raise ValueError(f"head.weight must be (C, d), got shape {head.weight.shape}")
    if head.bias.shape != (head.weight.shape[0],):
        raise ValueError(f"head.bias shape {head.bias.shape} != ({head.weight.shape[0]},)")
    _finite("head.weight", head.weight)
    _finite("head.bias", head.bias)


@dataclass
class ClassPlan:
    """Per-class view: D_hard classes the owner holds, their owner row positions, budgets."""

    classes: np.ndarray  # D_hard classes present at the owner, ascending
    hard_counts: dict[int, int]
    positions: dict[int, np.ndarray]  # class -> candidate positions (into the arrays)
    missing: list[int]
    available: int  # owner rows whose label appears in D_hard

    def split(self, budget: int) -> dict[int, int]:
        """Per-class budgets for the classes the owner holds, in proportion to D_hard's counts."""
        return allocate(
            {c: self.hard_counts[c] for c in self.positions},
            {c: len(p) for c, p in self.positions.items()},
            budget,
        )


def plan_classes(candidates: Candidates, hard: HardSet) -> ClassPlan:
    hard_cls, hard_cnt = np.unique(hard.labels, return_counts=True)
    order = np.argsort(candidates.labels, kind="stable")
    sorted_labels = candidates.labels[order]
    positions: dict[int, np.ndarray] = {}
    missing: list[int] = []
    for c in hard_cls.tolist():
        lo, hi = np.searchsorted(sorted_labels, [c, c + 1], side="left")
        if hi > lo:
            positions[int(c)] = order[lo:hi]
        else:
            missing.append(int(c))
    present = np.array(sorted(positions), dtype=np.int64)
    counts = {int(c): int(k) for c, k in zip(hard_cls, hard_cnt, strict=True)}
    return ClassPlan(present, counts, positions, missing, sum(len(p) for p in positions.values()))


def allocate(weights: dict[int, int], capacity: dict[int, int], budget: int) -> dict[int, int]:
    """Split `budget` over classes in proportion to `weights`, capped by `capacity`; what a
    capped class cannot use is redistributed to the others (largest-remainder rounding)."""
    alloc = {c: 0 for c in weights}
    open_ = {c for c in weights if capacity.get(c, 0) > 0}
    remaining = min(budget, sum(capacity.get(c, 0) for c in weights))
    while remaining > 0 and open_:
        total = sum(weights[c] for c in open_)
        exact = {c: remaining * weights[c] / total for c in open_}
        share = {c: int(np.floor(exact[c])) for c in open_}
        left = remaining - sum(share.values())
        for c in sorted(open_, key=lambda c: (-(exact[c] - share[c]), c))[:left]:
            share[c] += 1
        for c in list(open_):
            take = min(share[c], capacity[c] - alloc[c])
            alloc[c] += take
            remaining -= take
            if alloc[c] >= capacity[c]:
                open_.discard(c)
    return alloc


def finalize(
    candidates: Candidates,
    positions: np.ndarray,
    scores: np.ndarray,
    budget: int,
    *,
    plan: ClassPlan,
    timings: dict[str, float],
    reason: str | None = None,
    enforce_budget: bool = True,
    fallback_rows: int = 0,
) -> SelectionResult:
    """Turn ordered candidate positions into a SelectionResult that obeys the contract."""
    positions = np.asarray(positions, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if positions.shape != scores.shape:
        raise ValueError("internal: positions and scores differ in length")
    _, first = np.unique(positions, return_index=True)  # keep first occurrence, in order
    keep = np.sort(first)
    if enforce_budget:
        keep = keep[:budget]
    positions, scores = positions[keep], scores[keep]
    if enforce_budget and len(positions) < budget and reason is None:
        reason = (
            f"owner has only {plan.available} rows with labels in D_hard "
            f"(budget {budget}); returned {len(positions)}"
        )
        if plan.missing:
            reason += f"; missing D_hard classes {plan.missing}"
    return SelectionResult(
        row_ids=candidates.row_ids[positions].astype(np.int64, copy=False),
        scores=scores,
        timings=dict(timings),
        missing_classes=list(plan.missing),
        shortfall_reason=reason,
        fallback_rows=int(fallback_rows),
    )
