"""The DataOwner gRPC servicer: small methods over Engine, Ledger and Authenticator.

Every RPC authenticates first. Errors become status codes with readable messages (see
`_STATUS`); anything unexpected becomes INTERNAL with a short message and is logged here with
the trainer and request id, never sent to the client as a traceback.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from mycroft import wire
from mycroft.errors import DataError, InvalidRequest, ModelFileError, MycroftError
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc
from owner_node import errors
from owner_node.auth import Authenticator, Caller
from owner_node.engine import PROTOCOL_VERSION, Engine
from owner_node.ledger import BudgetState, ChargeResult, Ledger, QueryGrant
from owner_node.models import check_sha
from owner_node.requests import SelectJob, parse_select
from selection.base import SelectionResult

log = logging.getLogger("owner_node.service")


class _Deadline(MycroftError):
    def __init__(self) -> None:
        super().__init__("deadline exceeded while selecting; retry with the same request_id")


_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (_Deadline, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelFileError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RequestConflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.BudgetExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.QueryAllowanceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Busy, grpc.StatusCode.UNAVAILABLE),
    (errors.SelectionFailed, grpc.StatusCode.INTERNAL),
    (DataError, grpc.StatusCode.FAILED_PRECONDITION),
    (MycroftError, grpc.StatusCode.FAILED_PRECONDITION),
)


class Malformed:
    """Stands in for request bytes that are not a valid protobuf message.

    gRPC answers INTERNAL when a deserializer raises; decoding tolerantly lets the servicer
    answer INVALID_ARGUMENT instead (after authenticating the caller, like any request).
    """

    def __init__(self, error: str):
        self.error = error


def _tolerant(message_cls: type) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return message_cls.FromString(data)
        except DecodeError as e:
            return Malformed(f"{message_cls.DESCRIPTOR.name}: {e}")

    return deserialize


def _refuse_malformed(self: OwnerServicer, request: object, context) -> None:
    if isinstance(request, Malformed):
        self.auth.identify(context)
        raise InvalidRequest("request", f"not a valid protobuf message ({request.error})")


def _pre_encoded(message: object) -> bytes:
    """Select's response serializer: chunks arrive already serialized (`wire.encode_rows_chunk`)
    and pass through without another copy; a message object is serialized as usual."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()  # type: ignore[attr-defined]


def add_servicer(servicer: OwnerServicer, server: grpc.Server) -> None:
    """`add_DataOwnerServicer_to_server` with deserializers that never raise, and Select's
    pre-encoded chunks passed through (the generated registration would reject bytes)."""
    kinds = {
        "Describe": (grpc.unary_unary_rpc_method_handler, pb.DescribeRequest, pb.DescribeResponse),
        "HasModel": (grpc.unary_unary_rpc_method_handler, pb.ModelRef, pb.ModelStatus),
        "UploadModel": (grpc.stream_unary_rpc_method_handler, pb.ModelChunk, pb.ModelStatus),
        "Select": (grpc.unary_stream_rpc_method_handler, pb.SelectRequest, pb.SelectChunk),
        "GetLedger": (grpc.unary_unary_rpc_method_handler, pb.LedgerRequest, pb.LedgerResponse),
    }
    handlers = {
        name: make(
            getattr(servicer, name),
            request_deserializer=_tolerant(request_cls),
            response_serializer=_pre_encoded
            if name == "Select"
            else response_cls.SerializeToString,
        )
        for name, (make, request_cls, response_cls) in kinds.items()
    }
    service = pb.DESCRIPTOR.services_by_name["DataOwner"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def _rpc(method: Callable) -> Callable:
    """Map exceptions of a unary/client-streaming RPC to status codes."""

    @functools.wraps(method)
    def wrapper(self: OwnerServicer, request, context: grpc.ServicerContext):
        try:
            _refuse_malformed(self, request, context)
            return method(self, request, context)
        except Exception as e:  # noqa: BLE001 - every error must become a status
            _abort(context, e, method.__name__, "-")

    return wrapper


def _abort(
    context: grpc.ServicerContext, e: Exception, rpc: str, request_id: str, trainer: str = "-"
) -> None:
    for cls, code in _STATUS:
        if isinstance(e, cls):
            log.info("%s trainer=%s request=%s -> %s: %s", rpc, trainer, request_id, code.name, e)
            context.abort(code, str(e))
    log.exception("%s trainer=%s request=%s failed unexpectedly", rpc, trainer, request_id)
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in {rpc} (request {request_id}); the owner's log has details",
    )


