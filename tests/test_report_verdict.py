"""The report's verdict ("whom do I pay?") on constructed report dicts: a clear winner, a tie,
nobody worth paying, collapses caused by an owner's rows, the reason for a zero gain, prices,
and the rows-revealed chart that must not count the evaluation-only full run as revealed."""

from __future__ import annotations

from typing import Any

import pytest

from mycroft.errors import ConfigError
from trainer_node import plots
from trainer_node.config import parse_config
from trainer_node.ranking import Candidate, gain_stats, rank_owners
from trainer_node.verdict import CLASS_DROP, compute_verdict, verdict_lines
from trainer_node.verdict_sentences import sentence_text
from trainer_node.versus_random import versus_random, versus_random_lines

CLASSES = ["T-shirt", "Trouser", "Coat", "Bag"]
HARD = ["T-shirt", "Coat"]
BASE_PER_CLASS = [0.10, 0.95, 0.56, 0.97]
BASE_TEST = 0.65
SETTING = {"method": "feature", "budget": 32, "training_mode": "finetune"}


def owner(
    name: str,
    gains: list[float],
    *,
    per_class: list[list[float]] | None = None,
    test: list[float] | None = None,
    rows: int = 32,
    counts: list[int] | None = None,
    shortfall: str | None = None,
    price: float | None = None,
) -> dict[str, Any]:
    """One ok owner with a primary request and one result per gain (seed)."""
    request = {
        "method": "feature",
        "budget": 32,
        "rows_requested": 32,
        "status": "ok",
        "rows_received": rows,
        "new_rows_charged": rows,
        "received_per_class": [rows // 2, 0, rows - rows // 2, 0],
        "missing_classes": [],
        "shortfall_reason": shortfall,
        "error": None,
        "error_code": None,
    }
    results = [
        {
            **SETTING,
            "seed": seed,
            "rows_received": rows,
            "dhard_gain": g,
            "test_accuracy": (test or [BASE_TEST + 0.02] * len(gains))[seed],
            "per_class_accuracy": (per_class or [BASE_PER_CLASS] * len(gains))[seed],
        }
        for seed, g in enumerate(gains)
    ]
    describe = {"classes": CLASSES, "class_counts": counts or [40, 40, 40, 40]}
    return {
        "name": name,
        "status": "ok",
        "error": None,
        "error_code": None,
        "describe": describe,
        "budget": {"cap": 1000, "used": rows, "left": 1000 - rows},
        "requests": [request],
        "results": results,
        "price": price,
    }


def failed_owner(name: str, error: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": "failed",
        "error": error,
        "error_code": "UNAVAILABLE",
        "describe": None,
        "budget": None,
        "requests": [],
        "results": [],
    }


def report(*owners: dict[str, Any], warnings: list[str] | None = None) -> dict[str, Any]:
    """The fields the verdict reads; the ranking is built the way the trainer builds it."""
    candidates = []
    for o in owners:
        if o["status"] == "ok":
            g = gain_stats([r["dhard_gain"] for r in o["results"]])
            candidates.append(Candidate(o["name"], g, 0.0))
    ranking = [
        {
            "rank": rank,
            "owner": c.owner,
            **SETTING,
            "dhard_gain_mean": c.gain.mean,
            "ci95": list(c.gain.ci95) if c.gain.ci95 else None,
            "n": c.gain.n,
        }
        for rank, c in rank_owners(candidates)
    ]
    r = {
        "settings": {"rank_by": SETTING},
        "class_names": CLASSES,
        "dhard": {"classes": HARD},
        "baseline": {"per_class_accuracy": BASE_PER_CLASS, "test_accuracy": BASE_TEST},
        "owners": list(owners),
        "ranking": ranking,
    }
    if warnings is not None:
        r["warnings"] = warnings
    return r


def test_clear_winner_is_the_one_to_pay():
    v = compute_verdict(
        report(owner("strong", [0.40, 0.42, 0.41]), owner("weak", [0.10, 0.12, 0.11]))
    )
    assert v["decision"] == "pay" and v["pay"] == ["strong"]
    assert v["summary"].startswith("Pay strong: +41.0 pp on D_hard-eval")
    assert "tied" not in v["summary"]
    # weak also gains for sure, only less: worth paying, but not named as the choice
    assert "Also a real but clearly smaller gain: weak." in v["summary"]


def test_overlapping_intervals_are_a_tie_in_words():
    v = compute_verdict(
        report(owner("owner_a", [0.30, 0.45, 0.38]), owner("owner_b", [0.28, 0.40, 0.33]))
    )
    assert v["decision"] == "tied" and v["pay"] == ["owner_a", "owner_b"]
    assert (
        "owner_a and owner_b are tied (their 95% intervals overlap); either is worth paying."
        in v["summary"]
    )


def test_no_gain_distinguishable_from_zero():
    v = compute_verdict(report(owner("noisy", [0.20, -0.10, 0.05]), owner("flat", [0.0] * 3)))
    assert v["decision"] == "none" and v["pay"] == []
    assert v["summary"].startswith("No owner is clearly worth paying")
    by_name = {o["name"]: o for o in v["owners"]}
    assert by_name["noisy"]["reason"].startswith("gain not distinguishable from 0 (95% CI")


def test_a_single_seed_never_claims_a_worthwhile_gain():
    v = compute_verdict(report(owner("lucky", [0.50])))
    assert v["decision"] == "none"
    assert "lucky (+50.0 pp): one seed: no confidence interval." in v["summary"]


def test_collapse_of_a_dhard_class_names_owner_class_before_and_after():
    collapsed = [[0.90, 0.95, 0.01, 0.96], [0.88, 0.94, 0.02, 0.97], [0.91, 0.95, 0.00, 0.95]]
    v = compute_verdict(
        report(
            owner("a_relevant", [0.35, 0.40, 0.38], per_class=collapsed),
            owner("b_other", [0.05, 0.30, 0.20]),
        )
    )
    (harm,) = v["harms"]
    assert (harm["owner"], harm["class_name"], harm["dhard_class"]) == ("a_relevant", "Coat", True)
    assert harm["before"] == pytest.approx(0.56) and harm["after"] == pytest.approx(0.01)
    assert (
        "a_relevant's rows took the trainer's Coat (a D_hard class) from 56% to 1%, while "
        "improving D_hard-eval by +37.7 pp." in v["summary"]
    )


def test_a_class_named_by_a_number_is_said_as_a_class():
    collapsed = [[0.90, 0.95, 0.01, 0.96]] * 3
    r = report(owner("a_relevant", [0.35, 0.40, 0.38], per_class=collapsed), owner("b", [0.0] * 3))
    r["class_names"] = ["0", "1", "2", "3"]
    r["dhard"] = {"classes": ["2"]}
    assert (
        "took the trainer's class 2 (a D_hard class) from 56% to 1%"
        in (compute_verdict(r)["summary"])
    )


def test_drops_within_seed_noise_or_below_threshold_are_not_flagged():
    # Coat's mean falls 20 points, but one seed is back at the baseline: seed noise.
    noisy = [[0.1, 0.95, 0.56, 0.97], [0.1, 0.95, 0.20, 0.97], [0.1, 0.95, 0.32, 0.97]]
    small = [[0.1, 0.95, 0.56 - CLASS_DROP + 0.02, 0.97]] * 3  # steady but under the threshold
    v = compute_verdict(
        report(owner("n", [0.3, 0.3, 0.3], per_class=noisy), owner("s", [0.3] * 3, per_class=small))
    )
    assert v["harms"] == []


def test_overall_test_accuracy_drop_is_flagged():
    v = compute_verdict(report(owner("forgets", [0.3, 0.32, 0.31], test=[0.55, 0.56, 0.54])))
    (harm,) = v["harms"]
    assert harm["class_name"] is None
    assert "overall test accuracy from 65% to 55%" in v["summary"]


def test_collapse_shared_by_every_owner_is_said_once_and_does_not_separate_them():
    coat_gone = [[0.9, 0.95, 0.03, 0.97]] * 3
    v = compute_verdict(
        report(
            owner("a", [0.30, 0.31, 0.32], per_class=coat_gone),
            owner("b", [0.20, 0.21, 0.22], per_class=coat_gone),
        )
    )
    assert len(v["harms"]) == 2
    assert (
        "Coat (a D_hard class) fell from 56% with every owner's rows: to 3% with a, 3% with b; "
        "so it does not tell the owners apart" in v["summary"]
    )
    assert "a's rows took" not in v["summary"]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"rows": 0, "counts": [0, 40, 0, 40]}, "holds none of the D_hard classes"),
        ({"rows": 0, "shortfall": "the method returned 0 of 32 rows"}, "returned 0 rows"),
        (
            {"rows": 12, "shortfall": "budget cap: 12 of the trainer's rows were left"},
            "budget exhausted: 12 of 32 rows",
        ),
    ],
)
def test_reason_for_a_zero_gain(kwargs: dict[str, Any], reason: str):
    v = compute_verdict(report(owner("z", [0.0, 0.0, 0.0], **kwargs)))
    (z,) = v["owners"]
    assert z["reason"].startswith(reason)
    assert f"Not worth paying: z (+0.0 pp): {reason}" in v["summary"]


