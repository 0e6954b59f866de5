"""Reusable pieces for tests that talk to a real owner over loopback gRPC.

`owner_config(tmp_path)` builds a config with four trainers (alice/bob with room, carol with a
small cap, dave with none), `running_owner(config, data)` starts an in-process server on an
ephemeral port, `OwnerClient` wraps the stub with a bearer token and collects Select streams.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tomli_w

from mycroft import serde, wire
from mycroft.data.base import LabeledData
from mycroft.v1 import owner_pb2 as pb
from mycroft.v1 import owner_pb2_grpc as pb_grpc
from owner_node.config import OwnerConfig, parse_config
from owner_node.server import OwnerServer, build_server

TOKENS = {
    "alice": "alice-token-0123456789",
    "bob": "bob-token-0123456789abc",
    "carol": "carol-token-0123456789a",
    "dave": "dave-token-0123456789ab",
}
CAPS = {"alice": 1000, "bob": 1000, "carol": 12, "dave": 0}


def request_chunks(request: pb.SelectRequest) -> Iterator[pb.SelectRequestChunk]:
    """Select's request stream for `request`, as every client sends it."""
    return serde.select_request_chunks(request.SerializeToString())


def digits_data(split: str = "train") -> LabeledData:
    from mycroft.data import Digits

    return Digits().load(split)


def save_scarce_trainer_files(folder: Path, scarce: list[int]) -> tuple[LabeledData, np.ndarray]:
    """A trainer short of the `scarce` classes (1 row in 6 kept), as train.npz and test.npz in
    `folder`; returns the digits train split and the permutation whose rows from 400 on are
    free to give owners."""
    from mycroft.data import save_npz

    train, test = digits_data("train"), digits_data("test")
    perm = np.random.default_rng(0).permutation(len(train))
    mine = train.subset(perm[:400])
    keep = ~np.isin(mine.labels, scarce) | (np.arange(len(mine)) % 6 == 0)
    save_npz(mine.subset(np.flatnonzero(keep), "trainer"), folder / "train.npz")
    save_npz(test.subset(np.arange(150), "test"), folder / "test.npz")
    return train, perm


# Just big enough to embed and to score rows: two experts, top-1.
TINY_SIZES = {"stem_dim": 16, "conv_channels": 4, "embed_dim": 8, "num_experts": 2, "top_k": 1}
# The trainer's [model] table in end-to-end runs: the same tiny MoE, wider experts.
TRAINER_MODEL = {"gate": "topk", **TINY_SIZES, "expert_hidden": 16}


def trainer_toml_head(run_id: str) -> str:
    """The [trainer], [data] (train.npz and test.npz beside the config) and [model]
    (TRAINER_MODEL) tables of an end-to-end run's trainer config."""
    head = {
        "trainer": {"id": "t1", "run_dir": "run", "run_id": run_id},
        "data": {"train": "train.npz", "test": "test.npz", "val_fraction": 0.4},
        "model": TRAINER_MODEL,
    }
    return tomli_w.dumps(head)


def tiny_model_bytes(data: LabeledData, seed: int = 0, **sizes: int) -> bytes:
    """An untrained, tiny MoE for `data`'s shape; `sizes` override TINY_SIZES (and the expert
    width, 8) as ModelConfig fields."""
    import torch

    from moe.config import ModelConfig
    from moe.io import model_to_bytes
    from moe.model import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        class_names=data.class_names,
        stem="conv" if len(data.input_shape) == 3 else "mlp",
        **{**TINY_SIZES, "expert_hidden": 8, **sizes},
    )
    return model_to_bytes(build_model(cfg))


def owner_config(tmp_path: Path, **sections: Mapping[str, Any]) -> OwnerConfig:
    """A config on 127.0.0.1:0 with the four test trainers; `sections` override tables."""
    raw: dict[str, Any] = {
        "owner": {"name": "test-owner", "listen": "127.0.0.1:0", "state_dir": "state"},
        "data": {"source": "digits"},
        "budget": {"default_cap": 100, "max_rows_per_request": 64},
        "trainers": [{"id": t, "token": TOKENS[t], "cap": CAPS[t]} for t in TOKENS],
        "selection": {"allow_full": True},
    }
    for name, table in sections.items():
        if isinstance(table, Mapping) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **table}
        else:
            raw[name] = table
    return parse_config(raw, base_dir=tmp_path)


@contextlib.contextmanager
def running_owner(
    config: OwnerConfig, data: LabeledData | None = None
) -> Iterator[tuple[OwnerServer, int]]:
    server, port = build_server(config, data)
    server.start()
    try:
        yield server, port
    finally:
        server.stop(grace=1.0).wait(10)


@contextlib.contextmanager
def connected(
    config: OwnerConfig, data: LabeledData | None = None, trainer: str = "alice"
) -> Iterator[tuple[OwnerClient, grpc.Channel]]:
    """An owner running `config`, and a client calling it as test trainer `trainer` (with its
    channel, for other stubs)."""
    with running_owner(config, data) as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield OwnerClient.of(ch, trainer), ch


def serve_for_trainer(
    stack: contextlib.ExitStack,
    base_dir: Path,
    name: str,
    data: LabeledData,
    token: str,
    **tables: Mapping[str, Any],
) -> str:
    """Start owner `name` serving `data` to trainer t1 (`token`; full information allowed)
    until `stack` closes; its address. `tables` replace whole config tables. For end-to-end
    runs of the trainer against owners."""
    raw: dict[str, Any] = {
        "owner": {"name": name, "listen": "127.0.0.1:0", "state_dir": f"state-{name}"},
        "data": {"source": "digits"},
        "budget": {"default_cap": 1000, "max_rows_per_request": 500},
        "trainers": [{"id": "t1", "token": token}],
        "selection": {"allow_full": True},
    }
    cfg = parse_config({**raw, **tables}, base_dir=base_dir)
    server, port = build_server(cfg, data)
    server.start()
    stack.callback(lambda: server.stop(grace=0.5).wait(10))
    return f"127.0.0.1:{port}"