class OwnerServicer(pb_grpc.DataOwnerServicer):
    def __init__(self, engine: Engine, ledger: Ledger, auth: Authenticator):
        self.engine = engine
        self.ledger = ledger
        self.auth = auth
        self.limits = engine.config.limits
        self.max_rows = engine.config.budget.max_rows_per_request
        # (trainer, request id) -> set when that request's attempt ends: a retry racing the
        # original waits and replays it instead of computing (and paying) again.
        self._in_flight: dict[tuple[str, str], threading.Event] = {}
        self._in_flight_lock = threading.Lock()

    @_rpc
    def Describe(self, request: pb.DescribeRequest, context) -> pb.DescribeResponse:
        caller = self.auth.identify(context)
        info = self.engine.info()
        return pb.DescribeResponse(
            protocol_version=PROTOCOL_VERSION,
            owner_name=info.name,
            class_names=info.class_names,
            row_count=info.row_count,
            input_shape=info.input_shape,
            feature_names=info.feature_names,
            methods=info.methods,
            class_counts=info.class_counts,
            trainer_id=caller.trainer_id,
            budget=_budget(self.ledger.budget(caller.trainer_id)),
        )

    @_rpc
    def HasModel(self, request: pb.ModelRef, context) -> pb.ModelStatus:
        caller = self.auth.identify(context)
        sha = check_sha(request.sha256)
        size = self.engine.models.size(caller.trainer_id, sha)
        return pb.ModelStatus(sha256=sha, present=size is not None, size=size or 0)

    @_rpc
    def UploadModel(self, request_iterator: Iterable[pb.ModelChunk], context) -> pb.ModelStatus:
        caller = self.auth.identify(context)
        trainer = caller.trainer_id
        if self.ledger.budget(trainer).queries_left == 0:
            # The warm-up after an upload is a query: refuse before reading any bytes.
            raise errors.QueryAllowanceExhausted(
                f"trainer {trainer!r} has used its whole query allowance; a model upload "
                "needs one query (its warm-up embeds the owner's rows)"
            )
        upload = None
        try:
            for chunk in request_iterator:
                _refuse_malformed(self, chunk, context)
                if upload is None:
                    upload = self.engine.models.begin_upload(
                        trainer, chunk.sha256, chunk.total_size
                    )
                elif (chunk.sha256 and chunk.sha256 != upload.sha) or (
                    chunk.total_size and chunk.total_size != upload.total_size
                ):
                    raise InvalidRequest("sha256", "later chunks must not change sha256/size")
                upload.add(chunk.data)
            if upload is None:
                raise InvalidRequest("sha256", "empty upload: the first chunk names the model")
            known = self.engine.models.size(trainer, upload.sha) is not None
            loaded = upload.finish()
        finally:
            if upload is not None:
                upload.abort()
        if not known:  # a model new to this trainer: its warm-up is charged as one query
            grant = self.ledger.begin_query(
                trainer, f"upload:{upload.sha}", kind="warm", method="", rows=0
            )
            self.ledger.end_query(grant)
            self.engine.warm(loaded)
        log.info(
            "upload trainer=%s model=%s bytes=%d",
            caller.trainer_id,
            upload.sha[:12],
            upload.total_size,
        )
        return pb.ModelStatus(sha256=upload.sha, present=True, size=upload.total_size)

    @_rpc
    def GetLedger(self, request: pb.LedgerRequest, context) -> pb.LedgerResponse:
        caller = self.auth.identify(context)
        if request.trainer_id and request.trainer_id != caller.trainer_id:
            raise errors.PermissionDenied("a trainer may read only its own ledger")
        entries = self.ledger.entries(caller.trainer_id)
        return pb.LedgerResponse(
            trainer_id=caller.trainer_id,
            budget=_budget(self.ledger.budget(caller.trainer_id)),
            entries=[
                pb.LedgerEntry(
                    request_id=e.request_id,
                    method=e.method,
                    rows=e.rows,
                    new_rows=e.new_rows,
                    timestamp=e.timestamp,
                )
                for e in entries
            ],
        )

    def Select(self, request: pb.SelectRequest, context) -> Iterator[bytes]:
        """Streams serialized SelectChunk messages (see `_pre_encoded`)."""
        who = "-"
        rid = "-"
        try:
            _refuse_malformed(self, request, context)
            rid = _printable(request.request_id[: self.limits.max_request_id_chars]) or "-"
            caller = self.auth.identify(context)
            who = caller.trainer_id
            started = time.perf_counter()
            job = parse_select(request, self.limits, self.max_rows)
            charge, result = self._select(caller, job, context)
            if charge is None:
                return  # the client went away before anything was charged
            log.info(
                "select trainer=%s request=%s method=%s mode=%s rows=%d new=%d replayed=%s "
                "left=%d queries_left=%d took=%.3fs timings=%s",
                caller.trainer_id,
                rid,
                job.method,
                job.mode,
                len(charge.row_ids),
                charge.new_rows,
                charge.replayed,
                charge.budget.left,
                charge.budget.queries_left,
                time.perf_counter() - started,
                _rounded(result.timings) if result is not None else {},
            )
            yield from self._stream(job, charge, started)
        except Exception as e:  # noqa: BLE001 - every error must become a status
            _abort(context, e, "Select", rid, who)

    def _select(
        self, caller: Caller, job: SelectJob, context
    ) -> tuple[ChargeResult | None, SelectionResult | None]:
        """Replay, or: check, take a slot, charge the query, compute, charge the rows."""
        trainer = caller.trainer_id
        key = (trainer, job.request_id)
        while True:
            replay = self.ledger.replay(
                trainer, job.request_id, job.method, job.budget, job.fingerprint
            )
            if replay is not None:
                return replay, None
            with self._in_flight_lock:
                running = self._in_flight.get(key)
                if running is None:
                    mine = self._in_flight[key] = threading.Event()
                    break
            if not _wait_event(running, context):
                return None, None
        try:
            return self._compute(trainer, job, context)
        finally:
            with self._in_flight_lock:
                del self._in_flight[key]
            mine.set()

    def _compute(
        self, trainer: str, job: SelectJob, context
    ) -> tuple[ChargeResult | None, SelectionResult | None]:
        strategy, loaded = self.engine.check(job, trainer)
        self.engine.reserve_slot()
        try:
            grant = self.ledger.begin_query(
                trainer, job.request_id, kind="select", method=job.method, rows=job.budget
            )
        except BaseException:
            self.engine.release_slot()
            raise
        try:
            future = self.engine.start(job, strategy, loaded, grant.rows, trainer)
            try:
                result = _wait(future, context)
            finally:
                if future.cancelled():  # it never left the queue: nothing was computed
                    self.ledger.refund_query(grant)
            if result is None:
                return None, None
            return self._charge(trainer, job, grant, result), result
        finally:
            self.ledger.end_query(grant)

    def _charge(
        self, trainer: str, job: SelectJob, grant: QueryGrant, result: SelectionResult
    ) -> ChargeResult:
        t = time.perf_counter()
        charge = self.ledger.charge(
            trainer,
            job.request_id,
            job.method,
            result.row_ids,
            result.scores,
            budget=job.budget,
            fingerprint=job.fingerprint,
            note={
                "missing_classes": [int(c) for c in result.missing_classes],
                "shortfall_reason": _shortfall(result, job.budget, grant),
            },
        )
        result.timings["charge"] = time.perf_counter() - t
        if charge.cut:  # cannot happen: the grant reserved the rows; never tell the trainer
            log.error("request %s: %d rows cut despite the reservation", job.request_id, charge.cut)
        return charge

    def _stream(self, job: SelectJob, charge: ChargeResult, started: float) -> Iterator[bytes]:
        features, labels = self.engine.rows(charge.row_ids)
        per_row = int(np.prod(self.engine.data.input_shape)) * features.dtype.itemsize + 20
        for part in wire.row_chunks(len(charge.row_ids), per_row):
            # Serialized by hand with one copy of the rows' bytes; a protobuf message would
            # copy them three times (tobytes, into the field, SerializeToString).
            yield wire.encode_rows_chunk(
                features[part],
                labels[part].astype(np.int64, copy=False),
                charge.row_ids[part],
                charge.scores[part],
            )
        note = charge.note
        # Only the total: per-step times (index build, OMP steps) depend on the owner's rows in
        # ways the trainer did not pay for; they stay in the owner's log.
        yield pb.SelectChunk(
            summary=pb.SelectSummary(
                request_id=job.request_id,
                rows_sent=len(charge.row_ids),
                new_rows_charged=charge.new_rows,
                replayed=charge.replayed,
                budget=_budget(charge.budget),
                timings={"total": time.perf_counter() - started},
                missing_classes=note.get("missing_classes", []),
                shortfall_reason=note.get("shortfall_reason") or "",
            )
        ).SerializeToString()


