"""The quality bench's core on a tiny configuration (digits, 1 seed, 1 budget): it must produce
sane numbers end to end, measure every gain against trainer_node's control as the product does,
and its summary must hold together."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from bench.quality_core import FULL, BenchConfig, run_seed
from bench.quality_report import Index, owners_table
from bench.quality_stats import summarise
from trainer_node.evaluate import Controls


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    # a fresh baseline per test run: a stale cache must not hide a training bug
    monkeypatch.setattr("bench.quality_core.CACHE", tmp_path / "cache")


def test_tiny_digits_run_is_sane():
    cfg = BenchConfig(
        scenario="digits_four_owners",
        owner_sizes={},  # the file's sizes
        budgets=(0.25,),
        methods=("uniform", "random", "feature"),
        seeds=(0,),
        base_epochs=8,
        finetune_epochs=2,
        oversample_to=128,
    )
    world, cells = run_seed(cfg, 0, log=lambda _m: None)
    owners = list(world.scen.owners)
    assert len(cells) == len(owners) * (len(cfg.methods) * len(cfg.budgets) + 1)
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
        if c.method == FULL:
            assert c.rows == rows
        elif c.method == "uniform":  # class-blind reference: always sends its budget
            assert c.rows == round(0.25 * rows)
        elif c.owner == "d_irrelevant":  # holds no D_hard class: nothing to send, no change
            assert c.rows == 0 and c.dhard_gain == 0.0 and c.test_gain == 0.0
            assert c.base_dhard_gain == 0.0 and c.dhard_accuracy == base_d
            assert c.control_dhard_accuracy == base_d  # no control run: the model is unchanged
        else:
            assert c.rows == round(0.25 * rows)
            assert c.relevant_share == 1.0  # every strategy keeps to D_hard's classes
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
    cfg = BenchConfig()
    other = replace(cfg, score_checkpoint="final")
    assert other.training() == cfg.training()  # the trainer-side recipe is untouched