@dataclass
class Selected:
    features: np.ndarray
    labels: np.ndarray
    row_ids: np.ndarray
    scores: np.ndarray
    summary: pb.SelectSummary
    chunks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def bearer(trainer: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying test trainer `trainer`'s token."""
    return (("authorization", f"Bearer {TOKENS[trainer]}"),)


class OwnerClient:
    def __init__(self, channel: grpc.Channel, token: str | None):
        self.stub = pb_grpc.DataOwnerStub(channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    @classmethod
    def of(cls, channel: grpc.Channel, trainer: str) -> OwnerClient:
        """A client calling as test trainer `trainer` (a key of TOKENS)."""
        return cls(channel, TOKENS[trainer])

    def describe(self) -> pb.DescribeResponse:
        return self.stub.Describe(pb.DescribeRequest(), metadata=self.metadata, timeout=10)

    def has_model(self, sha: str) -> pb.ModelStatus:
        return self.stub.HasModel(pb.ModelRef(sha256=sha), metadata=self.metadata, timeout=10)

    def upload(self, data: bytes, sha: str | None = None, chunk: int = 64 * 1024) -> pb.ModelStatus:
        from moe.io import model_sha256

        sha = sha or model_sha256(data)

        def chunks() -> Iterator[pb.ModelChunk]:
            for i in range(0, len(data), chunk):
                first = i == 0
                yield pb.ModelChunk(
                    sha256=sha if first else "",
                    total_size=len(data) if first else 0,
                    data=data[i : i + chunk],
                )

        return self.stub.UploadModel(chunks(), metadata=self.metadata, timeout=60)

    def ledger(self, trainer_id: str = "") -> pb.LedgerResponse:
        return self.stub.GetLedger(
            pb.LedgerRequest(trainer_id=trainer_id), metadata=self.metadata, timeout=10
        )

    def select(self, request: pb.SelectRequest, timeout: float = 60) -> Selected:
        feats, labels, ids, scores = [], [], [], []
        summary = None
        n_chunks = 0
        for msg in self.stub.Select(
            request_chunks(request), metadata=self.metadata, timeout=timeout
        ):
            if msg.WhichOneof("payload") == "rows":
                n_chunks += 1
                r = msg.rows
                feats.append(wire.decode(r.features, "features", dtype="float32"))
                labels.append(wire.decode(r.labels, "labels", dtype="int64", ndim=1))
                ids.append(wire.decode(r.row_ids, "row_ids", dtype="int64", ndim=1))
                scores.append(wire.decode(r.scores, "scores", dtype="float32", ndim=1))
            else:
                assert summary is None, "more than one summary"
                summary = msg.summary
        assert summary is not None, "stream ended without a summary"
        empty = np.zeros(0)
        return Selected(
            features=np.concatenate(feats) if feats else empty.astype(np.float32),
            labels=np.concatenate(labels) if labels else empty.astype(np.int64),
            row_ids=np.concatenate(ids) if ids else empty.astype(np.int64),
            scores=np.concatenate(scores) if scores else empty.astype(np.float32),
            summary=summary,
            chunks=n_chunks,
        )


def raw_request(
    request_id: str,
    method: str,
    budget: int,
    model_sha: str,
    features: np.ndarray,
    labels: np.ndarray,
    **kwargs: Any,
) -> pb.SelectRequest:
    return pb.SelectRequest(
        request_id=request_id,
        method=method,
        budget=budget,
        model_sha256=model_sha,
        raw=pb.RawHardSet(features=wire.encode(features), labels=wire.encode(labels)),
        **kwargs,
    )


def embedded_request(
    request_id: str,
    method: str,
    budget: int,
    model_sha: str,
    embeddings: np.ndarray | None,
    gradients: np.ndarray | None,
    labels: np.ndarray,
    **kwargs: Any,
) -> pb.SelectRequest:
    hard = pb.EmbeddedHardSet(labels=wire.encode(labels))
    if embeddings is not None:
        hard.embeddings.CopyFrom(wire.encode(embeddings))
    if gradients is not None:
        hard.gradients.CopyFrom(wire.encode(gradients))
    return pb.SelectRequest(
        request_id=request_id,
        method=method,
        budget=budget,
        model_sha256=model_sha,
        embedded=hard,
        **kwargs,
    )


def status_of(excinfo: Any) -> tuple[grpc.StatusCode, str]:
    err = excinfo.value
    return err.code(), err.details()


def acquire_context(
    data: LabeledData, model: bytes, methods: tuple[str, ...], budgets: tuple[int, ...], run_id: str
):
    """What `trainer_node.acquire.acquire_all` needs: D_hard is `data`'s first 6 rows, raw."""
    from moe.io import model_sha256
    from mycroft.messages import RawHard
    from trainer_node.acquire import AcquireContext
    from trainer_node.config import SelectionSettings

    return AcquireContext(
        run_id=run_id,
        model_bytes=model,
        model_sha256=model_sha256(model),
        hard={"raw": RawHard(data.features[:6], data.labels[:6])},
        class_names=data.class_names,
        input_shape=data.input_shape,
        selection=SelectionSettings(methods=methods, budgets=budgets, mode="raw"),
    )
