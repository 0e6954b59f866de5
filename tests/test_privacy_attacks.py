"""Privacy regressions, written as an attacker writes them, over real gRPC on loopback.

Each test replays one attack that once worked against the owner and asserts what the owner
promises instead: a trainer learns nothing about rows it was not given and paid for, beyond the
rows a paid query returns.
1. An overflow model turned the owner's errors into an oracle (zero budget, one row rebuilt).
2. After the cap was spent, probes still told owners apart by their unrevealed rows.
3. One trainer could see and use another trainer's uploaded model.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np
import pytest
import torch
from helpers_grpc import (
    TOKENS,
    OwnerClient,
    digits_data,
    owner_config,
    raw_request,
    running_owner,
    status_of,
    tiny_model_bytes,
)
from helpers_hardening import synthetic_data

import owner_node.models
from moe.config import ModelConfig
from moe.io import model_from_bytes, model_sha256, model_to_bytes
from moe.model import build_model
from mycroft.data.base import LabeledData

Transcript = list[tuple]


def _trainers(**caps: tuple[int, int]) -> list[dict]:
    """[[trainers]] tables: name -> (row cap, query allowance)."""
    return [{"id": n, "token": TOKENS[n], "cap": c, "queries": q} for n, (c, q) in caps.items()]


def _answer(call: Callable[[], object]) -> tuple:
    """Everything a trainer observes of one call, timings aside."""
    try:
        got = call()
    except grpc.RpcError as e:
        return ("error", e.code().name, e.details())
    if hasattr(got, "summary"):  # a Select
        s = got.summary
        budget = (s.budget.cap, s.budget.used, s.budget.left, s.budget.queries_left)
        return (
            "rows",
            tuple(got.row_ids.tolist()),
            s.rows_sent,
            s.new_rows_charged,
            budget,
            tuple(s.missing_classes),
            s.shortfall_reason,
            tuple(sorted(s.timings)),
        )
    return ("ok", got.present)


# --- 1. the overflow oracle ---------------------------------------------------------------


def box_model(data: LabeledData, lo: np.ndarray, hi: np.ndarray) -> bytes:
    """The attacker's model: finite weights that embed a row to NaN when it lies outside the box
    [lo, hi] (and finite inside). The mlp stem's first layer measures how far each coordinate
    is outside the box; its second layer multiplies that by 1e38: float32 overflow outside."""
    f = data.input_shape[0]
    cfg = ModelConfig(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        class_names=data.class_names,
        stem="mlp",
        stem_dim=2 * f,
        embed_dim=8,
        num_experts=2,
        top_k=1,
        expert_hidden=8,
    )
    model = build_model(cfg, seed=0)
    w1, b1 = torch.zeros(2 * f, f), torch.zeros(2 * f)
    for i in range(f):
        w1[2 * i, i], b1[2 * i] = 1.0, -float(hi[i])  # relu(x - hi)
        w1[2 * i + 1, i], b1[2 * i + 1] = -1.0, float(lo[i])  # relu(lo - x)
    with torch.no_grad():
        model.stem[0].weight.copy_(w1)
        model.stem[0].bias.copy_(b1)
        model.stem[2].weight.fill_(1e38)
        model.stem[2].bias.zero_()
    return model_to_bytes(model)


@pytest.fixture(scope="module")
def tabular() -> LabeledData:
    return synthetic_data(rows=300, dim=6, classes=3)


TARGET = 250  # the hidden row the attacker bisects for (late, so ties never pick it)


def test_overflow_model_is_refused_at_upload(tmp_path, tabular) -> None:
    center = tabular.features[TARGET]
    attack = box_model(tabular, center - 0.5, center + 0.5)
    config = owner_config(tmp_path, trainers=_trainers(alice=(1, 30)))
    with (
        running_owner(config, tabular) as (server, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
    ):
        alice = OwnerClient.of(ch, "alice")
        with pytest.raises(grpc.RpcError) as e:
            alice.upload(attack)
        code, details = status_of(e)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "admission policy" in details and "max_abs_weight" in details
        assert not alice.has_model(model_sha256(attack)).present
        assert alice.ledger().budget.queries_used == 0  # refused before touching a row
        assert not list(server.engine.config.owner.state_dir.glob("embeddings/*/*.npy"))


def _bisection_attack(port: int, data: LabeledData, max_queries: int = 200) -> Transcript:
    """Spend the cap, then shrink a box around the hidden row one coordinate at a time, reading
    the owner's reaction to an upload and a Select after each step, as the attack that worked
    did (it needed no budget: the tell was in the owner's errors)."""
    far = (data.features.max(axis=0) + 100.0)[None].astype(np.float32)  # outside every box
    lo = data.features.min(axis=0) - 1.0
    hi = data.features.max(axis=0) + 1.0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        alice = OwnerClient.of(ch, "alice")
        plain = tiny_model_bytes(data)
        transcript: Transcript = [_answer(lambda: alice.upload(plain))]
        spend = raw_request("spend", "random", 1, model_sha256(plain), far, np.array([0]))
        transcript.append(_answer(lambda: alice.select(spend)))
        for step in range(max_queries):
            coord = step % len(lo)
            mid = (lo[coord] + hi[coord]) / 2
            trial_hi = hi.copy()
            trial_hi[coord] = mid
            model = box_model(data, lo, trial_hi)
            upload = _answer(lambda model=model: alice.upload(model))
            if upload[0] == "error" and "query allowance" in upload[2]:
                transcript.append((upload,))
                break
            label = np.array([data.labels[TARGET]])
            request = raw_request(f"probe-{step}", "feature", 1, model_sha256(model), far, label)
            select = _answer(lambda request=request: alice.select(request))
            transcript.append((upload, select))
            # The old owner's tell: an error other than a spent budget meant "a row outside".
            if select[0] == "error" and select[1] != "RESOURCE_EXHAUSTED":
                hi = trial_hi
            else:
                lo[coord] = mid
    return transcript


def test_overflow_model_gives_no_oracle(tmp_path, tabular, monkeypatch) -> None:
    """Even a model that slips past admission learns nothing: two owners that differ only in
    whether one unrevealed row lies in the attacker's box answer the whole attack identically,
    and the query allowance stops it long before 200 queries. A trainer with rows left gets
    rows (paid), never an error, from such a model."""
    monkeypatch.setattr(owner_node.models, "admit", lambda *a, **k: None)  # admission off
    center = tabular.features[TARGET]
    attack = box_model(tabular, center - 0.5, center + 0.5)
    far_row = int(np.argmax(np.abs(tabular.features - center).sum(axis=1)))
    check = torch.from_numpy(tabular.features[[TARGET, far_row]])
    finite = torch.isfinite(model_from_bytes(attack).embed(check)).all(dim=1).tolist()
    assert finite == [True, False], "the attack model must tell the box's inside from outside"

    moved = tabular.features.copy()
    moved[TARGET] = 50.0  # owner B: the same rows, but the hidden one lies outside every box
    owner_b = LabeledData(moved, tabular.labels, tabular.class_names, tabular.row_ids, "b")
    transcripts, paid = [], []
    for name, data in (("a", tabular), ("b", owner_b)):
        config = owner_config(tmp_path / name, trainers=_trainers(alice=(1, 30), bob=(5, 30)))
        with running_owner(config, data) as (_, port):
            transcripts.append(_bisection_attack(port, data))
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                bob = OwnerClient.of(ch, "bob")
                assert bob.upload(attack).present
                label = np.array([tabular.labels[TARGET]])
                inside = center[None].astype(np.float32)  # D_hard the model embeds finitely
                request = raw_request("b", "feature", 3, model_sha256(attack), inside, label)
                paid.append(_answer(lambda b=bob, r=request: b.select(r)))
    a, b = transcripts
    assert a == b, "an answer depended on the hidden row"
    assert a[1][0] == "rows" and a[1][2] == 1  # the cap (one row) spent on a plain request
    assert len(a) < 200 and a[-1][0][1] == "RESOURCE_EXHAUSTED"  # stopped by the allowance
    selects = [step[1] for step in a[2:-1]]
    assert all(s[:2] == ("error", "RESOURCE_EXHAUSTED") for s in selects)  # refused, unpaid
    assert len(selects) == 30 - 2  # uploads cost a query each; refused Selects cost nothing
    # With rows left, the overflow model yields rows: the same count and summary on both owners;
    # which rows may differ, and those are paid for.
    assert paid[0][0] == paid[1][0] == "rows"
    assert paid[0][2:] == paid[1][2:] and paid[0][2] == 3


# --- 2. probing after the cap ------------------------------------------------------------


def _owners_differing_in_unrevealed_rows(shared: np.ndarray) -> tuple[LabeledData, LabeledData]:
    """Digits as owner A; owner B has 100 other rows (same ids and labels) outside `shared`."""
    a = digits_data()
    rng = np.random.default_rng(3)
    others = rng.choice(np.setdiff1d(np.arange(len(a)), shared), size=100, replace=False)
    features = a.features.copy()
    features[others] = rng.uniform(0, 1, features[others].shape).astype(np.float32)
    return a, LabeledData(features, a.labels, a.class_names, a.row_ids, "digits-b")


def _cap_probes(port: int, data: LabeledData, shared: np.ndarray, model: bytes) -> Transcript:
    sha = model_sha256(model)
    test = digits_data("test")
    rng = np.random.default_rng(11)
    transcript: Transcript = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        carol, bob = OwnerClient.of(ch, "carol"), OwnerClient.of(ch, "bob")
        for trainer in (carol, bob):
            transcript.append(_answer(lambda t=trainer: t.upload(model)))
            spend = raw_request(
                "spend", "feature", 20, sha, data.features[shared], data.labels[shared]
            )
            transcript.append(_answer(lambda t=trainer, r=spend: t.select(r)))
        # bob has 5 rows left: a probe asking 10 gets 5, and nothing about the rest
        idx = rng.choice(len(test), 12, replace=False)
        partial = raw_request("partial", "gradient", 10, sha, test.features[idx], test.labels[idx])
        got = bob.select(partial)
        transcript.append(("partial", got.summary.rows_sent, got.summary.shortfall_reason))
        for i in range(40):  # carol's cap is spent: every probe must look the same
            method = ("feature", "gradient", "funcfeat", "random", "binning")[i % 5]
            idx = rng.choice(len(test), int(rng.integers(1, 30)), replace=False)
            budget = int(rng.integers(1, 40))
            probe = raw_request(
                f"p{i}", method, budget, sha, test.features[idx], test.labels[idx], seed=i
            )
            transcript.append(_answer(lambda r=probe: carol.select(r)))
        transcript.append(_answer(lambda: carol.select(spend)))  # a replay: same rows, free
        queries = carol.ledger().budget.queries_used
    return [*transcript, ("queries", queries)]


def test_after_the_cap_answers_do_not_depend_on_unrevealed_rows(tmp_path) -> None:
    digits = digits_data()
    shared = np.flatnonzero(np.isin(digits.labels, (3, 8)))[:20]
    owner_a, owner_b = _owners_differing_in_unrevealed_rows(shared)
    model = tiny_model_bytes(digits)
    transcripts = []
    for name, data in (("a", owner_a), ("b", owner_b)):
        trainers = _trainers(carol=(20, 100), bob=(25, 100))
        with running_owner(owner_config(tmp_path / name, trainers=trainers), data) as (_, port):
            transcripts.append(_cap_probes(port, data, shared, model))
    a, b = transcripts
    # The 20 revealed rows are the same on both owners: D_hard was those rows themselves.
    spent = a[1]
    assert spent[0] == "rows" and sorted(spent[1]) == sorted(digits.row_ids[shared].tolist())
    partial = a[4]
    assert partial == (
        "partial",
        5,
        "budget cap: 5 of the trainer's rows were left for this request",
    )
    probes = a[5:-2]
    assert len(probes) == 40
    assert all(p[:2] == ("error", "RESOURCE_EXHAUSTED") for p in probes)
    assert a[-2][1] == spent[1] and a[-2][3] == 0  # the replay: the same rows, nothing charged
    assert a[-1] == ("queries", 2)  # upload + one Select; refusals and the replay cost nothing
    assert a == b, "a probe answered differently on owners that differ in unrevealed rows"


# --- 3. models belong to their uploader -----------------------------------------------------


def test_trainer_b_cannot_see_or_use_trainer_a_model(tmp_path) -> None:
    digits = digits_data()
    model = tiny_model_bytes(digits, seed=5)
    sha = model_sha256(model)
    hard = digits.features[:6], digits.labels[:6]
    config = owner_config(tmp_path, trainers=_trainers(alice=(100, 10), bob=(100, 10)))
    with (
        running_owner(config, digits) as (server, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as ch,
    ):
        alice, bob = OwnerClient.of(ch, "alice"), OwnerClient.of(ch, "bob")
        assert alice.upload(model).present
        assert alice.has_model(sha).present
        assert not bob.has_model(sha).present  # invisible to the other trainer
        with pytest.raises(grpc.RpcError) as e:
            bob.select(raw_request("b1", "feature", 3, sha, *hard))
        code, details = status_of(e)
        assert code == grpc.StatusCode.NOT_FOUND and "upload it first" in details
        assert bob.ledger().budget.queries_used == 0 and bob.ledger().budget.used == 0
        # bob's own upload of the same bytes is his: it costs him the warm-up query
        assert bob.upload(model).present and bob.has_model(sha).present
        assert bob.ledger().budget.queries_used == 1
        assert alice.ledger().budget.queries_used == 1
        assert len(bob.select(raw_request("b2", "feature", 3, sha, *hard)).row_ids) == 3
        models = server.engine.config.owner.state_dir / "models"
        assert len(list(models.glob(f"*/{sha}.safetensors"))) == 2  # one per trainer
