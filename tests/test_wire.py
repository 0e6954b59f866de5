"""Tensors cross the wire as dtype + shape + bytes; hostile tensors are refused by field."""

import numpy as np
import pytest

from mycroft import wire
from mycroft.errors import InvalidRequest
from mycroft.v1 import owner_pb2 as pb


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "uint8", "bool"])
def test_roundtrip_keeps_dtype_shape_and_values(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 2).astype(dtype)
    back = wire.decode(wire.encode(array), "x")
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_big_endian_input_is_sent_little_endian():
    array = np.arange(5, dtype=">i8")
    np.testing.assert_array_equal(wire.decode(wire.encode(array), "x"), np.arange(5))


@pytest.mark.parametrize(
    "tensor, problem",
    [
        (pb.Tensor(), "missing"),
        (pb.Tensor(dtype="object", shape=[1], data=b"\0" * 8), "not allowed"),
        (pb.Tensor(dtype="float32", shape=[2, 2], data=b"\0" * 15), "needs 16 bytes"),
        (pb.Tensor(dtype="float32", shape=[-1, 4], data=b""), "negative"),
        (pb.Tensor(dtype="float32", shape=[1 << 20, 1 << 20], data=b""), "exceeds"),
        (pb.Tensor(dtype="float32", shape=[0, 1 << 62], data=b""), "dimension above"),
        (pb.Tensor(dtype="float32", shape=[1] * 9, data=b"\0" * 4), "at most 8"),
    ],
)
def test_hostile_tensors_are_refused_naming_the_field(tensor, problem):
    with pytest.raises(InvalidRequest) as err:
        wire.decode(tensor, "hard_set.embeddings")
    assert err.value.field == "hard_set.embeddings"
    assert problem in str(err.value)


def test_expected_dtype_ndim_and_finiteness_are_enforced():
    t = wire.encode(np.array([1.0, np.nan], dtype=np.float32))
    with pytest.raises(InvalidRequest, match="dtype must be int64"):
        wire.decode(t, "labels", dtype="int64")
    with pytest.raises(InvalidRequest, match="2 dimensions"):
        wire.decode(t, "x", ndim=2)
    with pytest.raises(InvalidRequest, match="NaN"):
        wire.decode(t, "x", finite=True)


def test_row_chunks_cover_all_rows_under_the_byte_limit():
    chunks = list(wire.row_chunks(10_000, bytes_per_row=3136, chunk_bytes=1 << 20))
    assert chunks[0].start == 0 and chunks[-1].stop == 10_000
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:], strict=False))
    assert all((c.stop - c.start) * 3136 <= 1 << 20 for c in chunks)
    # A single row larger than the limit still goes, alone.
    assert list(wire.row_chunks(2, bytes_per_row=10, chunk_bytes=4)) == [slice(0, 1), slice(1, 2)]