def test_failed_owner_reason_is_its_error_on_one_line():
    v = compute_verdict(report(failed_owner("dead", "UNAVAILABLE: connection refused\ntrace")))
    (dead,) = v["owners"]
    assert dead["reason"] == "failed (UNAVAILABLE): UNAVAILABLE: connection refused"
    assert not dead["worth_paying"]


def test_best_value_per_row_then_per_price():
    owners = [
        owner("big", [0.30, 0.36, 0.33], rows=128),
        owner("small", [0.28, 0.34, 0.31], rows=16),
    ]
    v = compute_verdict(report(*owners))
    assert v["decision"] == "tied"
    assert (v["best_value"], v["value_basis"]) == ("small", "row")
    assert "Per row received, small gives the most: +1.94 pp per row (16 rows)." in v["summary"]
    # small's rows cost 10x more each: 16 x 10 = 160 against 128 x 1 = 128
    owners[0]["price"], owners[1]["price"] = 1.0, 10.0
    v = compute_verdict(report(*owners))
    assert (v["best_value"], v["value_basis"]) == ("big", "price")
    big = next(o for o in v["owners"] if o["name"] == "big")
    assert big["cost"] == 128 and big["gain_per_cost"] == pytest.approx(0.33 / 128)


def test_warnings_are_carried_and_absence_tolerated():
    assert compute_verdict(report(owner("a", [0.3] * 3)))["warnings"] == []
    v = compute_verdict(report(owner("a", [0.3] * 3), warnings=["only 12 D_hard-eval rows"]))
    assert v["warnings"] == ["only 12 D_hard-eval rows"]


