"""Report assembly from constructed results: utility, ranking, full information, schema, writing."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from mycroft.messages import Allowance, SelectSummaryInfo
from trainer_node import report as report_mod
from trainer_node.acquire import OwnerOutcome, RequestOutcome
from trainer_node.client import OwnerError
from trainer_node.config import OwnerEndpoint
from trainer_node.messages import OwnerSubset
from trainer_node.report import Report, SeedResult, load_report, validate_report, write_report
from trainer_node.results import full_information, owner_reports, rank_all, setting_key
from trainer_node.summary import format_summary

CLASSES = ("a", "b", "c")
ROUTING = report_mod.Routing([0.5, 0.5], 1.0)


def _subset(n: int, budget: int) -> OwnerSubset:
    summary = SelectSummaryInfo(
        request_id="r",
        rows_sent=n,
        new_rows_charged=n,
        replayed=False,
        budget=Allowance(100, n, 100 - n),
        timings={"score": 0.01},
        missing_classes=(2,) if n < budget else (),
        shortfall_reason="no rows of class c" if n < budget else "",
    )
    return OwnerSubset(
        features=np.zeros((n, 4), np.float32),
        labels=np.arange(n, dtype=np.int64) % 2,
        row_ids=np.arange(n, dtype=np.int64),
        scores=np.ones(n, np.float32),
        summary=summary,
        attempts=1,
        seconds=0.02,
    )


def _results(method: str, budget: int, gains: list[float], test: float) -> list[SeedResult]:
    return [
        SeedResult(
            method=method,
            budget=budget,
            training_mode="finetune",
            seed=seed,
            rows_received=budget,
            new_rows_charged=budget,
            dhard_accuracy=0.1 + g,
            test_accuracy=0.8 + test,
            control_dhard_accuracy=0.1,
            control_test_accuracy=0.8,
            dhard_gain=g,
            test_gain=test,
            per_class_accuracy=[0.9, 0.8, None],
            routing=ROUTING,
            selection_seconds=0.01,
            transfer_seconds=0.02,
            train_seconds=0.5,
            missing_classes=[],
            shortfall_reason=None,
        )
        for seed, g in enumerate(gains)
    ]


# owner -> (feature@8 gains, full gains); "x" ties "y" on feature gains, better test change.
GAINS = {
    "w": ([0.30, 0.40, 0.35], [0.6, 0.6, 0.6]),
    "x": ([0.10, 0.10, 0.10], [0.5, 0.5, 0.5]),
    "y": ([0.10, 0.10, 0.10], [0.2, 0.2, 0.2]),
}


def _constructed():
    outcomes, results = [], {}
    for name, (feat, full) in GAINS.items():
        ep = OwnerEndpoint(name=name, address=f"127.0.0.1:{5000 + len(outcomes)}")
        reqs = [
            RequestOutcome(f"run.{name}.feature.b8", "feature", 8, 8, _subset(8, 8)),
            RequestOutcome(f"run.{name}.full.b50", "full", 50, 50, _subset(50, 50)),
        ]
        outcomes.append(OwnerOutcome(ep, None, True, reqs, Allowance(100, 58, 42)))
        results[name] = _results("feature", 8, feat, 0.02 if name == "x" else 0.0)
        results[name] += _results("full", 50, full, 0.1)
    dead = OwnerOutcome(OwnerEndpoint(name="z", address="127.0.0.1:1"))
    dead.error, dead.error_code = "owner z: UNAVAILABLE: connection refused", "UNAVAILABLE"
    failed_req = RequestOutcome("run.z.feature.b8", "feature", 8, 8)
    failed_req.error = OwnerError("z", "UNAVAILABLE", "connection refused", "run.z.feature.b8")
    dead.requests.append(failed_req)
    outcomes.append(dead)
    results["z"] = []
    return outcomes, results


def build_report() -> Report:
    outcomes, results = _constructed()
    owners = owner_reports(outcomes, results, CLASSES)
    ranking = rank_all(owners, setting_key("feature", 8, "finetune"))
    return Report(
        run_id="run",
        created_at="2024-01-01T00:00:00+00:00",
        trainer_id="t1",
        data=report_mod.DataSummary("toy", 100, 30, 50, [4]),
        class_names=list(CLASSES),
        model=report_mod.ModelSummary("topk", 4, 2, 8, "0" * 64, 1234, {"gate": "topk"}),
        settings=report_mod.Settings(
            methods=["feature", "full"],
            budgets=[8],
            seeds=[0, 1, 2],
            selection_mode="embedded",
            training_mode="finetune",
            training_modes=["finetune"],
            rank_by={"method": "feature", "budget": 8, "training_mode": "finetune"},
            epochs=1,
            finetune_epochs=3,
            batch_size=32,
            lr=0.003,
            replay_fraction=0.5,
            dhard_classes=None,
            shared_fraction=0.5,
            dhard_seed=0,
            selection_seed=0,
        ),
        baseline=report_mod.BaselineSummary(
            0.1, 0.8, 0.79, 0.6, [0.9, 0.8, float("nan")], ROUTING, 1.0
        ),
        dhard=report_mod.DHardSummary(
            ["a", "b"],
            6,
            4,
            [report_mod.DHardClass("a", 0, 3, 2), report_mod.DHardClass("b", 1, 3, 2)],
        ),
        owners=owners,
        ranking=ranking,
        full_information=full_information(owners, "finetune"),
        timings=report_mod.Timings(3.0, 1.0, 0.5, 1.5),
    )


def test_ranking_and_utility():
    rep = build_report()
    assert [(r.rank, r.owner) for r in rep.ranking] == [(1, "w"), (2, "x"), (3, "y")]
    w = rep.ranking[0]
    assert w.dhard_gain_mean == pytest.approx(0.35)
    assert w.ci95 is not None and w.ci95[0] < 0.35 < w.ci95[1]
    by_name = {o.name: o for o in rep.owners}
    assert by_name["z"].status == "failed" and by_name["z"].rank is None
    assert by_name["z"].requests[0].error_code == "UNAVAILABLE"
    assert by_name["w"].status == "ok" and by_name["w"].rank == 1
    util = {(u.method, u.budget): u for u in by_name["x"].utility}
    assert util[("feature", 8)].rank == 2 and util[("full", 50)].rank == 2
    assert util[("feature", 8)].dhard_gain.ci95 == pytest.approx([0.1, 0.1])
    req = by_name["w"].requests[0]
    assert req.received_per_class == [4, 4, 0] and req.status == "ok"


def test_full_information_agreement():
    fi = build_report().full_information
    assert fi is not None
    assert fi.ranking == ["w", "x", "y"]
    assert fi.gains["x"] == pytest.approx(0.5)
    (agree,) = fi.agreement
    assert (agree.method, agree.budget, agree.n_owners) == ("feature", 8, 3)
    # feature gains (0.35, 0.1, 0.1) vs full (0.6, 0.5, 0.2): one tie, otherwise concordant
    assert agree.spearman == pytest.approx(0.8660254)
    assert agree.kendall_tau == pytest.approx(0.8164966)


def test_report_dict_validates_and_round_trips(tmp_path):
    obj = build_report().to_dict()
    assert next(iter(obj)) == "schema_version" and obj["schema_version"] == "1.0"
    assert obj["baseline"]["per_class_accuracy"][2] is None  # NaN -> null
    validate_report(obj)
    path = write_report(build_report(), tmp_path / "out" / "report.json")
    assert load_report(path) == json.loads(json.dumps(obj))
    text = format_summary(obj)
    assert "w" in text and "failed" in text


def test_price_and_verdict_reach_the_report_and_the_summary():
    outcomes, results = _constructed()
    outcomes[0].endpoint = outcomes[0].endpoint.model_copy(update={"price": 2.5})
    assert [o.price for o in owner_reports(outcomes, results, CLASSES)] == [2.5, None, None, None]
    obj = build_report().to_dict()
    validate_report(obj)  # the stored verdict fits the schema
    assert (obj["verdict"]["decision"], obj["verdict"]["pay"]) == ("pay", ["w"])
    first = format_summary(obj).splitlines()[0]
    assert first.startswith("Verdict: Pay w: +35.0 pp on D_hard-eval")  # the decision comes first
    assert "Not worth paying: z: failed (UNAVAILABLE)" in format_summary(obj)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda o: o.pop("run_id"), "run_id"),
        (lambda o: o["owners"][0].update(status="meh"), "status"),
        (lambda o: o["ranking"][0].update(rank=0), "rank"),
        (lambda o: o["model"].update(sha256="xyz"), "sha256"),
        (lambda o: o.update(schema_version="2.0"), "schema_version"),
        (lambda o: o["owners"][0]["results"][0].update(surprise=1), "surprise"),
    ],
)
def test_schema_rejects_bad_reports(mutate, where):
    obj = build_report().to_dict()
    mutate(obj)
    with pytest.raises(jsonschema.ValidationError) as info:
        validate_report(obj)
    assert where in str(info.value)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    write_report(build_report(), path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report_mod.json, "dump", crash)
    with pytest.raises(OSError, match="disk full"):
        write_report(build_report(), path)
    assert path.read_bytes() == before  # the old report is intact
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left over
