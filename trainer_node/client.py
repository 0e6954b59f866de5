"""A small client for one data owner: channel, auth, deadlines, retries, stream decoding.

Retries reuse the same request id: the owner answers a retried Select with the same rows and no
new charge, so a flaky network never costs budget. Statuses that a retry cannot fix
(UNAUTHENTICATED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...) fail at once. Nothing from the
network is unpickled: tensors arrive as dtype + shape + bytes and are validated by `wire.decode`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from mycroft import serde, wire
from mycroft.errors import InvalidRequest, MycroftError
from mycroft.messages import LedgerInfo, ModelStatusInfo, OwnerInfo, SelectRequestSpec
from mycroft.protocol import CHUNK_BYTES, MAX_ANSWER_MESSAGE_BYTES, MAX_REQUEST_MESSAGE_BYTES, MiB
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc
from trainer_node.config import ClientSettings, OwnerEndpoint
from trainer_node.messages import OwnerSubset

__all__ = ["OwnerClient", "OwnerError", "make_channel"]  # message types: mycroft.messages

log = logging.getLogger("mycroft.trainer.client")

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
        # The same bounds as the owner's (mycroft.protocol): large payloads go in chunks.
        ("grpc.max_receive_message_length", MAX_ANSWER_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_REQUEST_MESSAGE_BYTES),
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
        self._jitter = random.Random()  # per client: trainers must not retry in step
        # The owner's limit on a Select request, once Describe has told it (0: not known).
        self.max_request_bytes = 0
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
                wait = self._backoff(attempt)
                log.info(
                    "%s %s: %s (%s); retry %d/%d in %.2fs",
                    *(tag, what, code, details, attempt + 1, s.retries, wait),
                )
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff, capped, with its `jitter` share drawn at random."""
        s = self.settings
        ceiling = min(s.backoff_max, s.backoff * (2**attempt))
        return ceiling * (1.0 - s.jitter * self._jitter.random())

    # ------------------------------------------------------------ calls

    def _unary(self, method: str, request: Message | Callable[[], Any]) -> Any:
        """The stub's `method` with retries. A callable `request` is called per attempt (a
        stream's generator must restart from its first message on a retry)."""
        call = getattr(self.stub, method)

        def once(timeout: float) -> Any:
            sent = request() if callable(request) else request
            return call(sent, timeout=timeout, metadata=self._metadata)

        return self._call(method, once)

    def describe(self) -> OwnerInfo:
        info = serde.owner_info_from_proto(self._unary("Describe", pb.DescribeRequest()))
        self.max_request_bytes = info.max_request_bytes
        return info

    def has_model(self, sha256: str) -> ModelStatusInfo:
        reply = self._unary("HasModel", pb.ModelRef(sha256=sha256))
        return serde.model_status_from_proto(reply)

    def ensure_model(
        self, model_bytes: bytes, chunk_bytes: int = CHUNK_BYTES
    ) -> tuple[ModelStatusInfo, bool]:
        """Upload the model unless the owner already has it. Returns (status, uploaded)."""
        sha = hashlib.sha256(model_bytes).hexdigest()
        status = self.has_model(sha)
        if status.present:
            log.info("owner=%s model %s already present", self.name, sha[:12])
            return status, False

        reply = self._unary(
            "UploadModel", lambda: serde.model_chunks(model_bytes, sha, chunk_bytes)
        )
        if not reply.present or reply.sha256 != sha:
            raise OwnerError(self.name, "PROTOCOL", f"upload of model {sha[:12]} not confirmed")
        log.info("owner=%s uploaded model %s (%d bytes)", self.name, sha[:12], len(model_bytes))
        return serde.model_status_from_proto(reply), True

    def select(self, spec: SelectRequestSpec) -> OwnerSubset:
        request = serde.select_request_to_proto(spec).SerializeToString()
        limit = self.max_request_bytes
        if limit and len(request) > limit:  # the owner would refuse it unread: say why here
            raise OwnerError(
                self.name,
                "RESOURCE_EXHAUSTED",
                f"this Select request is {len(request) / MiB:.1f} MiB (D_hard of "
                f"{len(spec.hard.labels)} rows), over the owner's limit of {limit / MiB:.1f} MiB "
                "(its [limits] max_request_bytes); share fewer D_hard rows ([dhard] "
                "shared_fraction or classes) or ask the owner to raise its limit",
                spec.request_id,
            )
        attempts = 0

        def once(timeout: float) -> OwnerSubset:
            nonlocal attempts
            attempts += 1
            start = time.perf_counter()
            stream = self.stub.Select(
                serde.select_request_chunks(request), timeout=timeout, metadata=self._metadata
            )
            try:
                subset = _consume(stream, spec, self.name)
            finally:
                stream.cancel()  # no-op when finished; frees the call if we bailed out early
            return OwnerSubset(**{**subset, "attempts": attempts}, seconds=_since(start))

        result = self._call("Select", once, spec.request_id)
        log.info(
            "owner=%s request_id=%s %s budget=%d: %d rows (%d new%s) in %.2fs",
            *(self.name, spec.request_id, spec.method, spec.rows_wanted, len(result)),
            *(result.summary.new_rows_charged, ", replayed" if result.summary.replayed else ""),
            result.seconds,
        )
        return result

    def ledger(self) -> LedgerInfo:
        return serde.ledger_from_proto(self._unary("GetLedger", pb.LedgerRequest()))


def _since(start: float) -> float:
    return time.perf_counter() - start


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
                feats, labels, row_ids, scores = wire.decode_rows_chunk(
                    chunk.rows, MAX_SUBSET_BYTES
                )
                k = feats.shape[0] if feats.ndim else -1
                cols = {"labels": labels, "row_ids": row_ids, "scores": scores}
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
    if n > spec.rows_wanted:
        raise bad(f"received {n} rows for a budget of {spec.rows_wanted}")
    if summary.request_id and summary.request_id != spec.request_id:
        raise bad(f"summary answers request {summary.request_id!r}")
    arrays = {
        key: np.concatenate(vals) if vals else np.zeros(0, dtype)
        for (key, vals), dtype in zip(parts.items(), _DTYPES, strict=True)
    }
    if len(np.unique(arrays["row_ids"])) != n:
        raise bad("duplicate row ids in the selection")
    info = serde.summary_from_proto(summary)
    info = dataclasses.replace(info, request_id=info.request_id or spec.request_id)
    return {**arrays, "summary": info}
