"""Select's request as a stream of chunks: D_hard has no message ceiling, the owner's one limit
([limits] max_request_bytes, told in Describe) is named when hit, and a bad or stalled request
stream costs nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from helpers_grpc import (
    TOKENS,
    OwnerClient,
    bearer,
    digits_data,
    owner_config,
    raw_request,
    request_chunks,
    running_owner,
    status_of,
    tiny_model_bytes,
)
from helpers_hardening import wait_until

from moe.io import model_sha256
from mycroft import serde
from mycroft.messages import EmbeddedHard, SelectRequestSpec
from mycroft.protocol import MiB
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc
from trainer_node.client import OwnerClient as TrainerClient
from trainer_node.client import OwnerError
from trainer_node.config import ClientSettings, OwnerEndpoint

EMBED_DIM = 128
CLASSES = 10
ROW_BYTES = 4 * (EMBED_DIM + CLASSES * (EMBED_DIM + 1)) + 8  # embedding, gradients, label
HARD_ROWS = 50 * MiB // ROW_BYTES + 16  # a D_hard just over 50 MiB


@pytest.fixture(scope="module")
def digits():
    return digits_data()


@pytest.fixture(scope="module")
def model(digits) -> bytes:
    return tiny_model_bytes(digits, embed_dim=EMBED_DIM)


def _embedded_hard(rows: int, seed: int = 0) -> EmbeddedHard:
    rng = np.random.default_rng(seed)
    return EmbeddedHard(
        embeddings=rng.standard_normal((rows, EMBED_DIM), dtype=np.float32),
        gradients=rng.standard_normal((rows, CLASSES * (EMBED_DIM + 1)), dtype=np.float32),
        labels=rng.integers(0, CLASSES, rows).astype(np.int64),
    )


def _trainer_client(port: int, token_of: str = "alice") -> TrainerClient:
    endpoint = OwnerEndpoint(
        name="o1", address=f"127.0.0.1:{port}", token=TOKENS[token_of], deadline_seconds=120
    )
    return TrainerClient(endpoint, ClientSettings(retries=0))


def test_a_50_mib_d_hard_goes_through_end_to_end(tmp_path, digits, model):
    hard = _embedded_hard(HARD_ROWS)
    config = owner_config(tmp_path, limits={"max_hard_rows": HARD_ROWS})
    with running_owner(config, digits) as (_, port), _trainer_client(port) as client:
        info = client.describe()
        assert info.max_request_bytes == 64 * MiB  # the owner's limit, told to the trainer
        client.ensure_model(model)
        spec = SelectRequestSpec("big-1", "feature", 12, model_sha256(model), hard)
        assert serde.select_request_to_proto(spec).ByteSize() > 50 * MiB
        subset = client.select(spec)
        assert len(subset) == 12 and subset.summary.new_rows_charged == 12
        assert client.ledger().budget.used == 12


def test_a_request_over_the_owners_limit_is_refused_naming_the_limit(tmp_path, digits, model):
    hard = _embedded_hard(2000)  # about 10.8 MiB
    config = owner_config(tmp_path, limits={"max_request_bytes": 8 * MiB})
    with running_owner(config, digits) as (_, port):
        spec = SelectRequestSpec("big-2", "feature", 4, model_sha256(model), hard)
        with _trainer_client(port) as client:
            client.ensure_model(model)
            # Without Describe the trainer does not know the limit: the owner refuses unread.
            with pytest.raises(OwnerError) as refused:
                client.select(spec)
            assert refused.value.code == "RESOURCE_EXHAUSTED"
            assert "8.0 MiB" in refused.value.message
            assert "max_request_bytes" in refused.value.message
            # After Describe it says so itself, before sending a byte.
            client.describe()
            with pytest.raises(OwnerError) as local:
                client.select(spec)
            assert local.value.code == "RESOURCE_EXHAUSTED"
            assert "over the owner's limit of 8.0 MiB" in local.value.message
            assert "2000 rows" in local.value.message
            assert client.ledger().budget.used == 0 and client.ledger().budget.queries_used == 1


def _held(
    chunks: list[pb.SelectRequestChunk], release: threading.Event
) -> Iterator[pb.SelectRequestChunk]:
    """A request stream that sends `chunks`, then holds the call open until `release`."""
    yield from chunks
    release.wait(30)


def _held_call(port: int, chunks: list[pb.SelectRequestChunk], trainer: str = "alice"):
    """(status, details, seconds) of a Select whose request stream stops after `chunks`."""
    release = threading.Event()
    start = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.DataOwnerStub(channel)
        call = stub.Select(_held(chunks, release), metadata=bearer(trainer), timeout=20)
        try:
            with pytest.raises(grpc.RpcError) as err:
                list(call)
        finally:
            release.set()
    code, details = status_of(err)
    return code, details, time.monotonic() - start


def _request(digits, rid: str = "r1") -> pb.SelectRequest:
    hard = digits.features[:8].reshape(8, -1)
    return raw_request(rid, "random", 4, "0" * 64, hard, digits.labels[:8])


def test_an_announced_size_over_the_limit_is_refused_before_the_rest_arrives(tmp_path, digits):
    config = owner_config(tmp_path, limits={"max_request_bytes": 4 * MiB})
    with running_owner(config, digits) as (_, port):
        first = pb.SelectRequestChunk(total_size=100 * MiB, data=b"\x0a\x02r1")
        code, details, seconds = _held_call(port, [first])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "100.0 MiB exceeds this owner's limit of 4.0 MiB" in details
        assert seconds < 10  # answered without waiting for the other 100 MiB


def test_an_unknown_caller_is_refused_before_its_request_is_read(tmp_path, digits):
    with running_owner(owner_config(tmp_path), digits) as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            release = threading.Event()
            held = _held([pb.SelectRequestChunk(total_size=MiB, data=b"x" * 1024)], release)
            metadata = (("authorization", "Bearer not-a-known-token-0123456789"),)
            call = pb_grpc.DataOwnerStub(channel).Select(held, metadata=metadata, timeout=20)
            try:
                with pytest.raises(grpc.RpcError) as err:
                    list(call)
            finally:
                release.set()
        assert status_of(err)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_a_request_stream_that_stalls_is_cancelled_and_costs_nothing(tmp_path, digits):
    config = owner_config(tmp_path, owner={"stream_idle_seconds": 1.0})
    with running_owner(config, digits) as (server, port):
        chunks = list(request_chunks(_request(digits)))
        whole = b"".join(c.data for c in chunks)
        half = [pb.SelectRequestChunk(total_size=len(whole), data=whole[: len(whole) // 2])]
        code, details, seconds = _held_call(port, half)
        assert code == grpc.StatusCode.CANCELLED, details  # the watchdog cut the call
        assert seconds < 15
        # The place is given back as the handler ends, which may be just after the client saw it.
        assert wait_until(lambda: server.engine.scheduler.places.in_use() == 0, 10)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ledger = OwnerClient.of(channel, "alice").ledger()
        assert ledger.budget.used == 0 and ledger.budget.queries_used == 0


def _malformed(digits) -> dict[str, tuple[list[pb.SelectRequestChunk], str]]:
    whole = _request(digits).SerializeToString()
    n = len(whole)
    return {
        "no size": ([pb.SelectRequestChunk(data=whole)], "total_size"),
        "short": ([pb.SelectRequestChunk(total_size=n + 5, data=whole)], f"after {n} of {n + 5}"),
        "long": ([pb.SelectRequestChunk(total_size=n - 5, data=whole)], "more than the"),
        "size twice": (
            [
                pb.SelectRequestChunk(total_size=n, data=whole[:10]),
                pb.SelectRequestChunk(total_size=n, data=whole[10:]),
            ],
            "only the first chunk",
        ),
        "empty": ([], "before its first chunk"),
        "not a request": ([pb.SelectRequestChunk(total_size=3, data=b"\xff\xff\xff")], "valid"),
    }


@pytest.mark.parametrize(
    "kind", ["no size", "short", "long", "size twice", "empty", "not a request"]
)
def test_a_malformed_request_stream_is_invalid_argument_and_uncharged(tmp_path, digits, kind):
    chunks, words = _malformed(digits)[kind]
    with running_owner(owner_config(tmp_path), digits) as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DataOwnerStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Select(iter(chunks), metadata=bearer("alice"), timeout=20))
            code, details = status_of(err)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
            ledger = OwnerClient.of(channel, "alice").ledger()
        assert ledger.budget.used == 0 and ledger.budget.queries_used == 0
