"""Hostile input, property-based: malformed Selects, model files and raw bytes at a live owner.

One owner process serves every example (its data lacks class 9, so "classes the owner lacks" is
exercised). Each answer must be success or a proper status; never UNKNOWN or INTERNAL. After a
run the process is alive, health says SERVING, and its RSS (from /proc) grew by a bounded amount.
The default run tries ~300 cases; the slow run 10,000.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from helpers_grpc import TOKENS, OwnerClient, digits_data, raw_request, tiny_model_bytes
from helpers_hardening import OwnerProcess, is_serving, write_owner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mycroft import wire
from mycroft.v1 import owner_pb2 as pb

PROPER = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
RSS_GROWTH_KIB = 256 * 1024  # parsed-model and embedding caches are bounded well below this
BAD_DTYPES = ["", "object", "<f4", "float128", "complex64", "U8", "V16", "float32\x00", "str"]
PARAM_NAMES = [
    "lam", "lam2", "psi_in_pick", "prefilter_min", "prefilter_factor", "batch_size", "workers",
    "flat_threshold", "nprobe", "ivf_storage", "query_batch", "n_bins", "diverse_share", "cache",
]  # fmt: skip
TOKEN_CHOICES = [TOKENS["alice"]] * 6 + [TOKENS["bob"], None, "wrong-token-0123456789abc"]
_fresh = itertools.count()


@dataclass
class Target:
    owner: OwnerProcess = field(repr=False)
    channel: grpc.Channel = field(repr=False)
    sha: str
    model: bytes = field(repr=False)
    methods: list[str]
    codes: Counter = field(default_factory=Counter)


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz-owner")
    digits = digits_data()
    data = digits.subset(np.flatnonzero(digits.labels != 9))  # class 9 exists but has no rows
    config = write_owner(tmp, data, {"alice": 100_000, "bob": 50})
    owner = OwnerProcess(config).start()
    channel = grpc.insecure_channel(owner.address)
    try:
        alice = OwnerClient.of(channel, "alice")
        model = tiny_model_bytes(digits)
        sha = alice.upload(model).sha256
        methods = list(alice.describe().methods)
        hard = digits.subset(np.arange(12))
        for m in methods:  # warm up: torch, the model, owner embeddings, indexes
            alice.select(raw_request(f"warm-{m}", m, 8, sha, hard.features, hard.labels))
        yield Target(owner, channel, sha, model, methods)
    finally:
        channel.close()
        owner.kill()


def _check_alive(t: Target, rss_before: int) -> None:
    assert t.owner.alive(), "the owner process died:\n" + "\n".join(t.owner.log)
    assert is_serving(t.owner.address), "health is not SERVING after the fuzz run"
    rss, peak = t.owner.rss_kib()
    assert rss - rss_before < RSS_GROWTH_KIB, (rss_before, rss, peak)
    assert peak < rss_before + 2 * RSS_GROWTH_KIB, (rss_before, rss, peak)
    print(f"statuses: {dict(t.codes)}; rss {rss_before} -> {rss} KiB (peak {peak})")


def _outcome(t: Target, call: Callable[[], object]) -> None:
    try:
        call()
    except grpc.RpcError as e:
        t.codes[e.code().name] += 1
        assert e.code() in PROPER, f"{e.code().name}: {e.details()}"
    else:
        t.codes["OK"] += 1


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _run(fn: Callable, examples: int) -> None:
    settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )(fn)()


# --- strategies ---


FAULTS = ["rid", "method", "budget", "sha", "params", "token", "tensor", "labels", "hard_set"]


@st.composite
def tensors(draw, dtype: str, shape: list[int], corrupt: bool, labels: bool = False) -> pb.Tensor:
    """The wanted dtype and shape, or (when `corrupt`) broken in one of several ways."""
    modes = ["nonfinite", "dtype", "shape", "bytes", "huge", "no", "ok"]
    mode = draw(st.sampled_from(modes)) if corrupt else "ok"
    if mode == "no":
        return pb.Tensor()
    if mode == "dtype":
        dtype = draw(st.sampled_from(sorted(wire.ALLOWED_DTYPES) + BAD_DTYPES))
    if mode == "shape":
        shape = draw(st.lists(st.integers(-3, 12), max_size=5))
    if mode == "huge":
        dims = [2**31, 2**40, 2**62, 2**63 - 1, 10**6, 0, 1, -(2**63)]
        shape = draw(st.lists(st.sampled_from(dims), min_size=1, max_size=4))
    size = math.prod(shape) if all(s >= 0 for s in shape) else -1
    # Zero-size but absurd shapes (0 x 2**62) numpy cannot build: send them as raw bytes.
    if (
        mode == "bytes"
        or dtype not in wire.ALLOWED_DTYPES
        or not 0 <= size <= 4096
        or any(s > 4096 for s in shape)
    ):
        return pb.Tensor(dtype=dtype, shape=shape, data=draw(st.binary(max_size=600)))
    dt = np.dtype(dtype)
    elements = None
    if dt.kind == "f":
        bad = mode == "nonfinite"
        width = min(32, dt.itemsize * 8)
        elements = st.floats(allow_nan=bad, allow_infinity=bad, width=width)
        elements = elements if bad else st.floats(-1e3, 1e3, width=width)
    elif dt == np.int64 and labels:
        # 9: the owner has no rows of it; 10, 11, <0: no such class
        elements = st.integers(-2, 11) if corrupt else st.integers(0, 9)
    array = draw(hnp.arrays(dt, shape, elements=elements))
    return pb.Tensor(dtype=dtype, shape=shape, data=array.astype(dt.newbyteorder("<")).tobytes())


@st.composite
def select_requests(draw, t: Target) -> tuple[pb.SelectRequest, str | None]:
    """A request with a few of its parts broken (often none, to reach the strategies)."""
    bad = draw(st.sets(st.sampled_from(FAULTS), max_size=3))
    m = draw(st.integers(0, 6) if "hard_set" in bad else st.integers(1, 6))
    rid = st.builds(lambda: f"fz-{next(_fresh)}")
    bad_rid = st.one_of(st.text(max_size=160), st.sampled_from(["", "x" * 129, "a b", "ok\n"]))
    bad_method = st.one_of(
        st.sampled_from(["full", "", "nope", "RANDOM", "random ", "__init__"]), st.text(max_size=30)
    )
    bad_sha = st.sampled_from(["", "0" * 64, t.sha.upper(), t.sha[:63], "g" * 64])
    request = pb.SelectRequest(
        request_id=draw(bad_rid if "rid" in bad else rid),
        method=draw(bad_method if "method" in bad else st.sampled_from(t.methods)),
        budget=draw(
            st.one_of(st.integers(-3, 80), st.integers(-(2**63), 2**63 - 1))
            if "budget" in bad
            else st.integers(1, 64)
        ),
        model_sha256=draw(bad_sha if "sha" in bad else st.just(t.sha)),
        seed=draw(st.integers(-(2**63), 2**63 - 1)),
    )
    if "params" in bad:
        keys = st.one_of(st.sampled_from(PARAM_NAMES), st.text(max_size=12))
        values = st.one_of(st.floats(), st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5, 1e9, 1e18]))
        size = draw(st.sampled_from([3, 3, 3, 20]))
        request.params.update(draw(st.dictionaries(keys, values, max_size=size)))
    corrupt = "tensor" in bad
    labels = draw(tensors("int64", [m], corrupt, labels=True))
    if "labels" in bad:
        labels = draw(tensors("int64", [m], True, labels=True))
    kinds = ["raw", "embedded", "none"] if "hard_set" in bad else ["raw", "embedded"]
    kind = draw(st.sampled_from(kinds))
    if kind == "raw":
        shapes = [[m, 1, 8, 8]] + ([[m, 64], [m, 8, 8], [m, 1, 8, 9]] if "hard_set" in bad else [])
        features = draw(tensors("float32", draw(st.sampled_from(shapes)), corrupt))
        request.raw.CopyFrom(pb.RawHardSet(features=features, labels=labels))
    elif kind == "embedded":
        hard = pb.EmbeddedHardSet(labels=labels)
        dims = ([8, 0, 3, 4097], [90, 0, 89, 100]) if "hard_set" in bad else ([8], [90])
        if "hard_set" not in bad or draw(st.booleans()):
            dim = draw(st.sampled_from(dims[0]))
            hard.embeddings.CopyFrom(draw(tensors("float32", [m, dim], corrupt)))
        if "hard_set" not in bad or draw(st.booleans()):
            dim = draw(st.sampled_from(dims[1]))
            hard.gradients.CopyFrom(draw(tensors("float32", [m, dim], corrupt)))
        request.embedded.CopyFrom(hard)
    token = draw(st.sampled_from(TOKEN_CHOICES)) if "token" in bad else TOKENS["alice"]
    return request, token


def _split_model(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _join_model(header: dict | bytes, body: bytes) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + body


ABSURD = [-1, 0, 2**62, 10**12, 1e308, "x", None, [], {"a": 1}, True, [2**62, 2**62], [-5]]


@st.composite
def model_files(draw, good: bytes) -> bytes:
    header, body = _split_model(good)
    kind = draw(st.sampled_from(["random", "truncated", "tensor", "config", "meta", "bomb"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "truncated":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "bomb":  # a deeply nested header or config, or a header length that lies
        depth = draw(st.integers(1000, 20_000))
        nest = "[" * depth + "]" * depth
        choice = draw(st.sampled_from(["header", "config", "length"]))
        if choice == "header":
            return _join_model(('{"x":' + nest + "}").encode(), body)
        if choice == "length":
            return struct.pack("<Q", draw(st.sampled_from([2**63, 2**40, 4 << 20]))) + good[8:]
        header["__metadata__"]["mycroft_config"] = nest
        return _join_model(header, body)
    if kind == "tensor":
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        key = draw(st.sampled_from(["shape", "dtype", "data_offsets", "entry", "drop", "extra"]))
        if key == "entry":
            header[name] = draw(st.sampled_from(ABSURD))
        elif key == "drop":
            del header[name]
        elif key == "extra":
            header["evil." + name] = header[name]
        else:
            header[name][key] = draw(st.sampled_from(ABSURD + ["F64", "I8", "BOOL", [0, 2**63]]))
        return _join_model(header, body)
    meta = header["__metadata__"]
    if kind == "config":
        config = json.loads(meta["mycroft_config"])
        config[draw(st.sampled_from(sorted(config) + ["evil"]))] = draw(st.sampled_from(ABSURD))
        meta["mycroft_config"] = json.dumps(config)
    else:  # metadata: wrong format, non-JSON config, or many/large entries
        choice = draw(st.sampled_from(["format", "version", "notjson", "keys", "big"]))
        if choice == "format":
            meta["format"] = "pickle"
        elif choice == "version":
            meta["format_version"] = draw(st.sampled_from(["2", "0", "", "1.0"]))
        elif choice == "notjson":
            meta["mycroft_config"] = draw(st.text(max_size=50))
        elif choice == "keys":
            meta.update({f"k{i}": "v" * 10 for i in range(3000)})
        else:
            meta["mycroft_config"] = json.dumps({"class_names": ["c"] * 20_000})
    return _join_model(header, body)


@st.composite
def uploads(draw, good: bytes) -> list[pb.ModelChunk]:
    blob = draw(model_files(good))
    sha = hashlib.sha256(blob).hexdigest()
    sha = draw(st.sampled_from([sha] * 4 + ["0" * 64, sha.upper(), "", sha[:10]]))
    total = draw(st.sampled_from([len(blob)] * 4 + [0, -1, len(blob) + 1, 2**62, len(blob) - 1]))
    step = draw(st.integers(1, max(1, len(blob))))
    chunks = [pb.ModelChunk(data=blob[i : i + step]) for i in range(0, len(blob), step)]
    chunks = chunks or [pb.ModelChunk()]
    chunks[0].sha256, chunks[0].total_size = sha, total
    if len(chunks) > 1 and draw(st.integers(0, 9)) == 0:
        chunks[1].sha256 = "1" * 64  # a later chunk may not change the model's name
    return chunks if draw(st.integers(0, 29)) else []


# --- the properties ---


def _fuzz_select(t: Target, examples: int) -> None:
    @given(case=select_requests(t))
    def check(case: tuple[pb.SelectRequest, str | None]) -> None:
        request, token = case

        def call() -> None:
            rows = 0
            stream = t.channel.unary_stream(
                "/mycroft.v1.DataOwner/Select",
                request_serializer=pb.SelectRequest.SerializeToString,
                response_deserializer=pb.SelectChunk.FromString,
            )
            for msg in stream(request, metadata=_metadata(token), timeout=60):
                if msg.WhichOneof("payload") == "rows":
                    rows += len(msg.rows.labels.data) // 8
                else:
                    assert msg.summary.rows_sent == rows <= request.budget

        _outcome(t, call)

    _run(check, examples)


def _fuzz_upload(t: Target, examples: int) -> None:
    @given(chunks=uploads(t.model), token=st.sampled_from(TOKEN_CHOICES))
    def check(chunks: list[pb.ModelChunk], token: str | None) -> None:
        stub = t.channel.stream_unary(
            "/mycroft.v1.DataOwner/UploadModel",
            request_serializer=pb.ModelChunk.SerializeToString,
            response_deserializer=pb.ModelStatus.FromString,
        )
        _outcome(t, lambda: stub(iter(chunks), metadata=_metadata(token), timeout=60))

    _run(check, examples)


METHODS = ["Describe", "HasModel", "GetLedger", "Select", "UploadModel"]


def _fuzz_misc(t: Target, examples: int) -> None:
    """Raw bytes to every method, and odd fields or credentials on the small RPCs."""
    printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)

    @given(
        method=st.sampled_from(METHODS),
        payload=st.one_of(st.binary(max_size=300), st.sampled_from([b"\xff\xff\xff", b"\x0a"])),
        text=st.one_of(st.text(max_size=80), st.sampled_from(["alice", "bob", t.sha])),
        auth=st.one_of(st.sampled_from(TOKEN_CHOICES).map(_metadata), printable.map(_auth)),
        how=st.sampled_from(["bytes", "fields"]),
    )
    def check(method: str, payload: bytes, text: str, auth: tuple, how: str) -> None:
        path = f"/mycroft.v1.DataOwner/{method}"
        if how == "bytes":
            if method == "Select":
                call = t.channel.unary_stream(path)
                _outcome(t, lambda: list(call(payload, metadata=auth, timeout=30)))
            elif method == "UploadModel":
                call = t.channel.stream_unary(path)
                _outcome(t, lambda: call(iter([payload, payload]), metadata=auth, timeout=30))
            else:
                call = t.channel.unary_unary(path)
                _outcome(t, lambda: call(payload, metadata=auth, timeout=30))
            return
        client = OwnerClient(t.channel, None)
        client.metadata = auth
        if method == "HasModel":
            _outcome(t, lambda: client.has_model(text))
        elif method == "GetLedger":
            _outcome(t, lambda: client.ledger(text))
        else:
            _outcome(t, client.describe)

    _run(check, examples)


def _auth(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", value),)


@pytest.mark.parametrize("fuzz", [_fuzz_select, _fuzz_upload, _fuzz_misc])
def test_hostile_input_gets_proper_statuses(target: Target, fuzz: Callable) -> None:
    before = target.owner.rss_kib()[0]
    fuzz(target, {"_fuzz_select": 150, "_fuzz_upload": 80, "_fuzz_misc": 70}[fuzz.__name__])
    _check_alive(target, before)


@pytest.mark.slow
@pytest.mark.parametrize("fuzz", [_fuzz_select, _fuzz_upload, _fuzz_misc])
def test_hostile_input_at_volume(target: Target, fuzz: Callable) -> None:
    before = target.owner.rss_kib()[0]
    fuzz(target, {"_fuzz_select": 6000, "_fuzz_upload": 2500, "_fuzz_misc": 1500}[fuzz.__name__])
    _check_alive(target, before)
