"""A small client for one data owner: channel, auth, deadlines, retries, stream decoding.

Retries reuse the same request id: the owner answers a retried Select with the same rows and no
new charge, so a flaky network never costs budget. Statuses that a retry cannot fix
(UNAUTHENTICATED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) fail at once. Nothing from the
network is unpickled: tensors arrive as dtype + shape + bytes and are validated by `wire.decode`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
import numpy as np

from mycroft import wire
from mycroft.errors import InvalidRequest, MycroftError
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc
from trainer_node.config import ClientSettings, OwnerEndpoint
from trainer_node.messages import (
    BudgetInfo,
    EmbeddedHard,
    LedgerEntryInfo,
    LedgerInfo,
    ModelStatusInfo,
    OwnerInfo,
    OwnerSubset,
    RawHard,
    SelectRequestSpec,
    SelectSummaryInfo,
)

__all__ = [  # the client's public surface, message types included
    "BudgetInfo",
    "EmbeddedHard",
    "LedgerEntryInfo",
    "LedgerInfo",
    "ModelStatusInfo",
    "OwnerClient",
    "OwnerError",
    "OwnerInfo",
    "OwnerSubset",
    "RawHard",
    "SelectRequestSpec",
    "SelectSummaryInfo",
    "make_channel",
]

log = logging.getLogger("mycroft.trainer.client")

UPLOAD_CHUNK_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_SUBSET_BYTES = 1024 * 1024 * 1024  # sanity cap on one decoded tensor from an owner
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_RESET_HINTS = ("connection reset", "socket closed", "rst_stream", "broken pipe")
T = TypeVar("T")
_DTYPES = (np.float32, np.int64, np.int64, np.float32)  # features, labels, row_ids, scores


class OwnerError(MycroftError):
    """A call to an owner failed. `code` is the gRPC status name (or "PROTOCOL")."""

    def __init__(self, owner: str, code: str, message: str, request_id: str | None = None):
        where = f"owner {owner}" + (f" request {request_id}" if request_id else "")
        super().__init__(f"{where}: {code}: {message}")
        self.owner, self.code, self.message, self.request_id = owner, code, message, request_id


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def make_channel(endpoint: OwnerEndpoint) -> grpc.Channel:
    """An insecure, TLS or mutual-TLS channel to the owner."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # gRPC's own transparent retries would hide attempts from our logs and backoff.
        ("grpc.enable_retries", 0),
    ]
    tls = endpoint.tls
    if tls is None:
        return grpc.insecure_channel(endpoint.address, options=options)
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_cert) if tls.ca_cert else None,
        private_key=_read(tls.client_key) if tls.client_key else None,
        certificate_chain=_read(tls.client_cert) if tls.client_cert else None,
    )
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(endpoint.address, creds, options=options)


def _is_retryable(err: grpc.RpcError) -> bool:
    code = err.code() if hasattr(err, "code") else None
    if code in RETRYABLE:
        return True
    details = (err.details() if hasattr(err, "details") else "") or ""
    # A reset connection sometimes surfaces as UNKNOWN/INTERNAL rather than UNAVAILABLE.
    return code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL) and any(
        h in details.lower() for h in _RESET_HINTS
    )


