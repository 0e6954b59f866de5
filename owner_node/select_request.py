"""Checking a wire SelectRequest into a plain `SelectJob`, against the owner's limits.

Unlike the plain conversions in `mycroft.serde`, this is the owner's input validation: the
tensors are decoded (`mycroft.wire`) under the owner's size limits, field by field.

This layer checks everything that does not need the owner's data or the model (sizes, dtypes,
ranks, finiteness, bounds); the engine then checks the fit to the model. Every problem is an
InvalidRequest naming the request field, which the service returns as INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from mycroft import wire
from mycroft.errors import InvalidRequest
from mycroft.protocol import MiB
from mycroft.v1 import owner_pb2 as pb
from owner_node.config import LimitsSection
from owner_node.errors import RequestTooLarge
from owner_node.ledger import request_fingerprint

# Printable ASCII without spaces: request ids end up in logs and the audit table.
_REQUEST_ID_RE = re.compile(r"^[\x21-\x7e]+$")


@dataclass
class SelectJob:
    """One checked Select call, independent of gRPC."""

    request_id: str
    method: str
    rows_wanted: int  # the request's `budget` field: rows for this one Select
    model_sha256: str
    labels: np.ndarray  # (M,) int64
    raw_features: np.ndarray | None = None  # raw mode: (M, *input_shape) float32
    embeddings: np.ndarray | None = None  # embedded mode: (M, d) float32
    gradients: np.ndarray | None = None  # embedded mode: (M, C*(d+1)) float32
    seed: int = 0
    params: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""  # digest of every parameter except request_id
    # Rows the trainer says it holds, distinct. As parsed, any ids; the service keeps only those
    # already revealed to the trainer before the engine sees the job (service `_compute`).
    exclude_row_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def mode(self) -> str:
        return "raw" if self.raw_features is not None else "embedded"


def read_select_request(chunks: Iterable[object], max_bytes: int) -> pb.SelectRequest:
    """Select's request stream put back together. The first chunk's announced size is checked
    against `max_bytes` before anything else is read, and the stream must carry exactly that.
    `chunks` may hold `rpc.Malformed` stand-ins for undecodable messages."""
    buffer: bytearray | None = None
    total = 0
    for chunk in chunks:
        if not isinstance(chunk, pb.SelectRequestChunk):
            raise InvalidRequest("request", f"not a valid protobuf message ({chunk.error})")
        if buffer is None:
            total = chunk.total_size
            if total < 1:
                raise InvalidRequest("total_size", "the first chunk must give the request's size")
            if total > max_bytes:
                raise RequestTooLarge(
                    f"a Select request of {total / MiB:.1f} MiB exceeds this owner's limit of "
                    f"{max_bytes / MiB:.1f} MiB ([limits] max_request_bytes); send fewer D_hard "
                    "rows, or ask the owner to raise its limit"
                )
            buffer = bytearray()
        elif chunk.total_size:
            raise InvalidRequest("total_size", "only the first chunk gives the size")
        if len(buffer) + len(chunk.data) > total:
            raise InvalidRequest("data", f"more than the {total} bytes the first chunk announced")
        buffer += chunk.data
    if buffer is None:
        raise InvalidRequest("request", "the stream ended before its first chunk")
    if len(buffer) != total:
        raise InvalidRequest("data", f"the stream ended after {len(buffer)} of {total} bytes")
    try:
        return pb.SelectRequest.FromString(bytes(buffer))
    except DecodeError as exc:
        raise InvalidRequest("request", f"not a valid SelectRequest ({exc})") from None


def parse_select(
    request: pb.SelectRequest,
    limits: LimitsSection,
    max_rows: int | None = None,
    max_exclude: int | None = None,
) -> SelectJob:
    """`max_rows` (budget.max_rows_per_request) tightens limits.max_budget when given;
    `max_exclude` (the trainer's cap of distinct rows) bounds `exclude_row_ids`."""
    rid = request.request_id
    if not rid:
        raise InvalidRequest("request_id", "required: a client-chosen id, reused on retries")
    if len(rid) > limits.max_request_id_chars:
        raise InvalidRequest("request_id", f"longer than {limits.max_request_id_chars} characters")
    if not _REQUEST_ID_RE.match(rid):
        raise InvalidRequest("request_id", "only printable ASCII without spaces is allowed")
    if not request.method:
        raise InvalidRequest("method", "required (see Describe for the methods offered)")
    if request.budget < 1:
        raise InvalidRequest("budget", f"must be >= 1, got {request.budget}")
    most = min(limits.max_budget, max_rows or limits.max_budget)
    if request.budget > most:
        raise InvalidRequest("budget", f"{request.budget} exceeds the limit of {most} per request")
    params = _params(request, limits)
    exclude = _exclusion(request, max_exclude)
    mb = limits.max_request_bytes
    which = request.WhichOneof("hard_set")
    if which is None:
        raise InvalidRequest("hard_set", "required: either raw rows or embeddings")
    if which == "raw":
        raw = request.raw
        feats = wire.decode(raw.features, "hard_set.raw.features", dtype="float32", max_bytes=mb)
        if feats.ndim < 2:
            raise InvalidRequest(
                "hard_set.raw.features", f"must be (M, *input_shape), got {list(feats.shape)}"
            )
        labels = _labels(raw.labels, "hard_set.raw.labels", len(feats), mb)
        _finite(feats, "hard_set.raw.features")
        hard: dict[str, np.ndarray | None] = {"raw_features": feats}
    else:
        emb_msg = request.embedded

        def matrix(name: str) -> np.ndarray | None:
            if not emb_msg.HasField(name):
                return None
            return wire.decode(
                getattr(emb_msg, name),
                f"hard_set.embedded.{name}",
                dtype="float32",
                ndim=2,
                max_bytes=mb,
                finite=True,
            )

        emb, grads = matrix("embeddings"), matrix("gradients")
        for name, arr in (("embeddings", emb), ("gradients", grads)):
            if arr is not None and arr.size and np.abs(arr).max() > limits.max_abs_hard_value:
                raise InvalidRequest(
                    f"hard_set.embedded.{name}",
                    f"values must lie within ±{limits.max_abs_hard_value:.0e}",
                )
        if emb is None and grads is None:
            raise InvalidRequest("hard_set.embedded", "needs embeddings and/or gradients")
        n = len(emb) if emb is not None else len(grads)  # type: ignore[arg-type]
        if emb is not None and grads is not None and len(grads) != len(emb):
            raise InvalidRequest(
                "hard_set.embedded.gradients", f"{len(grads)} rows but {len(emb)} embeddings"
            )
        if emb is not None and emb.shape[1] > limits.max_embed_dim:
            raise InvalidRequest(
                "hard_set.embedded.embeddings",
                f"dim {emb.shape[1]} exceeds the limit of {limits.max_embed_dim}",
            )
        labels = _labels(emb_msg.labels, "hard_set.embedded.labels", n, mb)
        hard = {"embeddings": emb, "gradients": grads}
    job = SelectJob(rid, request.method, int(request.budget), request.model_sha256, labels, **hard)
    if len(job.labels) == 0:
        raise InvalidRequest(f"hard_set.{which}.labels", "D_hard is empty")
    if len(job.labels) > limits.max_hard_rows:
        raise InvalidRequest(
            f"hard_set.{which}.labels",
            f"{len(job.labels)} D_hard rows exceed the limit of {limits.max_hard_rows}",
        )
    if request.seed < 0:
        raise InvalidRequest("seed", f"must be >= 0, got {request.seed}")
    job.seed = int(request.seed)
    job.params = params
    job.exclude_row_ids = exclude
    job.fingerprint = fingerprint(request)  # covers exclude_row_ids: a changed retry is refused
    return job


def fingerprint(request: pb.SelectRequest) -> str:
    """Digest of the request minus its id; deterministic serialisation sorts the params map."""
    copy = pb.SelectRequest()
    copy.CopyFrom(request)
    copy.request_id = ""
    return request_fingerprint(copy.SerializeToString(deterministic=True))


def _exclusion(request: pb.SelectRequest, max_exclude: int | None) -> np.ndarray:
    """The distinct ids of `exclude_row_ids`. The trainer can hold at most its cap of distinct
    rows, so a longer list is a mistake (or an attempt to make the owner do needless work)."""
    n = len(request.exclude_row_ids)
    if max_exclude is not None and n > max_exclude:
        raise InvalidRequest(
            "exclude_row_ids",
            f"{n} ids, more than the {max_exclude} distinct rows this trainer may ever hold",
        )
    return np.unique(np.fromiter(request.exclude_row_ids, dtype=np.int64, count=n))


def _labels(tensor: pb.Tensor, name: str, n: int, max_bytes: int) -> np.ndarray:
    labels = wire.decode(tensor, name, dtype="int64", ndim=1, max_bytes=max_bytes)
    if len(labels) != n:
        raise InvalidRequest(name, f"{len(labels)} labels for {n} D_hard rows")
    return labels


def _finite(array: np.ndarray, name: str) -> None:
    if not np.isfinite(array).all():
        raise InvalidRequest(name, "contains NaN or infinity")


def _params(request: pb.SelectRequest, limits: LimitsSection) -> dict[str, float]:
    if len(request.params) > limits.max_params:
        raise InvalidRequest("params", f"more than {limits.max_params} parameters")
    out: dict[str, float] = {}
    for key, value in request.params.items():
        if not key.isidentifier() or key.startswith("_"):
            raise InvalidRequest(f"params.{key}", "not a valid parameter name")
        if not math.isfinite(value):
            raise InvalidRequest(f"params.{key}", "must be finite")
        out[key] = float(value)
    return out
