"""Acquisition in rounds (selection.rounds): the budget split, the config field, and a real run
against an owner on loopback where each budget becomes a chain of Selects."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from helpers_grpc import serve_for_trainer, trainer_toml_head

from mycroft.data import Digits, save_npz
from mycroft.errors import ConfigError
from trainer_node.acquire import plan_requests, queries_needed, request_id_for
from trainer_node.config import SelectionSettings, load_config, parse_config
from trainer_node.pipeline import run_trainer
from trainer_node.report import load_report
from trainer_node.rounds import split_budget
from trainer_node.verdict import compute_verdict, primary_request

TOKEN = "trainer-rounds-token-0123456789"
SCARCE = [3, 8]


@pytest.mark.parametrize(
    ("budget", "rounds", "expected"),
    [(8, 1, [8]), (8, 2, [4, 4]), (10, 4, [3, 3, 2, 2]), (3, 4, [1, 1, 1]), (1, 3, [1])],
)
def test_split_budget_is_even_with_the_remainder_first(budget, rounds, expected):
    assert split_budget(budget, rounds) == expected
    assert sum(split_budget(budget, rounds)) == budget


def test_rounds_must_be_positive(tmp_path):
    raw = {
        "trainer": {"id": "t"},
        "data": {"source": "digits"},
        "selection": {"rounds": 0},
        "owners": [{"name": "a", "address": "127.0.0.1:1", "token": "x" * 20}],
    }
    with pytest.raises(ConfigError, match=r"^selection.rounds: must be >= 1, got 0$"):
        parse_config(raw, tmp_path)
    raw["selection"]["rounds"] = 3
    assert parse_config(raw, tmp_path).selection.rounds == 3
    del raw["selection"]["rounds"]
    assert parse_config(raw, tmp_path).selection.rounds == 1


def test_query_count_counts_rounds_and_their_uploads():
    plan = plan_requests(SelectionSettings(methods=("feature", "full"), budgets=(8, 2)))
    assert queries_needed(plan, 1) == 1 + 3  # warm-up + one Select each, as before rounds
    # budget 8 in 3 rounds: 3 Selects + 2 uploads; budget 2: 2 Selects + 1 upload; full: 1
    assert queries_needed(plan, 3) == 1 + 5 + 3 + 1
    assert request_id_for("run", "o", "feature", 8) == "run.o.feature.b8"
    assert request_id_for("run", "o", "feature", 8, 2) == "run.o.feature.b8-r2"


def _toml(owner: str, rounds: int) -> str:
    return f"""
{trainer_toml_head(f"rounds-{rounds}")}
[training]
epochs = 3
batch_size = 32
lr = 3e-3
seeds = 1
finetune_epochs = 2
num_threads = 1

[dhard]
classes = ["3", "8"]

[selection]
methods = ["feature", "random", "full"]
budgets = [8]
rounds = {rounds}

[[owners]]
name = "rich"
address = "{owner}"
token = "{TOKEN}"
"""


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rounds")
    train, test = Digits().load("train"), Digits().load("test")
    perm = np.random.default_rng(0).permutation(len(train))
    mine = train.subset(perm[:500])
    keep = ~np.isin(mine.labels, SCARCE) | (np.arange(len(mine)) % 6 == 0)
    save_npz(mine.subset(np.flatnonzero(keep), "trainer"), tmp / "train.npz")
    save_npz(test.subset(np.arange(150), "test"), tmp / "test.npz")
    with contextlib.ExitStack() as stack:
        yield tmp, serve_for_trainer(stack, tmp, "rich", train.subset(perm[500:800], "rich"), TOKEN)


def _run(owner, rounds: int) -> dict:
    tmp, address = owner
    path = tmp / f"trainer-{rounds}.toml"
    path.write_text(_toml(address, rounds))
    run_trainer(load_config(path))
    return load_report(tmp / "run" / f"rounds-{rounds}" / "report.json")


def test_two_rounds_fetch_the_budget_in_two_requests_of_new_rows(owner):
    report = _run(owner, 2)
    assert report["settings"]["rounds"] == 2
    rich = report["owners"][0]
    assert rich["status"] == "ok"
    for method in ("feature", "random"):
        chain = [q for q in rich["requests"] if q["method"] == method]
        assert [q["round"] for q in chain] == [1, 2]
        assert [q["request_id"][-3:] for q in chain] == ["-r1", "-r2"]
        assert all(q["budget"] == 8 and q["status"] == "ok" for q in chain)
        assert [q["rows_requested"] for q in chain] == [4, 4]
        # the second round excluded the first's rows: all 8 are new, none wasted
        assert [q["new_rows_charged"] for q in chain] == [4, 4]
        (result,) = [r for r in rich["results"] if r["method"] == method]
        assert result["rows_received"] == 8  # the union is evaluated, as a one-shot subset
    (full,) = [q for q in rich["requests"] if q["method"] == "full"]
    assert full["round"] == 1 and not full["request_id"].endswith("-r1")  # never split
    # the verdict and the page judge the chain as one purchase of 8 rows, not its first round
    assert primary_request(rich, report)["rows_received"] == 8
    assert compute_verdict(report)["owners"][0]["rows_received"] == 8

    # The same run id again: every round is asked exactly as before (same fine-tuned model,
    # same D_hard, same exclusion), so the owner replays them and charges nothing.
    again = _run(owner, 2)["owners"][0]["requests"]
    assert [q["request_id"] for q in again] == [q["request_id"] for q in rich["requests"]]
    assert all(q["replayed"] and q["new_rows_charged"] == 0 for q in again)


def test_one_round_is_one_request_per_budget(owner):
    report = _run(owner, 1)
    assert report["settings"]["rounds"] == 1
    requests = report["owners"][0]["requests"]
    assert [(q["method"], q["round"]) for q in requests] == [
        ("feature", 1),
        ("random", 1),
        ("full", 1),
    ]
    assert [q["request_id"] for q in requests] == [
        "rounds-1.rich.feature.b8",
        "rounds-1.rich.random.b8",
        "rounds-1.rich.full.b300",
    ]
    assert all(q["rows_received"] == q["rows_requested"] for q in requests)