class OwnerClient:
    """One owner: `describe`, `ensure_model`, `select`, `ledger`. Thread-safe per call."""

    def __init__(
        self,
        endpoint: OwnerEndpoint,
        settings: ClientSettings | None = None,
        channel: grpc.Channel | None = None,
        sleep: Callable[[float], None] | None = None,
    ):
        self.endpoint = endpoint
        self.settings = settings or ClientSettings()
        self.channel = channel or make_channel(endpoint)
        self.stub = pb_grpc.DataOwnerStub(self.channel)
        self._sleep = sleep or time.sleep  # injectable so tests can record the backoff
        self._metadata = (("authorization", f"Bearer {endpoint.token}"),) if endpoint.token else ()

    @property
    def name(self) -> str:
        return self.endpoint.name

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> OwnerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ retry core

    def _call(self, what: str, fn: Callable[[float], T], request_id: str | None = None) -> T:
        """Run `fn(timeout)` with retries; returns its value and never leaks grpc.RpcError."""
        s = self.settings
        tag = f"owner={self.name}" + (f" request_id={request_id}" if request_id else "")
        for attempt in range(s.retries + 1):
            try:
                return fn(self.endpoint.deadline_seconds)
            except grpc.RpcError as err:
                code = err.code().name if hasattr(err, "code") else "UNKNOWN"
                details = (err.details() if hasattr(err, "details") else str(err)) or ""
                if not _is_retryable(err) or attempt == s.retries:
                    log.warning("%s %s failed: %s: %s", tag, what, code, details)
                    raise OwnerError(self.name, code, details, request_id) from None
                wait = min(s.backoff_max, s.backoff * (2**attempt))
                log.info(
                    "%s %s: %s (%s); retry %d/%d in %.2fs",
                    *(tag, what, code, details, attempt + 1, s.retries, wait),
                )
                self._sleep(wait)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ calls

    def describe(self) -> OwnerInfo:
        r = self._call(
            "Describe",
            lambda t: self.stub.Describe(pb.DescribeRequest(), timeout=t, metadata=self._metadata),
        )
        return OwnerInfo(
            protocol_version=r.protocol_version,
            owner_name=r.owner_name,
            class_names=tuple(r.class_names),
            row_count=int(r.row_count),
            input_shape=tuple(int(s) for s in r.input_shape),
            feature_names=tuple(r.feature_names),
            methods=tuple(r.methods),
            class_counts=tuple(int(c) for c in r.class_counts),
            trainer_id=r.trainer_id,
            budget=BudgetInfo.from_pb(r.budget),
        )

    def has_model(self, sha256: str) -> ModelStatusInfo:
        r = self._call(
            "HasModel",
            lambda t: self.stub.HasModel(
                pb.ModelRef(sha256=sha256), timeout=t, metadata=self._metadata
            ),
        )
        return ModelStatusInfo(r.sha256, bool(r.present), int(r.size))

    def ensure_model(self, model_bytes: bytes, chunk_bytes: int = UPLOAD_CHUNK_BYTES):
        """Upload the model unless the owner already has it. Returns (status, uploaded)."""
        sha = hashlib.sha256(model_bytes).hexdigest()
        status = self.has_model(sha)
        if status.present:
            log.info("owner=%s model %s already present", self.name, sha[:12])
            return status, False

        def chunks() -> Iterator[pb.ModelChunk]:
            # A fresh generator per attempt: a retried stream restarts from the first chunk.
            for i, start in enumerate(range(0, max(1, len(model_bytes)), chunk_bytes)):
                data = model_bytes[start : start + chunk_bytes]
                if i == 0:
                    yield pb.ModelChunk(sha256=sha, total_size=len(model_bytes), data=data)
                else:
                    yield pb.ModelChunk(data=data)

        r = self._call(
            "UploadModel",
            lambda t: self.stub.UploadModel(chunks(), timeout=t, metadata=self._metadata),
        )
        if not r.present or r.sha256 != sha:
            raise OwnerError(self.name, "PROTOCOL", f"upload of model {sha[:12]} not confirmed")
        log.info("owner=%s uploaded model %s (%d bytes)", self.name, sha[:12], len(model_bytes))
        return ModelStatusInfo(r.sha256, True, int(r.size)), True

    def select(self, spec: SelectRequestSpec) -> OwnerSubset:
        request = _select_request(spec)
        attempts = 0

        def once(timeout: float) -> OwnerSubset:
            nonlocal attempts
            attempts += 1
            start = time.perf_counter()
            stream = self.stub.Select(request, timeout=timeout, metadata=self._metadata)
            try:
                subset = _consume(stream, spec, self.name)
            finally:
                stream.cancel()  # no-op when finished; frees the call if we bailed out early
            return OwnerSubset(**{**subset, "attempts": attempts}, seconds=_since(start))

        result = self._call("Select", once, spec.request_id)
        log.info(
            "owner=%s request_id=%s %s budget=%d: %d rows (%d new%s) in %.2fs",
            *(self.name, spec.request_id, spec.method, spec.budget, len(result)),
            *(result.summary.new_rows_charged, ", replayed" if result.summary.replayed else ""),
            result.seconds,
        )
        return result

    def ledger(self) -> LedgerInfo:
        r = self._call(
            "GetLedger",
            lambda t: self.stub.GetLedger(pb.LedgerRequest(), timeout=t, metadata=self._metadata),
        )
        return LedgerInfo(
            trainer_id=r.trainer_id,
            budget=BudgetInfo.from_pb(r.budget),
            entries=tuple(
                LedgerEntryInfo(e.request_id, e.method, int(e.rows), int(e.new_rows), e.timestamp)
                for e in r.entries
            ),
        )


