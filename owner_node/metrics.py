"""Prometheus metrics of one owner node, served on `[metrics] listen` when `enabled`.

Each server has its own `CollectorRegistry` (several owners may run in one process: tests, Ray),
and its HTTP endpoint stops with the owner. Counters are counted where the event is committed:
gRPC calls in `rpc.CallObserver`, selections and queries in the ledger. Sizes are gauges read
when scraped, from the objects that hold them, so nothing is counted twice.

No label holds a row id, a class name, a trainer id or anything else from the owner's rows or
its trainers beyond counts the ledger already keeps: `method` is a DataOwner RPC or one of the
selection methods the owner offers ("other" for any other name a request carried), `code` a gRPC
status name, `kind` a fixed word. Per-trainer numbers stay in `mycroft owner inspect`.

| metric | type | labels | what |
|---|---|---|---|
| mycroft_owner_rpc_duration_seconds | histogram | method | DataOwner calls, start to last message |
| mycroft_owner_rpc_refusals_total | counter | method, code | calls that ended with a status other than OK |
| mycroft_owner_selections_total | counter | method, outcome | Selects that reached the ledger: charged, replayed, refused |
| mycroft_owner_rows_revealed_total | counter | method | distinct rows newly charged to a trainer |
| mycroft_owner_rows_sent_total | counter | method | rows in answers, re-sends and replays included |
| mycroft_owner_queries_total | counter | kind | queries charged (select, warm: a new model's embedding pass) |
| mycroft_owner_queries_refunded_total | counter | | queries refunded (cancelled before computing) |
| mycroft_owner_model_uploads_total | counter | | UploadModel calls that ended OK |
| mycroft_owner_model_upload_bytes_total | counter | | their model sizes |
| mycroft_owner_cache_entries | gauge | kind | memory cache entries: model, embeddings, index |
| mycroft_owner_cache_bytes | gauge | kind | their bytes |
| mycroft_owner_cache_limit_bytes | gauge | | `[selection] cache_mib` in bytes |
| mycroft_owner_cache_evictions_total | counter | | entries evicted for room |
| mycroft_owner_models_on_disk | gauge | | model files in the state directory |
| mycroft_owner_disk_bytes | gauge | kind | bytes on disk: model, embeddings |
| mycroft_owner_disk_quota_bytes | gauge | | `owner.disk_quota_mib` in bytes |
| mycroft_owner_budget_rows | gauge | state | all trainers' row caps added up: cap, used |
| mycroft_owner_budget_queries | gauge | state | all trainers' query allowances added up: allowed, used |
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mycroft.addresses import split_address
from mycroft.errors import MycroftError

if TYPE_CHECKING:
    from owner_node.ledger import Ledger
    from owner_node.models import ModelStore

PREFIX = "mycroft_owner"
OTHER_METHOD = "other"
# From a Describe (milliseconds) to a first Select that embeds every row (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
CACHE_KINDS = {"model": "model", "emb": "embeddings", "index": "index"}  # ByteLRU key[0]


class OwnerMetrics:
    """The counters of one owner, in their own registry."""

    def __init__(self, selection_methods: Iterable[str]):
        self.registry = CollectorRegistry()
        self._methods = frozenset(selection_methods)
        r = self.registry
        self.rpc_seconds = Histogram(
            f"{PREFIX}_rpc_duration_seconds",
            "DataOwner calls from start to their last message",
            ["method"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.rpc_refusals = Counter(
            f"{PREFIX}_rpc_refusals", "calls that ended with a status other than OK",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.selections = Counter(
            f"{PREFIX}_selections", "Selects that reached the ledger, by outcome",
            ["method", "outcome"], registry=r,
        )  # fmt: skip
        self.rows_revealed = Counter(
            f"{PREFIX}_rows_revealed", "distinct rows newly charged", ["method"], registry=r
        )
        self.rows_sent = Counter(
            f"{PREFIX}_rows_sent", "rows in answers, replays included", ["method"], registry=r
        )
        self.queries = Counter(f"{PREFIX}_queries", "queries charged", ["kind"], registry=r)
        self.queries_refunded = Counter(
            f"{PREFIX}_queries_refunded", "queries refunded before computing", registry=r
        )
        self.model_uploads = Counter(f"{PREFIX}_model_uploads", "models uploaded", registry=r)
        self.model_upload_bytes = Counter(
            f"{PREFIX}_model_upload_bytes", "bytes of the models uploaded", registry=r
        )

    def _method(self, method: str) -> str:
        # A request's method name is the trainer's text: only offered names become labels.
        return method if method in self._methods else OTHER_METHOD

    def selection(self, method: str, outcome: str, new_rows: int = 0, rows_sent: int = 0) -> None:
        label = self._method(method)
        self.selections.labels(label, outcome).inc()
        if new_rows:
            self.rows_revealed.labels(label).inc(new_rows)
        if rows_sent:
            self.rows_sent.labels(label).inc(rows_sent)

    def query(self, kind: str) -> None:
        self.queries.labels(kind).inc()

    def query_refunded(self) -> None:
        self.queries_refunded.inc()

    def rpc_ended(
        self, method: str, code: grpc.StatusCode, seconds: float, response: object = None
    ) -> None:
        self.rpc_seconds.labels(method).observe(seconds)
        if code != grpc.StatusCode.OK:
            self.rpc_refusals.labels(method, code.name).inc()
        elif method == "UploadModel":
            self.model_uploads.inc()
            self.model_upload_bytes.inc(int(getattr(response, "size", 0)))

    def watch(self, models: ModelStore, ledger: Ledger) -> None:
        """Serve the cache, disk and budget gauges, read from these objects when scraped."""
        self.registry.register(_StateCollector(models, ledger))


class _StateCollector(Collector):
    def __init__(self, models: ModelStore, ledger: Ledger):
        self._models, self._ledger = models, ledger

    def collect(self) -> Iterator[Metric]:
        cache = self._models.cache
        held = cache.totals_by(lambda key: CACHE_KINDS.get(key[0], OTHER_METHOD))
        entries = GaugeMetricFamily(
            f"{PREFIX}_cache_entries", "memory cache entries", labels=["kind"]
        )
        nbytes = GaugeMetricFamily(f"{PREFIX}_cache_bytes", "memory cache bytes", labels=["kind"])
        for kind in CACHE_KINDS.values():
            count, size = held.get(kind, (0, 0))
            entries.add_metric([kind], count)
            nbytes.add_metric([kind], size)
        yield entries
        yield nbytes
        yield GaugeMetricFamily(
            f"{PREFIX}_cache_limit_bytes", "memory cache bound", value=cache.max_bytes
        )
        yield CounterMetricFamily(
            f"{PREFIX}_cache_evictions", "entries evicted for room", value=cache.evictions
        )
        disk = self._models.disk
        models, model_bytes, embedding_bytes = disk.totals()
        yield GaugeMetricFamily(f"{PREFIX}_models_on_disk", "model files", value=models)
        on_disk = GaugeMetricFamily(f"{PREFIX}_disk_bytes", "bytes on disk", labels=["kind"])
        on_disk.add_metric(["model"], model_bytes)
        on_disk.add_metric(["embeddings"], embedding_bytes)
        yield on_disk
        yield GaugeMetricFamily(
            f"{PREFIX}_disk_quota_bytes", "disk quota of models and embeddings",
            value=disk.total_bytes,
        )  # fmt: skip
        budget = self._ledger.totals()
        rows = GaugeMetricFamily(
            f"{PREFIX}_budget_rows", "all trainers' row caps added up", labels=["state"]
        )
        rows.add_metric(["cap"], budget.cap)
        rows.add_metric(["used"], budget.used)
        yield rows
        queries = GaugeMetricFamily(
            f"{PREFIX}_budget_queries", "all trainers' query allowances added up", labels=["state"]
        )
        queries.add_metric(["allowed"], budget.queries)
        queries.add_metric(["used"], budget.queries_used)
        yield queries


class MetricsEndpoint:
    """`/metrics` over plain HTTP on `address`, on a daemon thread until `close()`."""

    def __init__(self, registry: CollectorRegistry, address: str, where: str = "metrics.listen"):
        host, port = split_address(address, where)
        try:
            self._server, self._thread = start_http_server(port, host, registry=registry)
        except OSError as e:
            raise MycroftError(f"{where}: cannot listen on {address}: {e.strerror}") from None
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()  # waits for serve_forever to return
        self._server.server_close()
        self._thread.join(timeout=5)
