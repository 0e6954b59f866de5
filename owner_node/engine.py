"""The owner's logic without the network: data, models, D_hard checks, running a strategy.

The gRPC service is a thin layer over this class, so selection can be tested and benchmarked
directly. Strategies run on a bounded worker pool (`start`), never on gRPC handler threads, so
Describe and health checks stay responsive while a selection computes.

A request goes through three phases, and the order is what keeps the owner's answers free of
information about rows it did not return:
1. `check` (before any charge): everything that needs only the request, the model and public
   facts (method, labels, shapes, parameter bounds, model fit). Errors name the field.
2. D_hard (after the query charge, trainer's data only): raw D_hard rows are embedded with the
   trainer's model. Errors still name the field: they say nothing about the owner's rows.
3. The owner's rows: embeddings (rows that overflow become zero vectors), then the strategy. Any
   failure here is one fixed `SelectionFailed`, whatever went wrong; details go to the log.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future

import numpy as np

from mycroft.data.base import LabeledData
from mycroft.errors import ConfigError, InvalidRequest
from mycroft.messages import OwnerInfo
from owner_node.config import OwnerConfig, SelectionSection
from owner_node.errors import SelectionFailed
from owner_node.limits import Place
from owner_node.models import LoadedModel, ModelStore, check_sha
from owner_node.scheduler import FairScheduler
from owner_node.select_request import SelectJob
from selection.base import (
    Candidates,
    HardSet,
    SelectionResult,
    Strategy,
    available,
    get_strategy,
    wire_params,
)
from selection.params import ParamError

log = logging.getLogger("owner_node.engine")


def load_data(config: OwnerConfig) -> LabeledData:
    from mycroft.data import open_source

    source = open_source(config.data, base_dir=config.base_dir, where="data")
    return source.load(config.split)


def offered_methods(section: SelectionSection) -> tuple[str, ...]:
    """Methods from the config, checked against the registry (built-ins and plugins)."""
    known = available()
    if section.methods is None:
        return tuple(m for m in known if section.allow_full or not _ignores_budget(m))
    for i, m in enumerate(section.methods):
        if m not in known:
            raise ConfigError(
                f"selection.methods[{i}]: unknown method {m!r}; registered: {', '.join(known)}"
            )
        if _ignores_budget(m) and not section.allow_full:
            raise ConfigError(
                f"selection.methods[{i}]: {m!r} ignores the budget (evaluation only); "
                "set selection.allow_full = true to offer it"
            )
    return section.methods


def _ignores_budget(method: str) -> bool:
    """True for "full" and any plugin like it: every row, whatever the budget."""
    return bool(getattr(get_strategy(method), "ignores_budget", False))


class Engine:
    def __init__(self, config: OwnerConfig, data: LabeledData | None = None):
        self.config = config
        self.data = data if data is not None else load_data(config)
        if len(self.data) == 0:
            raise ConfigError("data: the owner's data set is empty")
        self.methods = offered_methods(config.selection)
        # Ledger, models and embeddings are private to the owner: not world-readable.
        config.owner.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.models = ModelStore(
            config.owner.state_dir,
            self.data,
            max_bytes=config.limits.max_model_bytes,
            max_embed_dim=config.limits.max_embed_dim,
            # One LRU by bytes for parsed models, embeddings and indexes; disk quotas for files.
            cache_bytes=config.selection.cache_mib * 1024 * 1024,
            disk_quota_bytes=config.owner.disk_quota_mib * 1024 * 1024,
            disk_quota_per_trainer_bytes=config.owner.disk_quota_per_trainer_mib * 1024 * 1024,
            embed_batch_size=config.selection.embed_batch_size,
            admission=config.models,
            device=config.compute.resolved_device(),
            threads=config.compute.resolved_threads(),
        )
        # Row id -> position, for sending the selected rows.
        self._order = np.argsort(self.data.row_ids, kind="stable")
        self._sorted_ids = self.data.row_ids[self._order]
        counts = np.bincount(self.data.labels, minlength=self.data.num_classes)
        self._class_counts = tuple(int(c) for c in counts)
        # Selections and warm-ups: bounded in total and per trainer, trainers served in turn.
        owner = config.owner
        self.scheduler = FairScheduler(
            owner.selection_workers, owner.selection_queue, owner.selections_per_trainer
        )

    def info(self) -> OwnerInfo:
        """The owner's public facts (Describe adds the caller's id and allowance)."""
        hide = self.config.selection.hide_class_counts
        return OwnerInfo(
            owner_name=self.config.owner.name,
            class_names=tuple(self.data.class_names),
            row_count=len(self.data),
            input_shape=tuple(self.data.input_shape),
            feature_names=tuple(self.data.feature_names),
            methods=self.methods,
            class_counts=() if hide else self._class_counts,
            max_request_bytes=self.config.limits.max_request_bytes,
        )

    def rows(self, row_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of the owner's rows `row_ids`, in that order."""
        index = self.positions(row_ids)
        return self.data.features[index], self.data.labels[index]

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Positions of `row_ids` in the data; RuntimeError if any id is not the owner's."""
        pos = np.searchsorted(self._sorted_ids, row_ids)
        pos = np.clip(pos, 0, len(self._sorted_ids) - 1)
        if len(row_ids) and not np.array_equal(self._sorted_ids[pos], row_ids):
            raise RuntimeError("selection returned row ids the owner does not hold")
        return self._order[pos]

    def check(self, job: SelectJob, trainer: str) -> tuple[Strategy, LoadedModel | None]:
        """Phase 1, on the caller's thread before anything is charged: every check that needs
        only the request, `trainer`'s model and public facts. Returns the strategy and model."""
        if job.method not in self.methods:
            raise InvalidRequest(
                "method", f"{job.method!r} is not offered; offered: {', '.join(self.methods)}"
            )
        c = self.data.num_classes
        if job.labels.min() < 0 or job.labels.max() >= c:
            bad = int(job.labels[(job.labels < 0) | (job.labels >= c)][0])
            raise InvalidRequest(
                f"hard_set.{_mode_field(job)}.labels", f"label {bad} outside [0, {c})"
            )
        if job.raw_features is not None and job.raw_features.shape[1:] != self.data.input_shape:
            raise InvalidRequest(
                "hard_set.raw.features",
                f"rows of shape {list(job.raw_features.shape[1:])}, the owner's rows are "
                f"{list(self.data.input_shape)}",
            )
        if job.model_sha256:
            check_sha(job.model_sha256, "model_sha256")
        strategy = build_strategy(job.method, job.params)
        if _needs_model(strategy) and not job.model_sha256:
            raise InvalidRequest(
                "model_sha256", f"method {job.method!r} needs the trainer's model; upload it first"
            )
        loaded = self.models.get(trainer, job.model_sha256) if job.model_sha256 else None
        _check_hard_set(job, strategy, loaded)
        return strategy, loaded

    def reserve(self, trainer: str) -> Place:
        """A place among running + queued work, in total and for `trainer`; Busy (UNAVAILABLE)
        when either bound is reached. Taken before anything is charged."""
        return self.scheduler.reserve(trainer)

    def start(
        self,
        place: Place,
        job: SelectJob,
        strategy: Strategy,
        loaded: LoadedModel | None,
        rows: int,
    ) -> Future[SelectionResult]:
        """Queue a checked job in `place` (taken with `reserve`; the caller releases it when
        its stream ends). `rows` is what the ledger granted: at most that many come back."""
        return self.scheduler.submit(
            place, self.run, job, strategy, loaded, rows, place.trainer, release=False
        )

    def run(
        self,
        job: SelectJob,
        strategy: Strategy,
        loaded: LoadedModel | None,
        rows: int,
        trainer: str,
    ) -> SelectionResult:
        """Phases 2 and 3 (blocking): D_hard, then the owner's rows; at most `rows` come back."""
        timings: dict[str, float] = {}
        hard = self._hard_set(job, strategy, loaded, timings)
        try:
            return self._select(job, strategy, loaded, hard, rows, timings)
        except Exception as e:  # noqa: BLE001 - phase 3 failures must all look alike
            log.error(
                "select trainer=%s request=%s method=%s failed over the owner's rows",
                trainer,
                job.request_id,
                job.method,
                exc_info=e,
            )
            raise SelectionFailed(
                f"the selection failed on the owner's side (request {job.request_id}); the "
                "query was charged; the owner's log has details"
            ) from None

    def _select(
        self,
        job: SelectJob,
        strategy: Strategy,
        loaded: LoadedModel | None,
        hard: HardSet,
        rows: int,
        timings: dict[str, float],
    ) -> SelectionResult:
        candidates = Candidates(row_ids=self.data.row_ids, labels=self.data.labels)
        with self.models.in_use(loaded):  # its files are not evicted for disk space meanwhile
            if loaded is not None and _needs_model(strategy):
                t = time.perf_counter()
                candidates.embeddings = self.models.embeddings(loaded)
                timings["owner_embeddings"] = time.perf_counter() - t
            if strategy.needs_features:
                candidates.features = self.data.features.reshape(len(self.data), -1)
            # The shared index caches cover every row: a request that excludes rows builds
            # its own (and must not replace theirs with it).
            shared_cache = loaded is not None and not len(job.exclude_row_ids)
            if len(job.exclude_row_ids):
                candidates = _without(candidates, job.exclude_row_ids)
            if shared_cache:
                strategy = _reuse_cache(self.models, strategy, job, loaded)
            t = time.perf_counter()
            head = loaded.head if loaded is not None else None
            result = strategy.select(candidates, hard, rows, head=head, seed=job.seed)
            timings["strategy"] = time.perf_counter() - t
            if shared_cache:  # indexes fill during select: count their real size now
                _reuse_cache(self.models, strategy, job, loaded, filled=True)
        result.timings = {**timings, **{f"strategy.{k}": v for k, v in result.timings.items()}}
        return self._check_result(job, result, rows)

    def warm(self, place: Place, loaded: LoadedModel) -> None:
        """Keep a just-uploaded model parsed and embed the owner's rows with it in the
        background, in `place` (a queue place like a selection's), so the first Select does not
        pay for it. The caller has charged the query. Best effort, and silent towards the
        trainer: errors are logged only."""
        self.models.remember(loaded)

        def embed() -> None:
            try:
                self.models.embeddings(loaded)
            except Exception:  # noqa: BLE001 - background work must not die silently
                log.exception("embedding the owner's rows with model %s failed", loaded.sha256)

        try:
            self.scheduler.submit(place, embed)
        except RuntimeError:  # shutting down: the first Select will embed instead
            pass

    def close(self) -> None:
        self.scheduler.close()

    def _hard_set(
        self, job: SelectJob, strategy: Strategy, loaded: LoadedModel | None, timings: dict
    ) -> HardSet:
        """Phase 2: D_hard as the strategy needs it. Uses only the trainer's data and model."""
        hard = HardSet(labels=job.labels, embeddings=job.embeddings, gradients=job.gradients)
        if job.raw_features is None:
            return hard
        if strategy.needs_features:
            hard.features = job.raw_features.reshape(len(job.raw_features), -1)
        if loaded is not None and _needs_model(strategy):
            t = time.perf_counter()
            hard.embeddings = self.models.embed(loaded, job.raw_features)
            timings["embed_hard"] = time.perf_counter() - t
            if strategy.needs_gradients:
                from selection.last_layer_grads import last_layer_gradients

                t = time.perf_counter()
                hard.gradients = last_layer_gradients(hard.embeddings, job.labels, loaded.head)
                timings["hard_gradients"] = time.perf_counter() - t
        return hard

    def _check_result(self, job: SelectJob, result: SelectionResult, rows: int) -> SelectionResult:
        """A strategy, plugins included, must never make the owner reveal more than granted
        (`full` too: it returns every row, but only `rows` of them can be paid for)."""
        ids = np.asarray(result.row_ids, dtype=np.int64).reshape(-1)
        scores = np.asarray(result.scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(ids) or len(np.unique(ids)) != len(ids):
            raise RuntimeError(f"strategy {job.method!r} returned inconsistent row ids/scores")
        if len(ids) > rows:
            if not _ignores_budget(job.method):
                log.warning("strategy %s returned %d rows for %d", job.method, len(ids), rows)
            ids, scores = ids[:rows], scores[:rows]
        self.positions(ids)  # raises if any id is not the owner's; no copy of the rows
        result.row_ids, result.scores = ids, np.nan_to_num(scores, nan=0.0)
        return result


def _check_hard_set(job: SelectJob, strategy: Strategy, loaded: LoadedModel | None) -> None:
    """D_hard against the method and the model: shapes and required fields, nothing else."""
    mode = _mode_field(job)
    if job.raw_features is not None:
        return
    if strategy.needs_features:
        raise InvalidRequest(
            "hard_set", f"method {job.method!r} needs raw D_hard rows (hard_set.raw)"
        )
    if loaded is not None:
        if job.embeddings is not None and job.embeddings.shape[1] != loaded.embed_dim:
            raise InvalidRequest(
                f"hard_set.{mode}.embeddings",
                f"dim {job.embeddings.shape[1]}, the model's embed_dim is {loaded.embed_dim}",
            )
        if job.gradients is not None and job.gradients.shape[1] != loaded.gradient_dim:
            raise InvalidRequest(
                f"hard_set.{mode}.gradients",
                f"dim {job.gradients.shape[1]}, the model needs C*(d+1) = "
                f"{loaded.num_classes}*({loaded.embed_dim}+1) = {loaded.gradient_dim}",
            )
    if strategy.needs_embeddings and job.embeddings is None and not strategy.needs_gradients:
        raise InvalidRequest(f"hard_set.{mode}.embeddings", f"required by method {job.method!r}")
    if strategy.needs_gradients and job.gradients is None and job.embeddings is None:
        raise InvalidRequest(f"hard_set.{mode}.gradients", f"required by method {job.method!r}")
    if strategy.needs_hard_embeddings and job.embeddings is None:
        raise InvalidRequest(f"hard_set.{mode}.embeddings", f"required by method {job.method!r}")


def _without(candidates: Candidates, row_ids: np.ndarray) -> Candidates:
    """`candidates` less the rows `row_ids` (the trainer holds them already)."""
    keep = ~np.isin(candidates.row_ids, row_ids)

    def kept(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else array[keep]

    return Candidates(
        row_ids=candidates.row_ids[keep],
        labels=candidates.labels[keep],
        embeddings=kept(candidates.embeddings),
        features=kept(candidates.features),
    )


def _reuse_cache(
    models: ModelStore,
    strategy: Strategy,
    job: SelectJob,
    loaded: LoadedModel,
    filled: bool = False,
) -> Strategy:
    """Strategies with a `cache` (feature matching's per-class FAISS indexes) get one per model
    and index settings, so indexes are built once per model, not once per request. The key holds
    only what changes the cached object (`cache.key`), never per-call knobs like batch sizes.
    Caches live in the store's byte-bounded LRU; `filled=True` (after the select) re-measures
    the cache the strategy filled."""
    cache = getattr(strategy, "cache", None)
    if cache is None:
        return strategy
    key = getattr(cache, "key", None) or tuple(sorted(job.params.items()))
    cached = models.strategy_cache(loaded, job.method, key, cache, filled=filled)
    if cached is cache:
        return strategy
    return build_strategy(job.method, job.params, cache=cached)


def build_strategy(method: str, params: dict[str, float], cache: object = None) -> Strategy:
    """The strategy with the request's parameters, each checked against the bounds the strategy
    declares (`selection.params`) before any work: INVALID_ARGUMENT naming the parameter."""
    try:
        kwargs: dict[str, object] = wire_params(method, params)
    except KeyError:
        raise InvalidRequest("method", f"unknown method {method!r}") from None
    except ParamError as e:
        raise InvalidRequest(f"params.{e.name}", f"{method}: {e.message}") from None
    if cache is not None:
        kwargs["cache"] = cache
    try:
        return get_strategy(method, **kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidRequest("params", f"{method}: {e}") from None


def _needs_model(strategy: Strategy) -> bool:
    return bool(strategy.needs_embeddings or strategy.needs_gradients)


def _mode_field(job: SelectJob) -> str:
    return "raw" if job.raw_features is not None else "embedded"
