"""gRPC plumbing for the owner's servicer: errors to status codes, tolerant decoding, the
handler registration, and waiting for work within a call's deadline.

Every error becomes a status with a readable message (`STATUS`); anything unexpected becomes
INTERNAL with a short message and is logged with the trainer and request id, never sent to the
client as a traceback.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from mycroft import logs
from mycroft.errors import DataError, InvalidRequest, ModelFileError, MycroftError
from mycroft.v1 import owner_pb2 as pb
from owner_node import errors
from owner_node.watchdog import Watchdog

if TYPE_CHECKING:
    from owner_node.metrics import OwnerMetrics

log = logging.getLogger("owner_node.service")
T = TypeVar("T")
SERVICE = pb.DESCRIPTOR.services_by_name["DataOwner"].full_name  # "mycroft.v1.DataOwner"


class Deadline(MycroftError):
    def __init__(self) -> None:
        super().__init__("deadline exceeded while selecting; retry with the same request_id")


STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Deadline, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelFileError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (errors.ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.RequestConflict, grpc.StatusCode.ALREADY_EXISTS),
    (errors.BudgetExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.QueryAllowanceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DiskQuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.RequestTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Busy, grpc.StatusCode.UNAVAILABLE),
    (errors.StreamStalled, grpc.StatusCode.CANCELLED),
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


def tolerant(message_cls: type) -> Callable[[bytes], object]:
    def deserialize(data: bytes) -> object:
        try:
            return message_cls.FromString(data)
        except DecodeError as e:
            return Malformed(f"{message_cls.DESCRIPTOR.name}: {e}")

    return deserialize


def refuse_malformed(servicer: Any, request: object, context) -> None:
    """Malformed request bytes: INVALID_ARGUMENT, after authenticating the caller."""
    if isinstance(request, Malformed):
        servicer.auth.identify(context)
        raise InvalidRequest("request", f"not a valid protobuf message ({request.error})")


def pre_encoded(message: object) -> bytes:
    """Select's response serializer: chunks arrive already serialized (`wire.encode_rows_chunk`)
    and pass through without another copy; a message object is serialized as usual."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()  # type: ignore[attr-defined]