def _since(start: float) -> float:
    return time.perf_counter() - start


def _select_request(spec: SelectRequestSpec) -> pb.SelectRequest:
    request = pb.SelectRequest(
        request_id=spec.request_id,
        method=spec.method,
        budget=spec.budget,
        model_sha256=spec.model_sha256,
        seed=spec.seed,
        params=dict(spec.params),
    )
    hard = spec.hard
    if isinstance(hard, RawHard):
        request.raw.CopyFrom(
            pb.RawHardSet(features=wire.encode(hard.features), labels=wire.encode(hard.labels))
        )
    else:
        request.embedded.CopyFrom(
            pb.EmbeddedHardSet(
                embeddings=wire.encode(hard.embeddings),
                gradients=wire.encode(hard.gradients),
                labels=wire.encode(hard.labels),
            )
        )
    return request


def _consume(stream, spec: SelectRequestSpec, owner: str) -> dict:
    """Decode a Select stream; fail with a PROTOCOL OwnerError on anything inconsistent."""

    def bad(problem: str) -> OwnerError:
        return OwnerError(owner, "PROTOCOL", problem, spec.request_id)

    parts: dict[str, list[np.ndarray]] = {"features": [], "labels": [], "row_ids": [], "scores": []}
    summary: pb.SelectSummary | None = None
    try:
        for chunk in stream:
            kind = chunk.WhichOneof("payload")
            if summary is not None:
                raise bad("data after the summary")
            if kind == "summary":
                summary = chunk.summary
            elif kind == "rows":
                rows = chunk.rows
                feats = wire.decode(
                    rows.features, "rows.features", dtype="float32", max_bytes=MAX_SUBSET_BYTES
                )
                k = feats.shape[0] if feats.ndim else -1
                cols = {
                    "labels": wire.decode(rows.labels, "rows.labels", dtype="int64", ndim=1),
                    "row_ids": wire.decode(rows.row_ids, "rows.row_ids", dtype="int64", ndim=1),
                    "scores": wire.decode(rows.scores, "rows.scores", dtype="float32", ndim=1),
                }
                if any(len(v) != k for v in cols.values()):
                    raise bad("a rows chunk has columns of different lengths")
                if parts["features"] and feats.shape[1:] != parts["features"][0].shape[1:]:
                    raise bad("row chunks have different feature shapes")
                parts["features"].append(feats)
                for key, value in cols.items():
                    parts[key].append(value)
            else:
                raise bad("empty stream message")
    except InvalidRequest as exc:
        raise bad(str(exc)) from None
    if summary is None:
        raise bad("stream ended without a summary")
    n = sum(len(x) for x in parts["labels"])
    if summary.rows_sent != n:
        raise bad(f"summary says {summary.rows_sent} rows, received {n}")
    if n > spec.budget:
        raise bad(f"received {n} rows for a budget of {spec.budget}")
    if summary.request_id and summary.request_id != spec.request_id:
        raise bad(f"summary answers request {summary.request_id!r}")
    arrays = {
        key: np.concatenate(vals) if vals else np.zeros(0, dtype)
        for (key, vals), dtype in zip(parts.items(), _DTYPES, strict=True)
    }
    if len(np.unique(arrays["row_ids"])) != n:
        raise bad("duplicate row ids in the selection")
    info = SelectSummaryInfo(
        request_id=summary.request_id or spec.request_id,
        rows_sent=int(summary.rows_sent),
        new_rows_charged=int(summary.new_rows_charged),
        replayed=bool(summary.replayed),
        budget=BudgetInfo.from_pb(summary.budget),
        timings={k: float(v) for k, v in summary.timings.items()},
        missing_classes=tuple(int(c) for c in summary.missing_classes),
        shortfall_reason=summary.shortfall_reason,
    )
    return {**arrays, "summary": info}
