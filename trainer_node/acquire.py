"""Query every owner concurrently: describe, upload the model once, one Select per method x budget.

An owner that fails (unreachable, refuses us, answers nonsense) is recorded with its error and
the others go on. Request ids are derived from (run id, owner, method, budget), so re-running the
same run id replays the owner's earlier answers instead of charging budget again.

With `selection.rounds` > 1 each budgeted request becomes a chain of Selects (trainer_node.rounds):
one request id per round (suffix `-r<i>`), a model upload per later round, and the union of the
rounds as the request's subset.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mycroft import logs
from mycroft.messages import (
    Allowance,
    EmbeddedHard,
    OwnerInfo,
    RawHard,
    SelectRequestSpec,
    SelectSummaryInfo,
)
from mycroft.protocol import DEFAULT_MAX_REQUEST_ID_CHARS, PROTOCOL_VERSION
from trainer_node.client import OwnerClient, OwnerError
from trainer_node.config import FULL_METHOD, ClientSettings, OwnerEndpoint, SelectionSettings
from trainer_node.messages import OwnerSubset

if TYPE_CHECKING:  # rounds imports the baseline, which imports this module
    from trainer_node.rounds import RoundsPlan

log = logging.getLogger("mycroft.trainer.acquire")

# After retries are spent on these, the owner is unreachable: stop asking it.
_UNREACHABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


@dataclass(frozen=True)
class ProgressEvent:
    """A step of the run, for progress bars. Acquisition events arrive from worker threads."""

    stage: str  # "preflight" | "baseline" | "dhard" | "acquire" | "evaluate" | "report"
    message: str
    owner: str | None = None
    done: int | None = None
    total: int | None = None


ProgressFn = Callable[[ProgressEvent], None]


@dataclass
class RequestOutcome:
    request_id: str
    method: str
    budget: int  # the `budget` field of the request (for "full": the owner's row count)
    rows_requested: int
    subset: OwnerSubset | None = None  # in rounds: the union of the rounds' rows
    error: OwnerError | None = None
    round: int = 1  # which round of its chain this request is (1 when not in rounds)
    rounds: list[RequestOutcome] = field(default_factory=list)  # a chain's own requests


@dataclass
class OwnerOutcome:
    endpoint: OwnerEndpoint
    info: OwnerInfo | None = None
    model_uploaded: bool | None = None
    requests: list[RequestOutcome] = field(default_factory=list)
    budget: Allowance | None = None  # after the run
    error: str | None = None
    error_code: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and any(r.subset is not None for r in self.requests)


def request_id_for(
    run_id: str, owner: str, method: str, budget: int, round_index: int | None = None
) -> str:
    """Stable per logical request: the same run id asks the same question under the same id.
    A round of a chain (round_index) gets its own id."""
    suffix = "" if round_index is None else f"-r{round_index}"
    rid = f"{run_id}.{owner}.{method}.b{budget}{suffix}"
    if len(rid) <= DEFAULT_MAX_REQUEST_ID_CHARS:
        return rid
    digest = hashlib.sha256(rid.encode()).hexdigest()[:32]
    return f"{run_id[:64]}.{digest}"


def queries_needed(plan: list[tuple[str, int | None]], rounds: int) -> int:
    """Queries a run may cost an owner: one per Select (a round each) and one per model
    warm-up (the baseline's, and each later round's fine-tuned model)."""
    per_request = (1 if budget is None else 2 * min(rounds, budget) - 1 for _, budget in plan)
    return 1 + sum(per_request)


def _check_info(info: OwnerInfo, class_names: Sequence[str], input_shape: tuple[int, ...]):
    """Refuse owners whose labels or rows would not mean what ours mean."""
    if info.protocol_version != PROTOCOL_VERSION:
        return f"protocol {info.protocol_version!r}, expected {PROTOCOL_VERSION!r}"
    if tuple(info.class_names) != tuple(class_names):
        # Labels travel as indices into class_names, so the lists must match exactly.
        return f"class names {list(info.class_names)} differ from ours {list(class_names)}"
    if info.input_shape and tuple(info.input_shape) != tuple(input_shape):
        return f"row shape {list(info.input_shape)} differs from ours {list(input_shape)}"
    return None


def _check_subset(subset: OwnerSubset, num_classes: int, input_shape: tuple[int, ...]):
    if len(subset) == 0:
        return None
    if subset.features.shape[1:] != tuple(input_shape):
        return f"rows of shape {list(subset.features.shape[1:])}, expected {list(input_shape)}"
    if subset.labels.min() < 0 or subset.labels.max() >= num_classes:
        return f"labels outside [0, {num_classes})"
    if not np.isfinite(subset.features).all():
        return "rows contain NaN or infinity"
    return None


class _OwnerJob:
    def __init__(
        self,
        endpoint: OwnerEndpoint,
        client_settings: ClientSettings,
        plan: list[tuple[str, int | None]],
        make_client: Callable[[OwnerEndpoint, ClientSettings], OwnerClient],
        progress: ProgressFn | None,
    ):
        self.endpoint, self.settings, self.plan = endpoint, client_settings, plan
        self.make_client, self.progress = make_client, progress

    def _emit(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent("acquire", message, self.endpoint.name, done, total))

    def run(self, ctx: AcquireContext) -> OwnerOutcome:
        out = OwnerOutcome(self.endpoint)
        name = self.endpoint.name
        try:
            with logs.bound(owner=name), self.make_client(self.endpoint, self.settings) as client:
                self._run(client, ctx, out)
        except OwnerError as exc:
            out.error, out.error_code = str(exc), exc.code
        except Exception as exc:  # a bug or a surprise must not sink the other owners
            log.exception("owner=%s unexpected failure", name, extra={"owner": name})
            out.error, out.error_code = f"owner {name}: {type(exc).__name__}: {exc}", "INTERNAL"
        if out.error is None and not any(r.subset is not None for r in out.requests):
            first = next((r.error for r in out.requests if r.error is not None), None)
            out.error = str(first) if first else f"owner {name}: no request succeeded"
            out.error_code = first.code if first else "NO_DATA"
        status = "ok" if out.ok else f"failed ({out.error})"
        self._emit(f"{name}: {status}", len(self.plan), len(self.plan))
        return out

    def _run(self, client: OwnerClient, ctx: AcquireContext, out: OwnerOutcome) -> None:
        name = self.endpoint.name
        info = client.describe()
        out.info = info
        problem = _check_info(info, ctx.class_names, ctx.input_shape)
        if problem:
            raise OwnerError(name, "INCOMPATIBLE", problem)
        rounds = ctx.rounds.rounds if ctx.rounds is not None else 1
        needed = queries_needed(self.plan, rounds)
        if info.budget.queries and info.budget.queries_left < needed:
            log.warning(
                "owner=%s query allowance: %d of %d left, this run may need up to %d "
                "(replays of an earlier run with the same run id are free)",
                name,
                info.budget.queries_left,
                info.budget.queries,
                needed,
            )
        _, out.model_uploaded = client.ensure_model(ctx.model_bytes)
        for i, (method, budget) in enumerate(self.plan):
            ask = info.row_count if budget is None else budget
            rid = request_id_for(ctx.run_id, name, method, ask)
            req = RequestOutcome(rid, method, ask, ask)
            out.requests.append(req)
            self._emit(f"{name}: {method} budget {ask}", i, len(self.plan))
            if info.methods and method not in info.methods:
                req.error = OwnerError(name, "UNSUPPORTED", f"method {method!r} not offered", rid)
                continue
            if budget is not None and ctx.rounds is not None and rounds > 1:
                self._chain(client, ctx, req, ctx.rounds)
            else:
                hard = ctx.hard[ctx.selection.mode_for(method)]
                self._ask(client, ctx, req, self._spec(ctx, req, hard), ctx.model_bytes)
            if req.subset is not None:
                out.budget = req.subset.summary.budget
            elif req.error is not None and _allowance_spent(req.error):
                # Every further request would be refused the same way: keep what was
                # answered, skip the rest.
                log.warning(
                    "owner=%s: %s; skipping its remaining requests", name, req.error.message
                )
                break
        try:
            out.budget = client.ledger().budget
        except OwnerError as exc:  # the ledger is informative; the last summary's budget stands
            log.warning("owner=%s ledger unavailable: %s", name, exc)

    @staticmethod
    def _spec(
        ctx: AcquireContext,
        req: RequestOutcome,
        hard: RawHard | EmbeddedHard,
        model_sha256: str | None = None,
        exclude_row_ids: np.ndarray | tuple[int, ...] = (),
    ) -> SelectRequestSpec:
        return SelectRequestSpec(
            request_id=req.request_id,
            method=req.method,
            rows_wanted=req.rows_requested,
            model_sha256=model_sha256 or ctx.model_sha256,
            hard=hard,
            seed=ctx.selection.seed,
            params=ctx.selection.params.get(req.method, {}),
            exclude_row_ids=exclude_row_ids,
        )

    def _ask(
        self,
        client: OwnerClient,
        ctx: AcquireContext,
        req: RequestOutcome,
        spec: SelectRequestSpec,
        model_bytes: bytes,
    ) -> OwnerSubset | None:
        """One Select into `req` (its subset, or its error and None). Raises when the owner is
        unreachable: its remaining requests are skipped."""
        try:
            with logs.bound(request_id=spec.request_id):
                subset = _select(client, spec, model_bytes)
        except OwnerError as exc:
            req.error = exc
            if exc.code in _UNREACHABLE:
                raise  # retries spent: the owner is gone
            return None
        problem = _check_subset(subset, len(ctx.class_names), ctx.input_shape)
        if problem:
            name = self.endpoint.name
            log.warning("owner=%s request_id=%s bad subset: %s", name, spec.request_id, problem)
            req.error = OwnerError(name, "PROTOCOL", problem, spec.request_id)
            return None
        req.subset = subset
        return subset

    def _chain(
        self, client: OwnerClient, ctx: AcquireContext, req: RequestOutcome, plan: RoundsPlan
    ) -> None:
        """`req`'s budget in rounds: each round one Select (in req.rounds), the union of their
        rows as req.subset."""

        def ask(model, hard, rows: int, held: np.ndarray) -> OwnerSubset | None:
            i = len(req.rounds) + 1
            rid = request_id_for(ctx.run_id, self.endpoint.name, req.method, req.budget, i)
            part = RequestOutcome(rid, req.method, req.budget, rows, round=i)
            req.rounds.append(part)
            blob, sha = (ctx.model_bytes, ctx.model_sha256) if i == 1 else plan.model_file(model)
            if i > 1:
                try:
                    client.ensure_model(blob)  # each round scores with its fine-tuned model
                except OwnerError as exc:
                    part.error = exc
                    if exc.code in _UNREACHABLE:
                        raise
                    return None
            return self._ask(client, ctx, part, self._spec(ctx, part, hard, sha, held), blob)

        result = plan.acquire(req.budget, ask, ctx.selection.mode_for(req.method))
        answered = [r.subset for r in req.rounds if r.subset is not None]
        if answered:
            req.subset = _merged(answered, req.request_id, result.stopped)
        else:
            req.error = next((r.error for r in reversed(req.rounds) if r.error), None)


def _allowance_spent(error: OwnerError) -> bool:
    return error.code == "RESOURCE_EXHAUSTED" and "query allowance" in error.message


def _merged(parts: list[OwnerSubset], request_id: str, stopped: str | None) -> OwnerSubset:
    """One subset from a chain's answers: the distinct rows in the order received."""
    ids = np.concatenate([p.row_ids for p in parts]).astype(np.int64)
    _, first = np.unique(ids, return_index=True)
    keep = np.sort(first)  # an owner that ignores the exclusion may repeat a row
    last = parts[-1].summary
    summary = SelectSummaryInfo(
        request_id=request_id,
        rows_sent=sum(p.summary.rows_sent for p in parts),
        new_rows_charged=sum(p.summary.new_rows_charged for p in parts),
        replayed=all(p.summary.replayed for p in parts),
        budget=last.budget,
        timings={"total": sum(p.summary.selection_seconds for p in parts)},
        missing_classes=last.missing_classes,
        shortfall_reason=stopped or last.shortfall_reason,
    )
    return OwnerSubset(
        features=np.concatenate([p.features for p in parts])[keep],
        labels=np.concatenate([p.labels for p in parts])[keep],
        row_ids=ids[keep],
        scores=np.concatenate([p.scores for p in parts])[keep],
        summary=summary,
        attempts=sum(p.attempts for p in parts),
        seconds=sum(p.seconds for p in parts),
    )


