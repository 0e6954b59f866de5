"""End to end: three real owner servers (plus one that is down), digits, a tiny MoE, a few epochs.

The trainer config is a TOML file on disk, run through the CLI entry point; a second run with the
same run id must be answered entirely from the owners' replay (no new rows charged) and give the
same numbers, which also proves the run is deterministic.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from helpers_grpc import serve_for_trainer, trainer_toml_head

from mycroft.data import Digits, save_npz
from trainer_node.config import load_config
from trainer_node.pipeline import run_trainer, run_trainer_from_path
from trainer_node.report import load_report

TOKEN = "trainer-e2e-token-0123456789"
SCARCE = [3, 8]


def _trainer_toml(tmp, owners: dict[str, str]) -> str:
    owner_tables = "".join(
        f'\n[[owners]]\nname = "{name}"\naddress = "{addr}"\ntoken = "{TOKEN}"\n'
        f"deadline_seconds = {3 if name == 'dead' else 30}\n"
        for name, addr in owners.items()
    )
    return f"""
{trainer_toml_head("e2e-run")}
[training]
epochs = 4
batch_size = 32
lr = 3e-3
seeds = 2
mode = "finetune"
finetune_epochs = 5
num_threads = 1

[dhard]
classes = ["3", "8"]

[selection]
methods = ["feature", "random", "full"]
budgets = [8]
mode = "embedded"
{owner_tables}
[client]
retries = 1
backoff = 0.05
concurrency = 4
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    train, test = Digits().load("train"), Digits().load("test")
    perm = np.random.default_rng(0).permutation(len(train))
    mine = train.subset(perm[:600])
    keep = ~np.isin(mine.labels, SCARCE) | (np.arange(len(mine)) % 6 == 0)  # scarce classes
    save_npz(mine.subset(np.flatnonzero(keep), "trainer"), tmp / "train.npz")
    save_npz(test.subset(np.arange(200), "test"), tmp / "test.npz")
    parts = {"rich": perm[600:850], "mixed": perm[850:1100], "useless": perm[1100:1350]}
    addresses: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        for name, idx in parts.items():
            data = train.subset(idx, name)
            if name == "useless":  # nothing of the classes the trainer fails on
                data = data.subset(np.flatnonzero(~np.isin(data.labels, SCARCE)))
            addresses[name] = serve_for_trainer(stack, tmp, name, data, TOKEN)
        addresses["dead"] = "127.0.0.1:1"  # nothing listens: the run must go on without it
        config_path = tmp / "trainer.toml"
        config_path.write_text(_trainer_toml(tmp, addresses))
        yield config_path


def test_end_to_end_ranked_report(world, capsys):
    assert run_trainer_from_path(world) == 0
    assert "owners ranked by D_hard utility gain" in capsys.readouterr().out
    report = load_report(world.parent / "run" / "report.json")  # validates against the schema
    assert report["run_id"] == "e2e-run" and report["trainer_id"] == "t1"
    assert report["dhard"]["shared_total"] > 0 and report["dhard"]["eval_total"] > 0
    assert {c["class_name"] for c in report["dhard"]["per_class"]} == {"3", "8"}

    owners = {o["name"]: o for o in report["owners"]}
    assert owners["dead"]["status"] == "failed" and owners["dead"]["rank"] is None
    assert "UNAVAILABLE" in owners["dead"]["error"]
    ranked = [r["owner"] for r in report["ranking"]]
    assert sorted(ranked) == ["mixed", "rich", "useless"]
    assert [r["rank"] for r in report["ranking"]] == [1, 2, 3]
    assert all(r["method"] == "feature" and r["n"] == 2 for r in report["ranking"])

    rich = owners["rich"]
    assert rich["status"] == "ok" and rich["model_uploaded"] is True
    by_method = {q["method"]: q for q in rich["requests"]}
    assert by_method["feature"]["rows_received"] == 8
    assert by_method["full"]["rows_received"] == 250
    assert rich["budget"]["used"] == 250  # the full request covers every row once
    assert len(rich["results"]) == 3 * 2  # (feature, random, full) x 2 seeds
    # The useless owner has no rows of the D_hard classes: it says so instead of guessing.
    useless_feature = next(q for q in owners["useless"]["requests"] if q["method"] == "feature")
    assert useless_feature["rows_received"] == 0
    assert set(useless_feature["missing_classes"]) == {"3", "8"}

    fi = report["full_information"]
    assert fi is not None and sorted(fi["ranking"]) == ["mixed", "rich", "useless"]
    assert {(a["method"], a["budget"]) for a in fi["agreement"]} == {("feature", 8), ("random", 8)}


def test_rerun_same_run_id_replays_without_charge(world):
    first = json.loads((world.parent / "run" / "report.json").read_text())
    again = run_trainer(load_config(world)).to_dict()
    for o in again["owners"]:
        if o["status"] != "ok":
            continue
        assert o["model_uploaded"] is False  # cached at the owner from the first run
        for q in o["requests"]:
            assert q["replayed"] and q["new_rows_charged"] == 0, q
    gains = lambda rep: [  # noqa: E731
        (o["name"], r["method"], r["seed"], r["dhard_accuracy"], r["test_accuracy"])
        for o in rep["owners"]
        for r in o["results"]
    ]
    assert gains(again) == gains(first)  # deterministic: same rows, same training
    assert [r["owner"] for r in again["ranking"]] == [r["owner"] for r in first["ranking"]]
