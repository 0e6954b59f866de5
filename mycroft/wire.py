"""Tensors on the wire: dtype + shape + raw little-endian bytes. Never pickles.

`decode` validates everything a hostile peer could get wrong (unknown dtype, negative or
huge shape, byte count that does not match) and raises InvalidRequest naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from mycroft.errors import InvalidRequest
from mycroft.v1 import owner_pb2 as pb

# Only plain numeric dtypes cross the wire; object or structured dtypes could smuggle code.
ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_NDIM = 8
MAX_DIM = 1 << 31  # an empty tensor of shape [0, 2**62] holds no bytes but breaks numpy
CHUNK_BYTES = 1024 * 1024  # well below gRPC's 4 MiB default message limit


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


def decode(
    tensor: pb.Tensor,
    field: str,
    *,
    dtype: str | None = None,
    ndim: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
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


def row_chunks(n_rows: int, bytes_per_row: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[slice]:
    """Slices of rows so that each chunk stays under `chunk_bytes` (at least one row each)."""
    step = max(1, chunk_bytes // max(1, bytes_per_row))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))
