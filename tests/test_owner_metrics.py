"""The owner's Prometheus endpoint: what a scrape shows after real calls, and when it listens."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from helpers_grpc import OwnerClient, owner_config, raw_request, running_owner, status_of
from prometheus_client.parser import text_string_to_metric_families

from moe.io import model_sha256
from mycroft.errors import ConfigError, MycroftError
from owner_node.server import build_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except urllib.error.URLError as e:
        return isinstance(e.reason, ConnectionRefusedError)
    return False


def hard_set(data) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(np.isin(data.labels, [3, 5]))[:8]
    return data.features[rows], data.labels[rows]


def test_scrape_counts_calls_selections_uploads_and_refusals(tmp_path, data, model):
    config = owner_config(tmp_path, metrics={"enabled": True, "listen": "127.0.0.1:0"})
    with running_owner(config, data) as (server, port):
        assert server.metrics_port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            alice = OwnerClient.of(channel, "alice")
            intruder = OwnerClient(channel, "not-a-token-0123456789")
            alice.describe()
            alice.upload(model)
            request = raw_request("r1", "feature", 10, model_sha256(model), *hard_set(data))
            first = alice.select(request)
            again = alice.select(request)  # the same request id: replayed, nothing charged
            for call in (intruder.describe, lambda: intruder.select(request)):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert status_of(err)[0] == grpc.StatusCode.UNAUTHENTICATED
        got = scrape(server.metrics_port)
        stopped = server.stop(grace=1.0)
        assert stopped.wait(10)
    assert refused(server.metrics_port), "the metrics server outlived the owner"

    new_rows = first.summary.new_rows_charged
    assert new_rows > 0 and again.summary.replayed
    seconds = "mycroft_owner_rpc_duration_seconds"
    assert value(got, f"{seconds}_count", method="Describe") == 2
    assert value(got, f"{seconds}_count", method="UploadModel") == 1
    assert value(got, f"{seconds}_count", method="Select") == 3
    assert value(got, f"{seconds}_sum", method="Select") > 0
    refusals = "mycroft_owner_rpc_refusals_total"
    assert value(got, refusals, method="Describe", code="UNAUTHENTICATED") == 1
    assert value(got, refusals, method="Select", code="UNAUTHENTICATED") == 1
    assert sum(v for (name, _), v in got.items() if name == refusals) == 2
    selections = "mycroft_owner_selections_total"
    assert value(got, selections, method="feature", outcome="charged") == 1
    assert value(got, selections, method="feature", outcome="replayed") == 1
    assert value(got, "mycroft_owner_rows_revealed_total", method="feature") == new_rows
    sent = len(first.row_ids) + len(again.row_ids)
    assert value(got, "mycroft_owner_rows_sent_total", method="feature") == sent
    assert value(got, "mycroft_owner_queries_total", kind="warm") == 1
    assert value(got, "mycroft_owner_queries_total", kind="select") == 1
    assert value(got, "mycroft_owner_model_uploads_total") == 1
    assert value(got, "mycroft_owner_model_upload_bytes_total") == len(model)
    # Gauges, read from the ledger, the cache and the disk when scraped.
    assert value(got, "mycroft_owner_budget_rows", state="used") == new_rows
    assert value(got, "mycroft_owner_budget_rows", state="cap") == sum(
        t.cap for t in config.trainers
    )
    assert value(got, "mycroft_owner_budget_queries", state="used") == 2
    assert value(got, "mycroft_owner_models_on_disk") == 1
    assert value(got, "mycroft_owner_disk_bytes", kind="model") == len(model)
    assert value(got, "mycroft_owner_cache_entries", kind="model") == 1
    assert value(got, "mycroft_owner_cache_bytes", kind="embeddings") > 0
    assert value(got, "mycroft_owner_cache_limit_bytes") == config.selection.cache_mib * 2**20
    # No label carries a trainer id, a row id or a class name.
    labels = {v for (_, pairs) in got for _, v in pairs}
    assert not labels & {"alice", "bob", "carol", "dave", *data.class_names}
    assert not labels & {str(r) for r in first.row_ids}


def test_disabled_metrics_listen_nowhere(tmp_path, data):
    port = free_port()
    config = owner_config(tmp_path, metrics={"enabled": False, "listen": f"127.0.0.1:{port}"})
    with running_owner(config, data) as (server, _):
        assert server.metrics_port is None
        assert refused(port)


def test_metrics_address_problems_name_the_field(tmp_path, data):
    with pytest.raises(ConfigError, match=r"^metrics\.listen: .*host:port"):
        owner_config(tmp_path, metrics={"enabled": True, "listen": "9464"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        config = owner_config(tmp_path, metrics={"enabled": True, "listen": address})
        with pytest.raises(MycroftError, match=r"^metrics\.listen: .*already in use"):
            build_server(config, data)
