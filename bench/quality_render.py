"""The `quality` section of docs/BENCHMARKS.md from bench/results/quality.json: what the
bench measures and how the yardstick is defined, then per family a summary table at the
headline budgets and the detailed tables."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench._report import ROOT
from bench.quality_ablation import ablation_table, separate_ablation
from bench.quality_families import HEADLINES
from bench.quality_report import (
    Index,
    agreement_table,
    ci,
    owner_table,
    owners_table,
    plot,
    ratio,
    recovery_table,
    share_table,
    slice_table,
    summary_table,
    timing_table,
)
from bench.quality_text import discussion, subpop_discussion, what_we_chose

IMG = ROOT / "docs" / "img"
HEADLINE = 0.01

INTRO = """Does budgeted selection beat random at tiny budgets, pick the rare rows the trainer
needs, and rank owners as their true utility does? Two families of situations: **class-scarce**
(the trainer is short of whole classes; D_hard is its failures on them) and **sub-population**
(the trainer's model fails on a slice of every class that its data lacks, e.g. colour-inverted
images or a within-class cluster, and owners hold that slice as rare *needles*; D_hard is its
validation failures on all classes). Each seed redraws the scenario's rows, retrains the
baseline and rebuilds D_hard; numbers are mean ± 95% t-interval over seeds (never clamped:
shares above 100% and paired differences keep their real interval), gains in points against
**the control** (the same fine-tuning schedule and seed on as many of the trainer's own rows,
as trainer_node reports them).

