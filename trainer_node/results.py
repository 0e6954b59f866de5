"""From per-seed results to per-owner utility, the owner ranking, and agreement with the
full-information baseline."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from trainer_node.acquire import OwnerOutcome, RequestOutcome
from trainer_node.config import FULL_METHOD
from trainer_node.ranking import (
    Candidate,
    GainStats,
    gain_stats,
    kendall_tau_b,
    rank_owners,
    spearman,
)
from trainer_node.report import (
    Agreement,
    BudgetState,
    EvaluationFailure,
    FullInformation,
    GainSummary,
    OwnerDescribe,
    OwnerReport,
    RankEntry,
    RequestRecord,
    SeedResult,
    Utility,
)

# A setting across owners: "full" budgets are each owner's row count, so they group by method.
SettingKey = tuple[str, int | None, str]  # (method, budget or None for full, training mode)


def setting_key(method: str, budget: int, mode: str) -> SettingKey:
    return (method, None if method == FULL_METHOD else budget, mode)


def utilities(results: list[SeedResult]) -> list[Utility]:
    """One Utility per (method, budget, mode) in first-seen order; rank filled in later."""
    groups: dict[tuple[str, int, str], list[SeedResult]] = defaultdict(list)
    for r in results:
        if r.dhard_gain is not None:
            groups[(r.method, r.budget, r.training_mode)].append(r)
    out = []
    for (method, budget, mode), rs in groups.items():
        g = gain_stats([r.dhard_gain for r in rs if r.dhard_gain is not None])
        tests = np.array([r.test_gain for r in rs])
        out.append(
            Utility(
                method=method,
                budget=budget,
                training_mode=mode,
                dhard_gain=GainSummary(g.mean, g.std, list(g.ci95) if g.ci95 else None, g.n),
                test_gain_mean=float(tests.mean()),
                test_gain_std=float(tests.std(ddof=1)) if len(tests) > 1 else 0.0,
                dhard_accuracy_mean=float(np.mean([r.dhard_accuracy for r in rs])),
                test_accuracy_mean=float(np.mean([r.test_accuracy for r in rs])),
                rank=None,
            )
        )
    return out


class RowTruth(Protocol):
    """What a simulation knows about each owner's rows (mycroft.scenario.ScenarioData): the
    share of a selection that is needles, wrong-labelled or noisy, by name."""

    def truth_shares(self, owner: str, row_ids: np.ndarray) -> dict[str, float | None]: ...


def _request_record(
    req: RequestOutcome,
    class_names: tuple[str, ...],
    truth: Callable[[np.ndarray], dict[str, float | None]] | None = None,
) -> RequestRecord:
    rec = RequestRecord(req.request_id, req.method, req.budget, req.rows_requested, "failed")
    rec.round = req.round
    if req.error is not None:
        rec.error, rec.error_code = str(req.error), req.error.code
    sub = req.subset
    if sub is None:
        return rec
    s = sub.summary
    counts = np.bincount(sub.labels, minlength=len(class_names))
    rec.status = "ok"
    rec.rows_received = len(sub)
    rec.new_rows_charged = s.new_rows_charged
    rec.replayed = s.replayed
    rec.attempts = sub.attempts
    rec.transfer_seconds = sub.seconds
    rec.selection_seconds = s.selection_seconds
    rec.timings = dict(s.timings)
    rec.received_per_class = [int(c) for c in counts]
    rec.missing_classes = [
        class_names[c] if 0 <= c < len(class_names) else f"#{c}" for c in s.missing_classes
    ]
    rec.shortfall_reason = s.shortfall_reason or None
    if truth is not None and len(sub):
        rec.truth = truth(sub.row_ids)
    return rec


def owner_reports(
    outcomes: list[OwnerOutcome],
    results: dict[str, list[SeedResult]],
    class_names: tuple[str, ...],
    truth: RowTruth | None = None,
    failures: dict[str, list[EvaluationFailure]] | None = None,
) -> list[OwnerReport]:
    """One report per owner, in `outcomes` order; `failures`: the cells that could not be
    evaluated, by owner (trainer_node.evaluate.Evaluation.failures)."""
    reports = []
    for o in outcomes:
        shares = None if truth is None else functools.partial(truth.truth_shares, o.endpoint.name)
        info = o.info
        describe = None
        if info is not None:
            describe = OwnerDescribe(
                owner_name=info.owner_name,
                protocol_version=info.protocol_version,
                row_count=info.row_count,
                classes=list(info.class_names),
                class_counts=list(info.class_counts),
                input_shape=list(info.input_shape),
                methods=list(info.methods),
                trainer_id=info.trainer_id,
            )
        own = results.get(o.endpoint.name, [])
        reports.append(
            OwnerReport(
                name=o.endpoint.name,
                address=o.endpoint.address,
                status="ok" if o.ok else "failed",
                error=o.error,
                error_code=o.error_code,
                describe=describe,
                budget=BudgetState(o.budget.cap, o.budget.used, o.budget.left)
                if o.budget
                else None,
                model_uploaded=o.model_uploaded,
                # a chain of rounds is reported as its rounds' requests
                requests=[
                    _request_record(q, class_names, shares)
                    for r in o.requests
                    for q in r.rounds or [r]
                ],
                results=own,
                utility=utilities(own) if o.ok else [],
                price=o.endpoint.price,
                evaluation_failures=list((failures or {}).get(o.endpoint.name, [])),
            )
        )
    return reports


def _candidates(owners: list[OwnerReport], key: SettingKey) -> list[tuple[Candidate, Utility]]:
    out = []
    for o in owners:
        for u in o.utility:
            if setting_key(u.method, u.budget, u.training_mode) == key:
                g = u.dhard_gain
                ci = (g.ci95[0], g.ci95[1]) if g.ci95 else None
                stats = GainStats(g.mean, g.std, ci, g.n)
                out.append((Candidate(o.name, stats, u.test_gain_mean), u))
    return out


def rank_all(owners: list[OwnerReport], primary: SettingKey) -> list[RankEntry]:
    """Fill every Utility.rank (per setting) and OwnerReport.rank (primary); return the
    top-level ranking under the primary setting."""
    keys = {setting_key(u.method, u.budget, u.training_mode) for o in owners for u in o.utility}
    ranking: list[RankEntry] = []
    for key in sorted(keys, key=lambda k: (k[0], k[1] or 0, k[2])):
        cands = _candidates(owners, key)
        by_owner = {c.owner: u for c, u in cands}
        for rank, c in rank_owners([c for c, _ in cands]):
            u = by_owner[c.owner]
            u.rank = rank
            if key != primary:
                continue
            next(o for o in owners if o.name == c.owner).rank = rank
            ranking.append(
                RankEntry(
                    rank=rank,
                    owner=c.owner,
                    method=u.method,
                    budget=u.budget,
                    training_mode=u.training_mode,
                    dhard_gain_mean=u.dhard_gain.mean,
                    dhard_gain_std=u.dhard_gain.std,
                    ci95=u.dhard_gain.ci95,
                    test_gain_mean=u.test_gain_mean,
                    n=u.dhard_gain.n,
                )
            )
    return ranking


def full_information(owners: list[OwnerReport], mode: str) -> FullInformation | None:
    """Gains with each owner's whole data, and how well each budgeted ranking agrees with it."""
    full_cands = [c for c, _ in _candidates(owners, (FULL_METHOD, None, mode))]
    if not full_cands:
        return None
    full = {c.owner: c.gain.mean for c in full_cands}
    order = [c.owner for _, c in rank_owners(full_cands)]
    agreement = []
    keys = {
        setting_key(u.method, u.budget, u.training_mode)
        for o in owners
        for u in o.utility
        if u.method != FULL_METHOD and u.training_mode == mode
    }
    for key in sorted(keys, key=lambda k: (k[0], k[1] or 0)):
        gains = {c.owner: c.gain.mean for c, _ in _candidates(owners, key)}
        common = [name for name in order if name in gains]
        a = [gains[n] for n in common]
        b = [full[n] for n in common]
        agreement.append(
            Agreement(
                method=key[0],
                budget=int(key[1] or 0),
                training_mode=mode,
                n_owners=len(common),
                spearman=spearman(a, b),
                kendall_tau=kendall_tau_b(a, b),
            )
        )
    return FullInformation(training_mode=mode, gains=full, ranking=order, agreement=agreement)