def _wait_event(event: threading.Event, context) -> bool:
    """Wait for another attempt of the same request within the call's deadline; False if the
    client went away."""
    while not event.wait(0.25):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise _Deadline()
        if not context.is_active():
            return False
    return True


def _wait(future: Future[SelectionResult], context) -> SelectionResult | None:
    """Wait for a selection within the call's deadline; None if the client went away. A job
    still in the queue is cancelled then; a running one finishes and its answer is dropped."""
    while True:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            future.cancel()
            raise _Deadline()
        if not context.is_active():
            future.cancel()
            return None
        step = 0.25 if remaining is None else min(0.25, remaining)
        try:
            return future.result(timeout=step)
        except FutureTimeout:
            continue
        except CancelledError:
            return None


def _shortfall(result: SelectionResult, budget: int, grant: QueryGrant) -> str:
    """Why fewer rows than asked. Only facts the trainer already has or was just given: its own
    budget, and how many rows came back; nothing about rows that did not."""
    if grant.rows < budget and len(result.row_ids) == grant.rows:
        return f"budget cap: {grant.rows} of the trainer's rows were left for this request"
    if len(result.row_ids) < min(budget, grant.rows):
        return result.shortfall_reason or (
            f"the method returned {len(result.row_ids)} of {budget} rows"
        )
    return ""


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in timings.items()}


def _printable(text: str) -> str:
    """Request ids go into log lines: no control characters from the network."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _budget(state: BudgetState) -> pb.Budget:
    return pb.Budget(
        cap=state.cap,
        used=state.used,
        left=state.left,
        queries=state.queries,
        queries_used=state.queries_used,
        queries_left=state.queries_left,
    )
