"""Every protobuf message <-> `mycroft.messages` dataclass conversion, in one place (Flower's
`serde` pattern): `x_to_proto` builds the wire message, `x_from_proto` reads it back.

Tensors and the rows chunks of a Select stream are `mycroft.wire`'s job (a byte-level codec);
checking a Select request against the owner's limits is the owner's
(`owner_node.select_request`). Both nodes import this module; it imports neither node.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, TypeVar

from google.protobuf.message import Message

from mycroft import wire
from mycroft.messages import (
    Allowance,
    LedgerEntry,
    LedgerInfo,
    ModelStatusInfo,
    OwnerInfo,
    RawHard,
    SelectRequestSpec,
    SelectSummaryInfo,
)
from mycroft.protocol import CHUNK_BYTES
from mycroft.v1 import owner_pb2 as pb

M = TypeVar("M", bound=Message)


def _to_proto(value: Any, message_type: type[M], **sub_messages: Message) -> M:
    """`message_type` filled from the dataclass `value`: the messages' dataclasses name their
    fields as the wire does, so only sub-messages need converting (passed by name)."""
    fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return message_type(**{**fields, **sub_messages})


def allowance_to_proto(allowance: Allowance) -> pb.Budget:
    return _to_proto(allowance, pb.Budget)


def allowance_from_proto(message: pb.Budget) -> Allowance:
    return Allowance(*(int(getattr(message, f.name)) for f in dataclasses.fields(Allowance)))


def owner_info_to_proto(info: OwnerInfo) -> pb.DescribeResponse:
    return _to_proto(info, pb.DescribeResponse, budget=allowance_to_proto(info.budget))


def owner_info_from_proto(message: pb.DescribeResponse) -> OwnerInfo:
    return OwnerInfo(
        protocol_version=message.protocol_version,
        owner_name=message.owner_name,
        class_names=tuple(message.class_names),
        row_count=int(message.row_count),
        input_shape=tuple(int(s) for s in message.input_shape),
        feature_names=tuple(message.feature_names),
        methods=tuple(message.methods),
        class_counts=tuple(int(c) for c in message.class_counts),
        trainer_id=message.trainer_id,
        budget=allowance_from_proto(message.budget),
        max_request_bytes=int(message.max_request_bytes),
    )


def model_status_to_proto(status: ModelStatusInfo) -> pb.ModelStatus:
    return _to_proto(status, pb.ModelStatus)


def model_status_from_proto(message: pb.ModelStatus) -> ModelStatusInfo:
    return ModelStatusInfo(message.sha256, bool(message.present), int(message.size))


def _pieces(payload: bytes, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(index, bytes) of consecutive pieces; an empty payload is one empty piece."""
    view = memoryview(payload)
    for i, start in enumerate(range(0, max(1, len(view)), chunk_bytes)):
        yield i, bytes(view[start : start + chunk_bytes])


def model_chunks(
    model_bytes: bytes, sha256: str, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[pb.ModelChunk]:
    """An upload: the first chunk names the model and its size, the rest carry only bytes."""
    for i, data in _pieces(model_bytes, chunk_bytes):
        if i == 0:
            yield pb.ModelChunk(sha256=sha256, total_size=len(model_bytes), data=data)
        else:
            yield pb.ModelChunk(data=data)


def select_request_chunks(
    request_bytes: bytes, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[pb.SelectRequestChunk]:
    """A serialized SelectRequest as Select's request stream: the first chunk says the total."""
    for i, data in _pieces(request_bytes, chunk_bytes):
        yield pb.SelectRequestChunk(total_size=len(request_bytes) if i == 0 else 0, data=data)


def ledger_to_proto(ledger: LedgerInfo) -> pb.LedgerResponse:
    return pb.LedgerResponse(
        trainer_id=ledger.trainer_id,
        budget=allowance_to_proto(ledger.budget),
        entries=[_to_proto(e, pb.LedgerEntry) for e in ledger.entries],
    )


def ledger_from_proto(message: pb.LedgerResponse) -> LedgerInfo:
    return LedgerInfo(
        trainer_id=message.trainer_id,
        budget=allowance_from_proto(message.budget),
        entries=tuple(
            LedgerEntry(e.request_id, e.method, int(e.rows), int(e.new_rows), e.timestamp)
            for e in message.entries
        ),
    )


def select_request_to_proto(spec: SelectRequestSpec) -> pb.SelectRequest:
    request = pb.SelectRequest(
        request_id=spec.request_id,
        method=spec.method,
        budget=spec.rows_wanted,
        model_sha256=spec.model_sha256,
        seed=spec.seed,
        params=dict(spec.params),
        exclude_row_ids=[int(i) for i in spec.exclude_row_ids],
    )
    hard = spec.hard
    if isinstance(hard, RawHard):
        wire.encode_into(request.raw.features, hard.features)
        wire.encode_into(request.raw.labels, hard.labels)
    else:
        wire.encode_into(request.embedded.embeddings, hard.embeddings)
        wire.encode_into(request.embedded.gradients, hard.gradients)
        wire.encode_into(request.embedded.labels, hard.labels)
    return request


def summary_to_proto(summary: SelectSummaryInfo) -> pb.SelectSummary:
    return _to_proto(summary, pb.SelectSummary, budget=allowance_to_proto(summary.budget))


def summary_from_proto(message: pb.SelectSummary) -> SelectSummaryInfo:
    return SelectSummaryInfo(
        request_id=message.request_id,
        rows_sent=int(message.rows_sent),
        new_rows_charged=int(message.new_rows_charged),
        replayed=bool(message.replayed),
        budget=allowance_from_proto(message.budget),
        timings={k: float(v) for k, v in message.timings.items()},
        missing_classes=tuple(int(c) for c in message.missing_classes),
        shortfall_reason=message.shortfall_reason,
    )
