"""The owner's logic without the network: data, models, D_hard checks, running a strategy.

The gRPC service is a thin layer over this class, so selection can be tested and benchmarked
directly. Strategies run on a bounded worker pool (`submit`), never on gRPC handler threads, so
Describe and health checks stay responsive while a selection computes.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mycroft.data.base import LabeledData
from mycroft.errors import ConfigError, InvalidRequest
from owner_node.config import OwnerConfig, SelectionSection
from owner_node.errors import Busy, ModelNotFound
from owner_node.models import LoadedModel, ModelStore, check_sha
from owner_node.requests import SelectJob
from selection.base import Candidates, HardSet, SelectionResult, Strategy, available, get_strategy

log = logging.getLogger("owner_node.engine")
PROTOCOL_VERSION = "mycroft.v1"


@dataclass(frozen=True)
class OwnerInfo:
    name: str
    class_names: tuple[str, ...]
    row_count: int
    input_shape: tuple[int, ...]
    feature_names: tuple[str, ...]
    methods: tuple[str, ...]
    class_counts: tuple[int, ...]  # empty when the owner hides them


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
            cache_size=config.selection.model_cache,
            embed_batch_size=config.selection.embed_batch_size,
        )
        # Row id -> position, for sending the selected rows.
        self._order = np.argsort(self.data.row_ids, kind="stable")
        self._sorted_ids = self.data.row_ids[self._order]
        counts = np.bincount(self.data.labels, minlength=self.data.num_classes)
        self._class_counts = tuple(int(c) for c in counts)
        workers = config.owner.selection_workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="select")
        # Bounds running + queued selections; beyond that callers get UNAVAILABLE, not a queue
        # that grows without limit.
        self._slots = threading.BoundedSemaphore(workers + config.owner.selection_queue)

    def info(self) -> OwnerInfo:
        hide = self.config.selection.hide_class_counts
        return OwnerInfo(
            name=self.config.owner.name,
            class_names=tuple(self.data.class_names),
            row_count=len(self.data),
            input_shape=tuple(self.data.input_shape),
            feature_names=tuple(self.data.feature_names),
            methods=self.methods,
            class_counts=() if hide else self._class_counts,
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

    def check(self, job: SelectJob) -> Strategy:
        """Cheap checks done on the caller's thread before queueing; returns the strategy."""
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
        if job.model_sha256 and self.models.size(job.model_sha256) is None:
            raise ModelNotFound(
                f"model_sha256: no model {job.model_sha256[:12]}… here; upload it first"
            )
        return strategy

    def submit(self, job: SelectJob) -> Future[SelectionResult]:
        """Check `job`, then run it on the worker pool. Busy if the pool and queue are full."""
        strategy = self.check(job)
        if not self._slots.acquire(blocking=False):
            raise Busy("the owner is busy with other selections; retry shortly")
        try:
            future = self._pool.submit(self.run, job, strategy)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def run(self, job: SelectJob, strategy: Strategy | None = None) -> SelectionResult:
        """The selection itself (blocking): model, embeddings, gradients, strategy."""
        strategy = strategy or self.check(job)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        loaded = self.models.get(job.model_sha256) if job.model_sha256 else None
        timings["load_model"] = time.perf_counter() - start
        hard = self._hard_set(job, strategy, loaded, timings)
        candidates = Candidates(row_ids=self.data.row_ids, labels=self.data.labels)
        if loaded is not None and _needs_model(strategy):
            t = time.perf_counter()
            candidates.embeddings = self.models.embeddings(loaded)
            timings["owner_embeddings"] = time.perf_counter() - t
        if strategy.needs_features:
            candidates.features = self.data.features.reshape(len(self.data), -1)
        if loaded is not None:
            strategy = _reuse_cache(strategy, job, loaded)
        t = time.perf_counter()
        try:
            result = strategy.select(
                candidates,
                hard,
                job.budget,
                head=loaded.head if loaded is not None else None,
                seed=job.seed,
            )
        except ValueError as e:  # strategies validate their inputs with ValueError
            raise InvalidRequest("hard_set", str(e)) from e
        timings["strategy"] = time.perf_counter() - t
        result.timings = {**timings, **{f"strategy.{k}": v for k, v in result.timings.items()}}
        return self._check_result(job, result)

    def warm(self, loaded: LoadedModel) -> None:
        """Keep a just-uploaded model parsed and embed the owner's rows with it in the
        background, so the first Select does not pay for it (best effort: errors are logged
        and surface again on that Select)."""
        self.models.remember(loaded)

        def embed() -> None:
            try:
                self.models.embeddings(loaded)
            except Exception:  # noqa: BLE001 - background work must not die silently
                log.exception("embedding the owner's rows with model %s failed", loaded.sha256)

        try:
            self._pool.submit(embed)
        except RuntimeError:  # shutting down: the first Select will embed instead
            pass

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _hard_set(
        self, job: SelectJob, strategy: Strategy, loaded: LoadedModel | None, timings: dict
    ) -> HardSet:
        hard = HardSet(labels=job.labels)
        mode = _mode_field(job)
        if job.raw_features is not None:
            if strategy.needs_features:
                hard.features = job.raw_features.reshape(len(job.raw_features), -1)
            if loaded is not None and _needs_model(strategy):
                t = time.perf_counter()
                hard.embeddings = self.models.embed(loaded, job.raw_features)
                timings["embed_hard"] = time.perf_counter() - t
                if strategy.needs_gradients:
                    from selection.gradients import last_layer_gradients

                    t = time.perf_counter()
                    hard.gradients = last_layer_gradients(hard.embeddings, job.labels, loaded.head)
                    timings["hard_gradients"] = time.perf_counter() - t
            return hard
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
            raise InvalidRequest(
                f"hard_set.{mode}.embeddings", f"required by method {job.method!r}"
            )
        if strategy.needs_gradients and job.gradients is None and job.embeddings is None:
            raise InvalidRequest(f"hard_set.{mode}.gradients", f"required by method {job.method!r}")
        hard.embeddings = job.embeddings
        hard.gradients = job.gradients
        return hard

    def _check_result(self, job: SelectJob, result: SelectionResult) -> SelectionResult:
        """A plugin strategy must never make the owner reveal more than asked."""
        ids = np.asarray(result.row_ids, dtype=np.int64).reshape(-1)
        scores = np.asarray(result.scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(ids) or len(np.unique(ids)) != len(ids):
            raise RuntimeError(f"strategy {job.method!r} returned inconsistent row ids/scores")
        if not _ignores_budget(job.method) and len(ids) > job.budget:
            log.warning(
                "strategy %s returned %d rows for budget %d", job.method, len(ids), job.budget
            )
            ids, scores = ids[: job.budget], scores[: job.budget]
        self.positions(ids)  # raises if any id is not the owner's; no copy of the rows
        result.row_ids, result.scores = ids, np.nan_to_num(scores, nan=0.0)
        return result


def _reuse_cache(strategy: Strategy, job: SelectJob, loaded: LoadedModel) -> Strategy:
    """Strategies that take a `cache=` (feature matching's per-class FAISS indexes) get one
    per model and parameter set, so indexes are built once per model, not once per request."""
    if "cache" not in _init_params(type(strategy)) or not hasattr(strategy, "cache"):
        return strategy
    key = (job.method, tuple(sorted(job.params.items())))
    with loaded.lock:
        cached = loaded.cache.setdefault(key, strategy.cache)
    if cached is strategy.cache:
        return strategy
    return build_strategy(job.method, job.params, cache=cached)


def _init_params(cls: type) -> dict[str, inspect.Parameter]:
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return {}
    return {
        name: p
        for name, p in sig.parameters.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_strategy(method: str, params: dict[str, float], cache: object = None) -> Strategy:
    """The strategy with the request's parameters, coerced to the constructor's types."""
    try:
        cls = type(get_strategy(method))
    except KeyError:
        raise InvalidRequest("method", f"unknown method {method!r}") from None
    allowed = _init_params(cls)
    allowed.pop("cache", None)  # an object, never a wire parameter
    kwargs: dict[str, object] = {}
    if allowed:
        for key, value in params.items():
            if key not in allowed:
                raise InvalidRequest(
                    f"params.{key}",
                    f"not a parameter of {method!r}; known: {', '.join(allowed) or 'none'}",
                )
            kwargs[key] = _coerce(key, value, allowed[key].default)
    elif params:
        raise InvalidRequest("params", f"method {method!r} takes no parameters")
    if cache is not None:
        kwargs["cache"] = cache
    try:
        return get_strategy(method, **kwargs)
    except (TypeError, ValueError) as e:
        raise InvalidRequest("params", f"{method}: {e}") from None


def _coerce(key: str, value: float, default: object) -> object:
    if isinstance(default, bool):
        if value not in (0.0, 1.0):
            raise InvalidRequest(f"params.{key}", "must be 0 or 1")
        return bool(value)
    if isinstance(default, int):
        if value != int(value):
            raise InvalidRequest(f"params.{key}", f"must be an integer, got {value}")
        return int(value)
    return value


def _needs_model(strategy: Strategy) -> bool:
    return bool(strategy.needs_embeddings or strategy.needs_gradients)


def _mode_field(job: SelectJob) -> str:
    return "raw" if job.raw_features is not None else "embedded"
