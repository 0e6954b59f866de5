"""The quality bench's core on tiny configurations (digits, 1 seed, 1 budget): it must produce
sane numbers end to end, measure every gain against trainer_node's control as the product does,
take its recipe from the scenario file, ask every owner for the same rows on the common basis,
and report needle precision and the test sub-population slice."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bench.quality_core import FULL, BenchConfig, picked_ids, run_seed
from bench.quality_families import FAMILIES
from bench.quality_report import Index, owners_table
from bench.quality_stats import summarise
from bench.quality_train import GUIDED, ORACLE
from moe.train import predict
from mycroft.scenario import load_scenario
from trainer_node.evaluate import Controls


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # a fresh baseline per test run: a stale cache must not hide a training bug
    monkeypatch.setattr("bench.quality_baseline.CACHE", tmp_path / "cache")


def test_tiny_digits_run_is_sane():
    cfg = BenchConfig(
        scenario="digits_four_owners",
        budgets=(0.25,),
        budget_basis="own",
        methods=("uniform", "random", "feature"),
        references=(FULL, GUIDED, ORACLE),
        seeds=(0,),
        base_epochs=8,
        finetune_epochs=2,
        oversample_to=128,
    )
    world, cells = run_seed(cfg, 0, log=lambda _m: None)
    owners = list(world.scen.owners)
    # no sub-population: full information and guided only, no oracle
    refs = (FULL, GUIDED)
    assert len(cells) == len(owners) * (len(cfg.methods) * len(cfg.budgets) + len(refs))
    assert {c.method for c in cells if c.budget_share is None} == set(refs)
    assert world.base.dhard_eval_accuracy == 0.0  # D_hard-eval is the baseline's mistakes
    # the product's controls, with the bench's recipe (oversampling included)
    assert isinstance(world.controls, Controls)
    assert world.controls.settings == cfg.training()
    assert world.controls.settings.oversample_to == 128
    base_d, base_t = world.base.dhard_eval_accuracy, world.base.test.accuracy
    for c in cells:
        assert 0.0 <= c.dhard_accuracy <= 1.0 and 0.0 <= c.test_accuracy <= 1.0
        assert math.isfinite(c.dhard_gain) and math.isfinite(c.test_gain)
        # gains are control-relative; the baseline-relative ones are kept beside them
        assert c.dhard_gain == pytest.approx(c.dhard_accuracy - c.control_dhard_accuracy)
        assert c.test_gain == pytest.approx(c.test_accuracy - c.control_test_accuracy)
        assert c.base_dhard_gain == pytest.approx(c.dhard_accuracy - base_d)
        assert c.base_test_gain == pytest.approx(c.test_accuracy - base_t)
        rows = len(world.scen.owners[c.owner])
        if c.rows:  # the control of the same size: same schedule and seed on own rows
            control = world.controls.get("finetune", 0, c.rows)
            assert c.control_dhard_accuracy == control.dhard_accuracy
            assert c.control_test_accuracy == control.test.accuracy
        assert c.needle_share is None and c.subpop_gain is None  # no sub-population
        if c.method in refs:
            assert c.rows == rows and c.picked == ""
        elif c.method == "uniform":  # class-blind reference: always sends its budget
            assert c.rows == round(0.25 * rows)
        elif c.owner == "d_irrelevant":  # holds no D_hard class: nothing to send, no change
            assert c.rows == 0 and c.dhard_gain == 0.0 and c.test_gain == 0.0
            assert c.base_dhard_gain == 0.0 and c.dhard_accuracy == base_d
            assert c.control_dhard_accuracy == base_d  # no control run: the model is unchanged
        else:
            assert c.rows == round(0.25 * rows)
            assert c.relevant_share == 1.0  # every strategy keeps to D_hard's classes
            ids = picked_ids({"picked": c.picked})
            assert len(ids) == c.rows and np.isin(ids, world.scen.owners[c.owner].row_ids).all()
    # uniform on the irrelevant owner sends rows, so it is measured against a real control run
    # (a budget below oversample_to: the control fine-tunes on oversample_to own rows)
    u_d = next(c for c in cells if c.owner == "d_irrelevant" and c.method == "uniform")
    assert 0 < u_d.rows < 128
    assert world.controls.has_run("finetune", 0, u_d.rows)  # run by the bench, not just now
    control = world.controls.get("finetune", 0, u_d.rows)
    assert control is world.controls.get("finetune", 0, 128)  # the oversampled size's control
    assert u_d.dhard_gain == pytest.approx(u_d.dhard_accuracy - control.dhard_accuracy)
    full_a = next(c for c in cells if c.owner == "a_relevant" and c.method == FULL)
    # 160 relevant rows must fix a good share of D_hard, beyond what own rows do
    assert full_a.dhard_gain > 0.2
    # full information: the control on as many own rows as the owner's full set
    assert world.controls.has_run("finetune", 0, full_a.rows)

    # the bench's controls are trainer_node's: the same own-row draw gives the same numbers
    product = Controls(world.base, world.data, cfg.training()).get("finetune", 0, 128)
    assert product.dhard_accuracy == control.dhard_accuracy
    assert product.test.accuracy == control.test.accuracy

    summary = summarise(cells, owners, cfg.methods, cfg.budgets)
    ix = Index(summary)
    assert set(summary["full_order"]) == set(owners)
    for a in summary["agreement"]:
        assert a["spearman"] is None or -1.0 <= a["spearman"] <= 1.0
    r = ix.get("a_relevant", "random", 0.25)
    assert r["recovered_of_full"] == pytest.approx(r["dhard_gain"]["mean"] / full_a.dhard_gain)
    cell = next(c for c in cells if c.owner == "a_relevant" and c.method == "random")
    assert r["dhard_gain"]["mean"] == pytest.approx(cell.dhard_gain)
    assert r["base_dhard_gain"]["mean"] == pytest.approx(cell.base_dhard_gain)
    assert "a_relevant" in owners_table(ix, owners, cfg.methods, 0.25)


def test_ablation_config_changes_only_what_it_names():
    cfg = FAMILIES["fashion_five_owners"].config()
    other = replace(cfg, score_checkpoint="final")
    assert other.training() == cfg.training()  # the trainer-side recipe is untouched
    assert other.scoring_epoch() is None and cfg.scoring_epoch() == 1


def test_the_scenario_file_is_the_recipe_and_overrides_are_stated():
    spec = load_scenario("fashion_subpop")
    cfg = FAMILIES["fashion_subpop"].config()
    t = cfg.training()
    assert t.epochs == spec.run.epochs and t.oversample_to == spec.run.oversample_to
    assert t.finetune_epochs == spec.run.finetune_epochs and t.finetune_lr == spec.run.finetune_lr
    assert cfg.model().num_experts == spec.run.model.experts
    assert cfg.scoring_epoch() == spec.run.score_epoch
    # owner sizes are the family's stated override (the file is sized for the demo)
    assert FAMILIES["fashion_subpop"].why
    assert [o.size for o in cfg.spec().owners] == [6000, 4000, 4000, 4000, 600]
    assert [o.subpop_share for o in cfg.spec().owners] == [o.subpop_share for o in spec.owners]
    # the class-scarce family's documented override, and the command line above it
    scarce = FAMILIES["fashion_five_owners"]
    assert scarce.why and scarce.config().recipe()["owner_sizes"]["a_relevant"] == 6000
    assert scarce.config().training().epochs == 6
    assert scarce.config(budgets=(0.01,), base_epochs=None).budgets == (0.01,)
    assert scarce.config(oversample_to=0).training().oversample_to == 0  # 0 is an override
    with pytest.raises(ValueError, match="owner_sizes"):
        replace(cfg, owner_sizes={"nobody": 3}).spec()


def test_subpop_run_reports_needles_slices_and_a_common_budget():
    cfg = BenchConfig(
        scenario="digits_subpop",
        budgets=(0.2,),
        methods=("random", "feature"),
        references=(FULL, GUIDED, ORACLE),
        seeds=(0,),
        finetune_epochs=2,
        oversample_to=128,
    )
    world, cells = run_seed(cfg, 0, log=lambda _m: None)
    scen = world.scen
    sizes = sorted(len(d) for d in scen.owners.values())
    assert world.reference_rows == sizes[len(sizes) // 2]  # the median owner, as simulate does
    asked = round(0.2 * world.reference_rows)
    for c in cells:
        held = len(scen.owners[c.owner])
        assert c.subpop_gain is not None and c.rest_gain is not None
        assert 0.0 <= c.subpop_accuracy <= 1.0 and 0.0 <= c.rest_accuracy <= 1.0
        if c.method == ORACLE:  # exactly the owner's needles
            assert c.rows == int(scen.needles(c.owner).sum())
            assert c.rows == 0 or c.needle_share == 1.0
        if c.budget_share is not None and c.rows:
            # every owner is asked for the same rows (all it has when it holds fewer)
            assert c.rows <= min(asked, held)
            ids = picked_ids({"picked": c.picked})
            truth = scen.truth_shares(c.owner, ids)
            assert c.needle_share == truth["needle"] and c.wrong_label_share == truth["wrong_label"]
        if c.method == "random" and held >= asked:
            assert c.rows == asked
    # the slices are the test rows the trainer never saw (inverted) and the rest
    base = world.controls.unchanged()
    correct = predict(world.base.model, scen.test.features) == scen.test.labels
    assert base.subpop_accuracy == pytest.approx(correct[scen.subpop_test].mean())
    assert base.rest_accuracy == pytest.approx(correct[~scen.subpop_test].mean())
    assert base.subpop_accuracy < base.rest_accuracy - 0.2
    # the oracle of an owner without needles sends nothing: the model is unchanged
    clean = next(c for c in cells if c.owner == "c_clean" and c.method == ORACLE)
    assert clean.rows == 0 and clean.dhard_gain == 0.0 and clean.subpop_gain == 0.0
    summary = summarise(cells, list(scen.owners), cfg.methods, cfg.budgets, ORACLE)
    assert summary["yardstick"] == ORACLE and set(summary["references"]) == {FULL, GUIDED, ORACLE}