def add_servicer(
    servicer: Any, server: grpc.Server, watchdog: Watchdog, waits: RequestWaits
) -> None:
    """`add_DataOwnerServicer_to_server` with deserializers that never raise, Select's
    pre-encoded chunks passed through (the generated registration would reject bytes), and
    unary methods that wait for their request under the watchdog (`first_request`)."""
    kinds = {
        "Describe": (False, pb.DescribeRequest, pb.DescribeResponse),
        "HasModel": (False, pb.ModelRef, pb.ModelStatus),
        "UploadModel": (True, pb.ModelChunk, pb.ModelStatus),
        "GetLedger": (False, pb.LedgerRequest, pb.LedgerResponse),
    }
    handlers = {
        name: grpc.stream_unary_rpc_method_handler(
            getattr(servicer, name)
            if streaming
            else first_request(getattr(servicer, name), watchdog, waits, name),
            request_deserializer=tolerant(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
        for name, (streaming, request_cls, response_cls) in kinds.items()
    }
    handlers["Select"] = grpc.stream_stream_rpc_method_handler(
        servicer.Select,
        request_deserializer=tolerant(pb.SelectRequestChunk),
        response_serializer=pre_encoded,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class CallObserver(grpc.ServerInterceptor):
    """Every call: the owner's name on its log lines (`mycroft.logs`; gRPC runs each call,
    this interceptor included, in a context of its own) and, with `metrics`, each DataOwner
    call timed and its final status counted (refusals, whichever code path set them)."""

    def __init__(self, owner_name: str, metrics: OwnerMetrics | None = None):
        self.owner_name = owner_name
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        logs.bind(owner=self.owner_name)
        handler = continuation(handler_call_details)
        service, _, method = handler_call_details.method.lstrip("/").partition("/")
        if handler is None or self.metrics is None or service != SERVICE:
            return handler
        return _timed(handler, method, self.metrics)


_HANDLER_KINDS = {  # (request streaming, response streaming) -> (attribute, factory)
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _timed(handler: grpc.RpcMethodHandler, method: str, metrics: OwnerMetrics):
    """`handler` with its behavior timed, to the last streamed message, and its code counted."""
    attribute, factory = _HANDLER_KINDS[(handler.request_streaming, handler.response_streaming)]
    behavior = getattr(handler, attribute)

    def unary(request, context):
        started = time.perf_counter()
        try:
            response = behavior(request, context)
        except BaseException:
            metrics.rpc_ended(method, _code(context, failed=True), time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started
        metrics.rpc_ended(method, _code(context, failed=False), seconds, response)
        return response

    def streamed(request, context):
        started = time.perf_counter()
        code = grpc.StatusCode.CANCELLED  # closed before its end: the client went away
        try:
            yield from behavior(request, context)
            code = _code(context, failed=False)
        except GeneratorExit:
            raise
        except BaseException:
            code = _code(context, failed=True)
            raise
        finally:
            metrics.rpc_ended(method, code, time.perf_counter() - started)

    wrapped = streamed if handler.response_streaming else unary
    # Where a behavior names its own thread pool (the health check's), keep it.
    pool = getattr(behavior, "experimental_thread_pool", None)
    wrapped.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """The call's status as it ends: set by `abort`, else OK (UNKNOWN for a raw exception,
    which is what gRPC answers then)."""
    code = context.code()
    if code is not None:
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class RequestWaits:
    """Calls waiting for their request message, and how long each may wait.

    A real client sends a unary request together with the call, so a wait is normally a few
    milliseconds. The first `patient` waiters get `idle` seconds; while that many are waiting,
    a new waiter gets `hurried` seconds, so calls that never send their request hold at most
    `patient` threads for long, however many are opened."""

    def __init__(self, idle: float, patient: int, hurried: float = 0.25):
        self.idle = idle
        self.patient = patient
        self.hurried = min(hurried, idle)
        self._waiting = 0
        self._lock = threading.Lock()

    def begin(self) -> float:
        with self._lock:
            self._waiting += 1
            return self.idle if self._waiting <= self.patient else self.hurried

    def end(self) -> None:
        with self._lock:
            self._waiting -= 1


def first_request(
    behavior: Callable[[Any, Any], T], watchdog: Watchdog, waits: RequestWaits, name: str
) -> Callable[[Iterator[Any], Any], T | None]:
    """A unary method served as client-streaming: gRPC's unary handler waits for the request
    on a handler thread with no time limit, so a client that opens a call and never sends its
    request would hold that thread. Here the wait is bounded (`RequestWaits`) and enforced by
    the watchdog; on the wire the call is the same for a unary client."""

    def handler(requests: Iterator[Any], context: grpc.ServicerContext) -> T | None:
        limit = waits.begin()
        try:
            with watchdog.watch(context, f"{name} request", limit) as watch:
                request = next(requests, None)
        except grpc.RpcError:
            if watch.expired:
                context.abort(grpc.StatusCode.CANCELLED, f"no request: {watch.expired}")
            raise
        finally:
            waits.end()
        if request is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: no request message")
        return behavior(request, context)

    # Where set (the health check's own pool), the threads this handler runs on.
    pool = getattr(behavior, "experimental_thread_pool", None)
    handler.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return handler


def unary(method: Callable) -> Callable:
    """Map exceptions of a unary/client-streaming RPC to status codes."""

    @functools.wraps(method)
    def wrapper(self: Any, request, context: grpc.ServicerContext):
        try:
            refuse_malformed(self, request, context)
            return method(self, request, context)
        except Exception as e:  # noqa: BLE001 - every error must become a status
            abort(context, e, method.__name__, "-")

    return wrapper


class _RefusalLog:
    """Refusals (UNAVAILABLE, UNAUTHENTICATED) can come by the hundred per second in a flood:
    one line per RPC and code per second, with how many were folded into it."""

    CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED})

    def __init__(self, period: float = 1.0):
        self.period = period
        self._last: dict[tuple[str, grpc.StatusCode], float] = {}
        self._folded: dict[tuple[str, grpc.StatusCode], int] = {}
        self._lock = threading.Lock()

    def due(self, rpc: str, code: grpc.StatusCode) -> int | None:
        """None: fold this one into the next line; else how many were folded before it."""
        if code not in self.CODES:
            return 0
        key, now = (rpc, code), time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.period) < self.period:
                self._folded[key] = self._folded.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._folded.pop(key, 0)


_refusals = _RefusalLog()


def abort(
    context: grpc.ServicerContext, e: Exception, rpc: str, request_id: str, trainer: str = "-"
) -> None:
    ids = {"trainer_id": trainer, "request_id": request_id}  # JSON log fields ("-": unknown)
    for cls, code in STATUS:
        if isinstance(e, cls):
            folded = _refusals.due(rpc, code)
            if folded is not None:
                more = f" (+{folded} more like it in the last second)" if folded else ""
                log.info(
                    "%s trainer=%s request=%s -> %s: %s%s",
                    *(rpc, trainer, request_id, code.name, e, more),
                    extra=ids,
                )
            context.abort(code, str(e))
    log.exception(
        "%s trainer=%s request=%s failed unexpectedly", rpc, trainer, request_id, extra=ids
    )
    context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in {rpc} (request {request_id}); the owner's log has details",
    )


def wait_event(event: threading.Event, context) -> bool:
    """Wait for another attempt of the same request within the call's deadline; False if the
    client went away."""
    while not event.wait(0.25):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise Deadline()
        if not context.is_active():
            return False
    return True


def wait_for(future: Future[T], context) -> T | None:
    """Wait for a selection within the call's deadline; None if the client went away. A job
    still in the queue is cancelled then; a running one finishes and its answer is dropped."""
    while True:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            future.cancel()
            raise Deadline()
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
