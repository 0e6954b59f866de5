"""Select's `exclude_row_ids` (acquisition in rounds) over real gRPC on loopback: excluded rows
the trainer holds never come back, ids it was never shown change nothing, the exclusion is part
of the request (a changed retry is refused) and it is bounded by the trainer's cap."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from helpers_grpc import OwnerClient, digits_data, owner_config, raw_request, running_owner

from moe.io import model_sha256
from mycroft.messages import RawHard, SelectRequestSpec
from mycroft.serde import select_request_to_proto

CLASSES = (3, 8)


@pytest.fixture(scope="module")
def hard():
    test = digits_data("test")
    idx = np.flatnonzero(np.isin(test.labels, CLASSES))[:20]
    return test.features[idx], test.labels[idx]


@pytest.fixture(scope="module")
def owner(tmp_path_factory, data, model):
    """One owner; alice (cap 1000), bob (cap 1000) and carol (cap 12) each upload the model."""
    config = owner_config(tmp_path_factory.mktemp("owner"))
    with running_owner(config, data) as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        clients = {name: OwnerClient.of(ch, name) for name in ("alice", "bob", "carol")}
        for c in clients.values():
            assert c.upload(model).present
        yield clients


def ask(client, rid, hard, model, budget=10, method="feature", exclude=()):
    return client.select(
        raw_request(rid, method, budget, model_sha256(model), *hard, exclude_row_ids=list(exclude))
    )


def test_excluded_revealed_rows_never_come_back(owner, hard, model):
    alice = owner["alice"]
    first = ask(alice, "ex-1", hard, model)
    assert len(first.row_ids) == 10
    second = ask(alice, "ex-2", hard, model, exclude=first.row_ids)
    assert len(second.row_ids) == 10
    assert not set(second.row_ids.tolist()) & set(first.row_ids.tolist())
    assert second.summary.new_rows_charged == 10  # every row is new: none wasted


def test_ids_never_revealed_are_ignored(owner, hard, model):
    bob = owner["bob"]
    shown = ask(bob, "probe-0", hard, model, budget=4).row_ids
    # The rows a 10-row request returns (asked by alice), most never shown to bob, and ids
    # that do not exist: honouring those would let bob probe which rows exist and rank high.
    top = ask(owner["alice"], "probe-a", hard, model).row_ids
    unrevealed = np.setdiff1d(np.concatenate([top, [10**9, -5]]), shown)
    assert len(unrevealed) > 2
    probing = ask(bob, "probe-1", hard, model, exclude=np.concatenate([shown, unrevealed]))
    honest = ask(bob, "probe-2", hard, model, exclude=shown)
    np.testing.assert_array_equal(probing.row_ids, honest.row_ids)
    assert not set(honest.row_ids.tolist()) & set(shown.tolist())
    assert set(honest.row_ids.tolist()) & set(unrevealed.tolist())  # they were picked anyway


def test_a_retry_with_another_exclusion_is_refused(owner, hard, model):
    alice = owner["alice"]
    first = ask(alice, "fp-1", hard, model, budget=5)
    ask(alice, "fp-2", hard, model, budget=5, exclude=first.row_ids)
    replay = ask(alice, "fp-2", hard, model, budget=5, exclude=first.row_ids)
    assert replay.summary.replayed
    with pytest.raises(grpc.RpcError) as err:
        ask(alice, "fp-2", hard, model, budget=5, exclude=first.row_ids[:2])
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already used with different parameters" in err.value.details()


def test_an_exclusion_longer_than_the_cap_is_refused(owner, hard, model):
    carol = owner["carol"]  # cap 12
    with pytest.raises(grpc.RpcError) as err:
        ask(carol, "big-1", hard, model, budget=2, exclude=range(13))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exclude_row_ids" in err.value.details()
    assert "13 ids, more than the 12 distinct rows" in err.value.details()
    assert len(carol.ledger().entries) == 0


def test_the_trainer_sends_its_exclusion(data):
    spec = SelectRequestSpec(
        request_id="r",
        method="feature",
        rows_wanted=3,
        model_sha256="",
        hard=RawHard(data.features[:2], data.labels[:2]),
        exclude_row_ids=np.array([7, 3, 7], dtype=np.int64),
    )
    assert list(select_request_to_proto(spec).exclude_row_ids) == [7, 3, 7]
    default = SelectRequestSpec("r", "feature", 3, "", RawHard(data.features[:2], data.labels[:2]))
    assert list(select_request_to_proto(default).exclude_row_ids) == []
