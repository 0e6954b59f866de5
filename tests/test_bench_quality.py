"""The quality bench's core on a tiny configuration (digits, 1 seed, 1 budget): it must produce
sane numbers end to end, and its summary must hold together."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from bench.quality_core import FULL, BenchConfig, run_seed
from bench.quality_report import Index, owners_table
from bench.quality_stats import summarise


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
    for c in cells:
        assert 0.0 <= c.dhard_accuracy <= 1.0 and 0.0 <= c.test_accuracy <= 1.0
        assert math.isfinite(c.dhard_gain) and math.isfinite(c.test_gain)
        rows = len(world.scen.owners[c.owner])
        if c.method == FULL:
            assert c.rows == rows
        elif c.method == "uniform":  # class-blind reference: always sends its budget
            assert c.rows == round(0.25 * rows)
        elif c.owner == "d_irrelevant":  # holds no D_hard class: nothing to send, no change
            assert c.rows == 0 and c.dhard_gain == 0.0
        else:
            assert c.rows == round(0.25 * rows)
            assert c.relevant_share == 1.0  # every strategy keeps to D_hard's classes
    full_a = next(c for c in cells if c.owner == "a_relevant" and c.method == FULL)
    assert full_a.dhard_gain > 0.2  # 160 relevant rows must fix a good share of D_hard

    summary = summarise(cells, owners, cfg.methods, cfg.budgets)
    ix = Index(summary)
    assert set(summary["full_order"]) == set(owners)
    for a in summary["agreement"]:
        assert a["spearman"] is None or -1.0 <= a["spearman"] <= 1.0
    r = ix.get("a_relevant", "random", 0.25)
    assert r["recovered_of_full"] == pytest.approx(r["dhard_gain"]["mean"] / full_a.dhard_gain)
    assert "a_relevant" in owners_table(ix, owners, cfg.methods, 0.25)


def test_ablation_config_changes_only_what_it_names():
    cfg = BenchConfig()
    other = replace(cfg, score_checkpoint="final")
    assert other.training() == cfg.training()  # the trainer-side recipe is untouched
