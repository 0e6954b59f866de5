"""Tensors on the wire: dtype + shape + raw little-endian bytes. Never pickles.

This is the byte-level codec: tensors and the rows chunks of a Select stream, both ways.
Every other message <-> dataclass conversion is in `mycroft.serde`.

`decode` validates everything a hostile peer could get wrong (unknown dtype, negative or
huge shape, byte count that does not match) and raises InvalidRequest naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from mycroft.errors import InvalidRequest
from mycroft.protocol import CHUNK_BYTES, DEFAULT_MAX_REQUEST_BYTES
from mycroft.v1 import owner_pb2 as pb

# Only plain numeric dtypes cross the wire; object or structured dtypes could smuggle code.
ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)
MAX_NDIM = 8
MAX_DIM = 1 << 31  # an empty tensor of shape [0, 2**62] holds no bytes but breaks numpy


def encode(array: np.ndarray) -> pb.Tensor:
    return encode_into(pb.Tensor(), array)


def encode_into(target: pb.Tensor, array: np.ndarray) -> pb.Tensor:
    """Fill `target` (e.g. a field of a message being built) in place and return it.

    Streams build each chunk this way: passing sub-messages as constructor arguments
    (`RowsChunk(features=encode(x))`) deep-copies their bytes once per nesting level.
    """
    array = np.asarray(array)
    if array.dtype.name not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {array.dtype} cannot be sent")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    target.dtype = array.dtype.name
    target.shape[:] = array.shape
    target.data = np.ascontiguousarray(little).tobytes()
    return target


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tensor_parts(array: np.ndarray) -> tuple[bytes, memoryview | bytes, int]:
    """A Tensor message as (header, data, size): the header holds the dtype, the packed shape
    and the data field's tag and length; `data` is the array's own memory (no copy yet)."""
    array = np.asarray(array)
    if array.dtype.name not in ALLOWED_DTYPES:
        raise ValueError(f"dtype {array.dtype} cannot be sent")
    little = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    data = memoryview(little.reshape(-1).view(np.uint8))
    name = array.dtype.name.encode()
    head = b"\x0a" + _varint(len(name)) + name  # field 1, dtype
    if array.ndim:  # field 2, packed varints; proto3 omits empty repeated fields
        packed = b"".join(_varint(int(d)) for d in array.shape)
        head += b"\x12" + _varint(len(packed)) + packed
    if len(data):  # field 3; proto3 omits empty bytes
        head += b"\x1a" + _varint(len(data))
    else:
        data = b""
    return head, data, len(head) + len(data)


def encode_rows_chunk(
    features: np.ndarray, labels: np.ndarray, row_ids: np.ndarray, scores: np.ndarray
) -> bytes:
    """The serialized `SelectChunk(rows=RowsChunk(...))`, built with a single copy of the data.

    Byte-identical to filling the message with `encode_into` and calling SerializeToString,
    which copies every tensor's bytes three times (numpy -> bytes -> protobuf field -> wire).
    Streams send it through a pass-through serializer (`owner_node.rpc.add_servicer`).
    """
    pieces: list[bytes | memoryview] = []
    rows_size = 0
    tensors = (features, labels, row_ids, scores)
    for field_tag, array in zip(b"\x0a\x12\x1a\x22", tensors, strict=True):  # fields 1-4
        head, data, size = _tensor_parts(array)
        tensor_head = bytes((field_tag,)) + _varint(size)
        pieces += [tensor_head, head, data]
        rows_size += len(tensor_head) + size
    return b"".join([b"\x0a" + _varint(rows_size), *pieces])  # SelectChunk field 1, rows


def decode(
    tensor: pb.Tensor,
    field: str,
    *,
    dtype: str | None = None,
    ndim: int | None = None,
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    finite: bool = False,
) -> np.ndarray:
    """The array in `tensor`, or InvalidRequest naming `field` and what is wrong."""
    if not tensor.dtype:
        raise InvalidRequest(field, "missing tensor")
    if tensor.dtype not in ALLOWED_DTYPES:
        raise InvalidRequest(field, f"dtype {tensor.dtype!r} is not allowed")
    if dtype is not None and tensor.dtype != dtype:
        raise InvalidRequest(field, f"dtype must be {dtype}, got {tensor.dtype}")
    shape = tuple(int(s) for s in tensor.shape)
    if ndim is not None and len(shape) != ndim:
        raise InvalidRequest(field, f"must have {ndim} dimensions, got shape {list(shape)}")
    if len(shape) > MAX_NDIM:
        raise InvalidRequest(field, f"{len(shape)} dimensions; at most {MAX_NDIM} are allowed")
    if any(s < 0 for s in shape):
        raise InvalidRequest(field, f"negative dimension in shape {list(shape)}")
    if any(s > MAX_DIM for s in shape):
        raise InvalidRequest(field, f"dimension above {MAX_DIM} in shape {list(shape)}")
    itemsize = np.dtype(tensor.dtype).itemsize
    expected = math.prod(shape) * itemsize
    if expected > max_bytes:
        raise InvalidRequest(field, f"{expected} bytes exceeds the limit of {max_bytes}")
    if len(tensor.data) != expected:
        raise InvalidRequest(
            field,
            f"shape {list(shape)} of {tensor.dtype} needs {expected} bytes, got {len(tensor.data)}",
        )
    array = np.frombuffer(tensor.data, dtype=np.dtype(tensor.dtype).newbyteorder("<"))
    array = array.astype(np.dtype(tensor.dtype), copy=True).reshape(shape)
    if finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidRequest(field, "contains NaN or infinity")
    return array


def decode_rows_chunk(
    rows: pb.RowsChunk, max_bytes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, row_ids, scores) of one chunk, each checked like `decode`; `max_bytes`
    bounds the features. Whether the columns agree in length is the caller's to check."""
    return (
        decode(rows.features, "rows.features", dtype="float32", max_bytes=max_bytes),
        decode(rows.labels, "rows.labels", dtype="int64", ndim=1),
        decode(rows.row_ids, "rows.row_ids", dtype="int64", ndim=1),
        decode(rows.scores, "rows.scores", dtype="float32", ndim=1),
    )


def row_chunks(n_rows: int, bytes_per_row: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[slice]:
    """Slices of rows so that each chunk stays under `chunk_bytes` (at least one row each)."""
    step = max(1, chunk_bytes // max(1, bytes_per_row))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))
