"""Fixed bugs found by the hardening fuzz, pinned as plain examples.

Both used to answer INTERNAL: bytes that are not a protobuf message (gRPC's own deserializer
raised), and a model file whose JSON nests deeper than Python's recursion limit.
"""

from __future__ import annotations

import json
import struct

import grpc
import pytest
from helpers_grpc import TOKENS, OwnerClient, digits_data, owner_config, running_owner

UNDECODABLE = b"\xff\xff\xff"  # a truncated varint: no protobuf parser accepts it


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    with running_owner(owner_config(tmp_path_factory.mktemp("reg")), digits_data()) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running[1]}") as channel:
            yield running[0], channel


@pytest.mark.parametrize("method", ["Describe", "HasModel", "GetLedger", "Select", "UploadModel"])
@pytest.mark.parametrize(
    ("token", "code"),
    [
        (TOKENS["alice"], grpc.StatusCode.INVALID_ARGUMENT),
        (None, grpc.StatusCode.UNAUTHENTICATED),  # still authenticated first
    ],
)
def test_undecodable_request_bytes(owner, method: str, token, code) -> None:
    _, channel = owner
    path = f"/mycroft.v1.DataOwner/{method}"
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with pytest.raises(grpc.RpcError) as e:
        if method == "Select":
            list(channel.unary_stream(path)(UNDECODABLE, metadata=metadata, timeout=10))
        elif method == "UploadModel":
            channel.stream_unary(path)(iter([UNDECODABLE]), metadata=metadata, timeout=10)
        else:
            channel.unary_unary(path)(UNDECODABLE, metadata=metadata, timeout=10)
    assert e.value.code() == code, e.value.details()


@pytest.mark.parametrize("where", ["header", "config"])
def test_deeply_nested_model_json_is_invalid_argument(owner, where: str) -> None:
    server, channel = owner
    nest = "[" * 50_000 + "]" * 50_000
    if where == "header":
        head = ('{"x":' + nest + "}").encode()
    else:
        meta = {"format": "mycroft-moe", "format_version": "1", "mycroft_config": nest}
        head = json.dumps({"__metadata__": meta}).encode()
    head += b" " * (-len(head) % 8)
    blob = struct.pack("<Q", len(head)) + head
    with pytest.raises(grpc.RpcError) as e:
        OwnerClient.of(channel, "alice").upload(blob)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nested too deeply" in e.value.details()
    assert not list(server.engine.models.dir.glob("*.safetensors"))