def _select(client: OwnerClient, spec: SelectRequestSpec, model_bytes: bytes) -> OwnerSubset:
    """Select; if the owner no longer holds our model (it evicts least recently used models to
    stay within its disk quota), upload it again, once, and retry under the same request id."""
    try:
        return client.select(spec)
    except OwnerError as exc:
        if exc.code != "NOT_FOUND" or not spec.model_sha256:
            raise
        log.info("owner=%s no longer holds our model; uploading it again", client.name)
    client.ensure_model(model_bytes)
    return client.select(spec)


@dataclass(frozen=True)
class AcquireContext:
    run_id: str
    model_bytes: bytes
    model_sha256: str
    hard: dict[str, RawHard | EmbeddedHard]  # D_hard in each form the run sends, by mode
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    selection: SelectionSettings
    rounds: RoundsPlan | None = None  # selection.rounds > 1: the chain's trainer side


def plan_requests(selection: SelectionSettings) -> list[tuple[str, int | None]]:
    """(method, budget) in config order; "full" (budget None = all rows) goes last because
    it may spend the owner's whole cap on us."""
    plan: list[tuple[str, int | None]] = [
        (m, b) for m in selection.methods if m != FULL_METHOD for b in selection.budgets
    ]
    if FULL_METHOD in selection.methods:
        plan.append((FULL_METHOD, None))
    return plan


def acquire_all(
    owners: Sequence[OwnerEndpoint],
    client_settings: ClientSettings,
    ctx: AcquireContext,
    progress: ProgressFn | None = None,
    make_client: Callable[[OwnerEndpoint, ClientSettings], OwnerClient] = OwnerClient,
) -> list[OwnerOutcome]:
    """One outcome per owner, in config order, whatever failed."""
    plan = plan_requests(ctx.selection)
    start = time.perf_counter()
    jobs = [_OwnerJob(o, client_settings, plan, make_client, progress) for o in owners]
    workers = max(1, min(client_settings.concurrency, len(jobs)))
    # Each job runs in a copy of this context: its log lines keep the run's trainer id.
    contexts = [contextvars.copy_context() for _ in jobs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="owner") as pool:
        outcomes = list(pool.map(lambda job, c: c.run(job.run, ctx), jobs, contexts))
    ok = sum(o.ok for o in outcomes)
    log.info("acquired from %d/%d owners in %.1fs", ok, len(outcomes), time.perf_counter() - start)
    return outcomes