def test_terminal_lines_lead_with_the_decision():
    lines = verdict_lines(report(owner("x", [0.3, 0.31, 0.32]), owner("z", [0.0] * 3, rows=0)))
    assert lines[0].startswith("Verdict: Pay x:")
    assert any("Not worth paying: z" in line for line in lines)


def test_owner_names_stay_plain_text_in_sentences():
    from trainer_node.verdict_sentences import decision_sentences

    v = compute_verdict(report(owner("<b>x</b>", [0.3, 0.31, 0.32])))
    assert sentence_text(decision_sentences(v)[0]).startswith("Pay <b>x</b>:")


def _budget_use_figure(report_dict: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The rows-revealed chart as a matplotlib figure rather than a PNG."""
    figures = []
    monkeypatch.setattr(plots, "to_data_uri", lambda fig: figures.append(fig) or "uri")
    assert plots.budget_use_chart(report_dict) == "uri"
    return figures[0]


def test_rows_revealed_chart_leaves_out_the_full_run(monkeypatch: pytest.MonkeyPatch):
    o = owner("all_in", [0.3] * 3, rows=32)
    full = {**o["requests"][0], "method": "full", "budget": 968, "rows_requested": 968,
            "rows_received": 968, "new_rows_charged": 968}  # fmt: skip
    o["requests"].append(full)
    o["budget"] = {"cap": 1000, "used": 1000, "left": 0}  # the ledger counts both
    ax = _budget_use_figure(report(o), monkeypatch).axes[0]
    cap_bar, revealed_bar = ax.patches
    assert (cap_bar.get_width(), revealed_bar.get_width()) == (1000, 32)
    (label,) = [t.get_text() for t in ax.texts]
    assert label == "32 / 1000  (+968 to the evaluation-only full run)"
    plots.plt.close("all")


def test_price_is_validated_and_named(tmp_path):
    raw = {
        "trainer": {"id": "t1", "run_dir": "runs/t1"},
        "data": {"source": "digits"},
        "model": {"gate": "topk", "num_experts": 2, "top_k": 1, "embed_dim": 8},
        "selection": {"methods": ["feature"], "budgets": [8]},
        "owners": [
            {"name": "a", "address": "127.0.0.1:5001", "price": 2.5},
            {"name": "b", "address": "127.0.0.1:5002"},
        ],
    }
    cfg = parse_config(raw, tmp_path)
    assert [o.price for o in cfg.owners] == [2.5, None]
    for bad in (-1, float("nan"), "cheap"):
        raw["owners"][1]["price"] = bad
        with pytest.raises(ConfigError, match=r"owners\[1\]\.price"):
            parse_config(raw, tmp_path)


def with_random(o: dict[str, Any], gains: list[float]) -> dict[str, Any]:
    """The owner with `random` results at the ranking budget, one per seed."""
    extra = [
        {**r, "method": "random", "dhard_gain": g} for r, g in zip(o["results"], gains, strict=True)
    ]
    return {**o, "results": o["results"] + extra}


def test_selection_is_shown_beside_random_rows_paired_by_seed():
    a = with_random(owner("a", [0.40, 0.44, 0.42]), [0.08, 0.12, 0.10])
    b = with_random(owner("b", [0.05, 0.03, 0.04]), [0.001, 0.0, -0.001])
    c = owner("c", [0.2, 0.2, 0.2])  # random not run for c: left out, not a zero
    rows = {r["owner"]: r for r in versus_random(report(a, b, c))}
    assert set(rows) == {"a", "b"}
    ra = rows["a"]
    assert ra["smart_gain"] == pytest.approx(0.42) and ra["random_gain"] == pytest.approx(0.10)
    assert ra["ratio"] == pytest.approx(4.2) and ra["difference"] == pytest.approx(0.32)
    # paired: every seed's difference is 0.32, so the interval is that point
    assert ra["difference_ci95"] == pytest.approx([0.32, 0.32])
    assert rows["b"]["ratio"] is None  # random gained ~0: a ratio would say nothing
    lines = versus_random_lines(report(a, b, c))
    assert (
        lines[0].startswith("Mycroft's selection vs random rows")
        and "feature vs random" in lines[0]
    )
    assert "+42.0 vs +10.0 pp (4.2×); difference +32.0 pp, 95% CI +32.0 to +32.0" in lines[1]


def test_no_random_comparison_when_random_is_the_ranking_method():
    r = report(with_random(owner("a", [0.4, 0.4]), [0.1, 0.1]))
    r["settings"]["rank_by"] = {**SETTING, "method": "random"}
    assert versus_random(r) == [] and versus_random_lines(r) == []


def test_simulation_truth_is_shown_beside_the_gains_and_rounds_are_weighted():
    a = with_random(owner("a", [0.40, 0.44, 0.42]), [0.08, 0.12, 0.10])
    (smart,) = a["requests"]
    # the smart purchase in two rounds of 16 and 16 rows: 100% and 50% needles -> 75% overall
    rounds = [
        {**smart, "rows_requested": 16, "rows_received": 16, "round": i, "truth": t}
        for i, t in (
            (1, {"needle": 1.0, "wrong_label": 0.0}),
            (2, {"needle": 0.5, "wrong_label": None}),
        )
    ]
    rand = {**smart, "method": "random", "truth": {"needle": 0.05, "wrong_label": 0.25}}
    a["requests"] = rounds + [rand]
    (row,) = versus_random(report(a))
    assert row["smart_truth"] == {"needle": 0.75, "wrong_label": 0.0}
    line = versus_random_lines(report(a))[1]
    assert line.endswith("needles 75% / 5%, wrong labels 0% / 25%")
    # without truth (a real run) nothing is added
    assert (
        "needles"
        not in versus_random_lines(report(with_random(owner("b", [0.4, 0.4]), [0.1, 0.1])))[1]
    )