**Yardstick: an owner's true utility.** References run for every owner, each against its
control: *full information* (fine-tune on all of the owner's rows) and, where the scenario has a
sub-population, *oracle needles* (fine-tune on exactly the owner's sub-population rows, labels
as the owner holds them; only a simulation knows them); `--references full,guided,oracle` adds
*guided* (all of the owner's rows for full information's number of steps, each draw weighted
half uniformly, half by a softmax (temperature 0.05) of its cosine similarity to the
D_hard-shared rows of its label in the scoring checkpoint's embeddings: what a trainer holding
every row could do). On sub-population scenarios full information is diluted by the owner's
clean majority (and by its wrong labels), so a few dozen well-chosen rows come close to it or
beat it and a ranking judged against it is distorted: there the **yardstick is oracle
needles**, which values an owner by the needles it holds and their label quality, at a
fraction of full information's cost. On class-scarce scenarios every clean row of a D_hard
class is what the trainer lacks, so the yardstick stays full information. Ranking agreement
(Spearman ρ / Kendall τ-b over owners, from mean gains) is against the yardstick; the tables
keep full information beside it."""


def headline(budgets: list[float]) -> float:
    """The budget the verdict and per-owner tables state: 1%, or the nearest one run."""
    return min(budgets, key=lambda b: abs(b - HEADLINE))


def verdict(ix: Index, lead: str, methods, at: float) -> dict[str, Any]:
    yard = ix.s["yardstick"]
    best = ix.best(lead, at)
    r = ix.get(lead, best, at)
    rho = {m: ix.agreement(m, at)["spearman"] for m in methods}
    rec = r[f"recovered_of_{yard}"]
    return {
        "best_method_lead_owner": best,
        "yardstick": yard,
        "recovered_of_yardstick": rec,
        "recovered_of_full": r["recovered_of_full"],
        "x_random": r["x_random"],
        "target_recovery_met": rec is not None and rec >= 0.8,
        "target_x_random_met": r["x_random"] is not None and r["x_random"] >= 1.5,
        "budget_share": at,
        "spearman": rho,
        "target_spearman_met_by": [m for m, v in rho.items() if v is not None and v >= 0.9],
    }


def _run_line(fam: dict[str, Any]) -> str:
    meta = fam["meta"]
    return (
        f"Run {meta['when']}: seeds {', '.join(map(str, fam['config']['seeds']))}, {meta['seconds'] / 60:.1f} min "
        f"wall ({meta['cpu_seconds'] / 60:.1f} min CPU) on {meta['machine']}. D_hard-eval "
        f"{meta['dhard_eval']} rows per seed (mean), D_hard-shared {meta['dhard_shared']}; the "
        f"baseline scores 0 on D_hard-eval by construction and {100 * meta['base_test']:.1f}% "
        "on the test set."
    )


def family_markdown(name: str, fam: dict[str, Any]) -> str:
    cfg = fam["config"]
    owners, methods, budgets = fam["owners"], list(cfg["methods"]), list(cfg["budgets"])
    lead, noisy, subpop = owners[0], fam.get("noisy_owner"), fam["has_subpop"]
    ix = Index(fam["summary"])
    at = headline(budgets)
    fam["verdict"] = v = verdict(ix, lead, methods, at)
    heads = [b for b in HEADLINES if b in budgets] or [at]
    budgeted = [c["train_seconds"] for c in fam["cells"] if c["budget_share"] and c["rows"]]
    kind = "sub-population" if subpop else "class-scarce"
    parts = [
        f"### {kind.capitalize()}: `{name}`",
        what_we_chose(fam, float(np.mean(budgeted)) if budgeted else 0.0),
        _run_line(fam),
        f"**At a glance** (owner ({lead}); gains vs control in points; × random: ratio of "
        "mean gains; − random: paired per-seed difference; % of a reference: per-seed ratio, "
        "seeds where the reference gained nothing left out)",
        summary_table(ix, lead, noisy, methods, heads, subpop),
        f"**D_hard gain vs control per owner at {100 * at:g}%** (references: "
        f"{', '.join(ix.s['references'])}; yardstick **{ix.s['yardstick']}**)",
        owners_table(ix, owners, methods, at),
        f"**Owner ({lead}): D_hard gain vs control by budget**",
        owner_table(ix, lead, methods, budgets, "dhard_gain"),
        f"**Owner ({lead}): share of the yardstick ({ix.s['yardstick']}) recovered / × random**",
        recovery_table(ix, lead, methods, budgets, ix.s["yardstick"]),
        f"**Owner ranking against the yardstick** ({' > '.join(ix.s['yardstick_order'])}): "
        "Spearman ρ / Kendall τ-b",
        agreement_table(ix, methods, budgets),
    ]
    if ix.s["yardstick"] != "full":
        parts += [
            f"Against full information ({' > '.join(ix.s['full_order'])}):",
            agreement_table(ix, methods, budgets, "full"),
        ]
    if subpop:
        parts += [
            "**Needle precision** (share of the picks in the owner's sub-population; full: the "
            "owner's own share)",
            share_table(ix, owners, methods, heads, "needle_share"),
            f"**Owner ({lead}): test-set gain on the sub-population slice / on the rest** "
            "(points vs control)",
            slice_table(ix, lead, methods, heads),
        ]
    if noisy:
        parts += [
            "**Wrong-label share of the picks** (full: the owner's own share)",
            share_table(ix, owners, methods, heads, "wrong_label_share"),
        ]
    parts += [
        f"**Selection time on owner ({lead})** (ms per request, owner side, after embedding)",
        timing_table(ix, lead, methods, budgets, fam["meta"]["embed_seconds_lead"]),
        f"![quality plot](img/quality_{name}.png)",
    ]
    ablation = separate_ablation(fam)
    if ablation:
        as_run = [ix.get(lead, m, at)["dhard_gain"]["mean"] for m in methods]
        parts += [
            f"**Ablation on owner ({lead}) at 1%** (D_hard gain vs control, points, each "
            "variant against its own control)",
            ablation_table(ablation, methods, as_run),
        ]
    text = (
        subpop_discussion(ix, owners, lead, noisy)
        if subpop
        else discussion(fam["summary"], ix, owners, ablation)
    )
    best = ix.get(lead, v["best_method_lead_owner"], at)
    recovered = ci(best["recovered_per_seed_" + v["yardstick"]])
    parts.append(
        f"**Verdict** at {100 * at:g}% on owner ({lead}): best of ours **{v['best_method_lead_owner']}**, "
        f"{recovered}% of the yardstick per seed, {ratio(v['x_random'])} random; Spearman ≥ 0.9 met by "
        f"{', '.join(v['target_spearman_met_by']) or 'no method'}.\n\n{text}"
    )
    return "\n\n".join(parts)


def render(out: dict[str, Any], plots: bool = True) -> str:
    """The markdown section (and, with `plots`, one plot per family)."""
    run = out["run"]
    parts = [
        "## Selection quality (`bench/quality.py`)",
        INTRO,
        f"Command `{run['command']}`, {run['when']}; {run['seconds'] / 60:.1f} min wall "
        f"for {', '.join(out['families'])}. {run['time_note']}",
    ]
    for name, fam in out["families"].items():
        if plots:
            cfg = fam["config"]
            plot(
                Index(fam["summary"]),
                fam["owners"],
                cfg["methods"],
                cfg["budgets"],
                headline(list(cfg["budgets"])),
                IMG / f"quality_{name}.png",
            )
        parts.append(family_markdown(name, fam))
    return "\n\n".join(parts)
