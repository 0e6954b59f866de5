"""The DataOwner gRPC servicer: small methods over Engine, Ledger and Authenticator.

Every RPC authenticates first. Errors become status codes with readable messages (`rpc.STATUS`);
anything unexpected becomes INTERNAL with a short message, never a traceback.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np

from mycroft import logs, serde, wire
from mycroft.errors import InvalidRequest
from mycroft.messages import LedgerInfo, ModelStatusInfo, SelectSummaryInfo
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc
from owner_node import errors, rpc
from owner_node.auth import Authenticator, Caller
from owner_node.engine import Engine
from owner_node.ledger import ChargeResult, Ledger, QueryGrant
from owner_node.limits import Limiter, Place
from owner_node.models import LoadedModel, check_sha
from owner_node.select_request import SelectJob, parse_select, read_select_request
from owner_node.upload import Upload
from owner_node.watchdog import Watchdog
from selection.base import SelectionResult

log = logging.getLogger("owner_node.service")
T = TypeVar("T")


class OwnerServicer(pb_grpc.DataOwnerServicer):
    def __init__(self, engine: Engine, ledger: Ledger, auth: Authenticator, watchdog: Watchdog):
        self.engine = engine
        self.ledger = ledger
        self.auth = auth
        self.watchdog = watchdog
        self.limits = engine.config.limits
        self.max_rows = engine.config.budget.max_rows_per_request
        owner = engine.config.owner
        self.uploads = Limiter("model uploads", owner.max_uploads, owner.max_uploads_per_trainer)
        self.idle = owner.stream_idle_seconds
        self.upload_seconds = owner.upload_seconds
        # (trainer, request id) -> set when that request's attempt ends: a retry racing the
        # original waits and replays it instead of computing (and paying) again.
        self._in_flight: dict[tuple[str, str], threading.Event] = {}
        self._in_flight_lock = threading.Lock()

    @rpc.unary
    def Describe(self, request: pb.DescribeRequest, context) -> pb.DescribeResponse:
        trainer = self.auth.identify(context).trainer_id
        info = dataclasses.replace(
            self.engine.info(), trainer_id=trainer, budget=self.ledger.budget(trainer)
        )
        return serde.owner_info_to_proto(info)

    @rpc.unary
    def HasModel(self, request: pb.ModelRef, context) -> pb.ModelStatus:
        caller = self.auth.identify(context)
        sha = check_sha(request.sha256)
        size = self.engine.models.size(caller.trainer_id, sha)
        return serde.model_status_to_proto(ModelStatusInfo(sha, size is not None, size or 0))

    @rpc.unary
    def UploadModel(self, request_iterator: Iterable[pb.ModelChunk], context) -> pb.ModelStatus:
        caller = self.auth.identify(context)
        trainer = caller.trainer_id
        # Before any byte is read: a place among uploads, and one in the work queue for the
        # warm-up (UNAVAILABLE when either is full, the cheapest refusal, so it comes first).
        with self.uploads.take(trainer):
            place = self.engine.reserve(trainer)
            try:
                if self.ledger.budget(trainer).queries_left == 0:
                    # The warm-up after an upload is a query: refuse before reading any bytes.
                    raise errors.QueryAllowanceExhausted(
                        f"trainer {trainer!r} has used its whole query allowance; a model "
                        "upload needs one query (its warm-up embeds the owner's rows)"
                    )
                upload, loaded, known = self._read_watched(
                    f"upload from {trainer!r}",
                    request_iterator,
                    context,
                    lambda chunks: self._receive(trainer, chunks),
                )
                if not known:  # a model new to this trainer: its warm-up costs one query
                    grant = self.ledger.begin_query(
                        trainer, f"upload:{upload.sha}", kind="warm", method="", rows=0
                    )
                    self.ledger.end_query(grant)
                    self.engine.warm(place, loaded)  # the warm-up job releases the place
                    place = None
            finally:
                if place is not None:
                    place.release()
        log.info("upload trainer=%s model=%s bytes=%d", trainer, upload.sha[:12], upload.total_size)
        return serde.model_status_to_proto(ModelStatusInfo(upload.sha, True, upload.total_size))

    def _read_watched(
        self, what: str, request_iterator: Iterable[Any], context, read: Callable[[Iterable], T]
    ) -> T:
        """`read(chunks)` with the stream under the watchdog: a stalled stream is cancelled."""
        with self.watchdog.watch(context, what, self.idle, self.upload_seconds) as watch:
            try:
                return read(watch.iterate(request_iterator))
            except grpc.RpcError:  # the stream broke: stalled, or the client left
                why = watch.expired or "the client cancelled it"
                raise errors.StreamStalled(f"{what} ended: {why}") from None

    def _receive(
        self, trainer: str, chunks: Iterable[pb.ModelChunk]
    ) -> tuple[Upload, LoadedModel, bool]:
        """Read, verify and store an upload; whether the trainer already had that model."""
        upload = None
        try:
            for chunk in chunks:
                if isinstance(chunk, rpc.Malformed):
                    raise InvalidRequest("request", f"not a valid protobuf message ({chunk.error})")
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
            return upload, upload.finish(), known
        finally:
            if upload is not None:
                upload.abort()

    @rpc.unary
    def GetLedger(self, request: pb.LedgerRequest, context) -> pb.LedgerResponse:
        trainer = self.auth.identify(context).trainer_id
        if request.trainer_id and request.trainer_id != trainer:
            raise errors.PermissionDenied("a trainer may read only its own ledger")
        entries = tuple(self.ledger.entries(trainer))
        ledger = LedgerInfo(trainer, self.ledger.budget(trainer), entries)
        return serde.ledger_to_proto(ledger)

    def Select(self, request_iterator: Iterable[pb.SelectRequestChunk], context) -> Iterator[bytes]:
        """Reads the request's chunks, then streams serialized SelectChunk messages (see
        `rpc.pre_encoded`).

        The whole call, replays and the stream included, holds one place in the work queue:
        the handler threads Selects can hold are bounded, in total and per trainer."""
        who = "-"
        rid = "-"
        place = None
        try:
            caller = self.auth.identify(context)  # before a byte of the request is read
            who = caller.trainer_id
            started = time.perf_counter()
            # UNAVAILABLE before any charge, and before reading D_hard: a refusal is cheap.
            place = self.engine.reserve(caller.trainer_id)
            limit = self.limits.max_request_bytes
            request = self._read_watched(
                f"Select request from {who!r}",
                request_iterator,
                context,
                lambda chunks: read_select_request(chunks, limit),
            )
            rid = _printable(request.request_id[: self.limits.max_request_id_chars]) or "-"
            logs.bind(request_id=rid)  # the rest of this call's log lines name the request
            cap = self.ledger.budget(caller.trainer_id).cap
            job = parse_select(request, self.limits, self.max_rows, max_exclude=cap)
            charge, result = self._select(caller, job, context, place)
            if charge is None:
                return  # the client went away before anything was charged
            log.info(
                "select trainer=%s request=%s method=%s mode=%s rows=%d new=%d replayed=%s "
                "left=%d queries_left=%d took=%.3fs fallback_rows=%d timings=%s",
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
                # rows a strategy's fallback rule added (gradient OMP stopping early): the
                # owner's to see, never sent (answers carry only the total time)
                result.fallback_rows if result is not None else 0,
                _rounded(result.timings) if result is not None else {},
                # structured, for bench/scale_owner.py's per-stage table
                extra={"select_timings": dict(result.timings) if result is not None else {}},
            )
            # A client that stops reading would hold this thread: cancelled when stalled.
            with self.watchdog.watch(context, f"Select stream of {who!r}", self.idle) as watch:
                for chunk in self._stream(job, charge, started):
                    yield chunk
                    watch.touch()
        except Exception as e:  # noqa: BLE001 - every error must become a status
            rpc.abort(context, e, "Select", rid, who)
        finally:
            if place is not None:
                place.release()

    def _select(
        self, caller: Caller, job: SelectJob, context, place: Place
    ) -> tuple[ChargeResult | None, SelectionResult | None]:
        """Replay, or: check, take a slot, charge the query, compute, charge the rows."""
        trainer = caller.trainer_id
        key = (trainer, job.request_id)
        while True:
            replay = self.ledger.replay(
                trainer, job.request_id, job.method, job.rows_wanted, job.fingerprint
            )
            if replay is not None:
                return replay, None
            with self._in_flight_lock:
                running = self._in_flight.get(key)
                if running is None:
                    mine = self._in_flight[key] = threading.Event()
                    break
            if not rpc.wait_event(running, context):
                return None, None
        try:
            return self._compute(trainer, job, context, place)
        finally:
            with self._in_flight_lock:
                del self._in_flight[key]
            mine.set()

    def _compute(
        self, trainer: str, job: SelectJob, context, place: Place
    ) -> tuple[ChargeResult | None, SelectionResult | None]:
        strategy, loaded = self.engine.check(job, trainer)
        # Privacy: only rows this trainer already holds may be excluded. Honouring any other id
        # would let it probe, by excluding, whether unrevealed ids exist or would be picked.
        honoured = self.ledger.revealed_among(trainer, job.exclude_row_ids)
        job = dataclasses.replace(job, exclude_row_ids=honoured)
        grant = self.ledger.begin_query(
            trainer, job.request_id, kind="select", method=job.method, rows=job.rows_wanted
        )
        try:
            future = self.engine.start(place, job, strategy, loaded, grant.rows)
            try:
                result = rpc.wait_for(future, context)
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
            budget=job.rows_wanted,
            fingerprint=job.fingerprint,
            note={
                "missing_classes": [int(c) for c in result.missing_classes],
                "shortfall_reason": _shortfall(result, job.rows_wanted, grant),
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
        summary = SelectSummaryInfo(
            request_id=job.request_id,
            rows_sent=len(charge.row_ids),
            new_rows_charged=charge.new_rows,
            replayed=charge.replayed,
            budget=charge.budget,
            timings={"total": time.perf_counter() - started},
            missing_classes=tuple(note.get("missing_classes", [])),
            shortfall_reason=note.get("shortfall_reason") or "",
        )
        yield pb.SelectChunk(summary=serde.summary_to_proto(summary)).SerializeToString()


def _shortfall(result: SelectionResult, rows_wanted: int, grant: QueryGrant) -> str:
    """Why fewer rows than asked. Only facts the trainer already has or was just given: its own
    allowance, and how many rows came back; nothing about rows that did not."""
    if grant.rows < rows_wanted and len(result.row_ids) == grant.rows:
        return f"budget cap: {grant.rows} of the trainer's rows were left for this request"
    if len(result.row_ids) < min(rows_wanted, grant.rows):
        return result.shortfall_reason or (
            f"the method returned {len(result.row_ids)} of {rows_wanted} rows"
        )
    return ""


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in timings.items()}


def _printable(text: str) -> str:
    """Request ids go into log lines: no control characters from the network."""
    return "".join(c if c.isprintable() else "?" for c in text)
