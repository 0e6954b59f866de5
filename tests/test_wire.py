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


def _built(features, labels, row_ids, scores) -> pb.SelectChunk:
    """The chunk as the protobuf API builds it, for comparison with the hand encoder."""
    chunk = pb.SelectChunk()
    for field, array in zip(
        ("features", "labels", "row_ids", "scores"),
        (features, labels, row_ids, scores),
        strict=True,
    ):
        wire.encode_into(getattr(chunk.rows, field), array)
    return chunk


@pytest.mark.parametrize(
    "k, row_shape, dtype",
    [
        (0, (784,), "float32"),  # empty chunk: empty data fields are omitted, shape [0, 784]
        (1, (784,), "float32"),
        (333, (1, 28, 28), "float32"),  # 1 MiB chunk of image rows
        (200, (3, 4), ">f8"),  # big-endian input goes out little-endian
        (17, (), "uint8"),
        (5, (130,), "bool"),
        (300, (2,), "int16"),
    ],
)
def test_hand_encoded_rows_chunk_is_the_protobuf_message(k, row_shape, dtype):
    rng = np.random.default_rng(k)
    features = (rng.random((k, *row_shape)) * 100).astype(dtype)
    labels = rng.integers(0, 10, k).astype(np.int64)
    row_ids = rng.integers(0, 2**40, k).astype(np.int64)
    scores = rng.random(k).astype(np.float32)
    data = wire.encode_rows_chunk(features, labels, row_ids, scores)
    expected = _built(features, labels, row_ids, scores)
    parsed = pb.SelectChunk.FromString(data)
    assert parsed.WhichOneof("payload") == "rows"
    assert parsed == expected
    assert data == expected.SerializeToString()
    np.testing.assert_array_equal(wire.decode(parsed.rows.features, "f"), features)
    np.testing.assert_array_equal(wire.decode(parsed.rows.row_ids, "r"), row_ids)


def test_hand_encoder_refuses_what_encode_refuses():
    ids = np.zeros(2, np.int64)
    with pytest.raises(ValueError, match="cannot be sent"):
        wire.encode_rows_chunk(np.zeros(2, dtype=object), ids, ids, np.zeros(2, np.float32))


def test_select_serializer_passes_bytes_through_and_serializes_messages():
    from owner_node.rpc import pre_encoded

    summary = pb.SelectChunk(
        summary=pb.SelectSummary(
            request_id="r", rows_sent=3, budget=pb.Budget(cap=5, used=3, left=2), timings={"a": 1.0}
        )
    )
    chunk = wire.encode_rows_chunk(*(np.arange(3, dtype=np.int64),) * 3, np.ones(3, np.float32))
    assert pre_encoded(chunk) is chunk  # no copy
    assert pb.SelectChunk.FromString(pre_encoded(summary.SerializeToString())) == summary
    assert pb.SelectChunk.FromString(pre_encoded(summary)) == summary
