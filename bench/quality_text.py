"""Prose for the quality section: the choices made (from the config) and a discussion whose
claims are computed from the run, so a re-run cannot leave stale statements behind."""

from __future__ import annotations

from typing import Any

from bench.quality_core import BenchConfig
from bench.quality_report import Index, ci


def what_we_chose(family: dict[str, Any], finetune_seconds: float) -> str:
    """The recipe as run (resolved from the scenario file and the family's overrides)."""
    cfg = BenchConfig(**family["config"])
    recipe = family["recipe"]
    t = recipe["training"]
    sizes = ", ".join(f"{k} {v:,}" for k, v in recipe["owner_sizes"].items())
    budgets = ", ".join(f"{100 * b:g}%" for b in cfg.budgets)
    ckpt = (
        f"the checkpoint after epoch {recipe['score_epoch']} of the baseline's {t['epochs']}"
        if recipe["score_epoch"]
        else "the converged baseline"
    )
    basis = (
        f"of the median owner's {family['meta']['reference_rows']:,} rows, the same row count "
        "for every owner (as `mycroft simulate` asks)"
        if cfg.budget_basis == "common"
        else "of each owner's own rows"
    )
    override = f", except: {family['why']}" if family.get("why") else ""
    m = recipe["model"]
    return f"""**What we ran.** Scenario `{cfg.scenario}` ({family["description"]}), owners {sizes}.
The scenario file sets the recipe{override}. Budgets {budgets} {basis}
(`--budget-basis {cfg.budget_basis}`). Baseline: MoE ({m["gate"]}, {m["num_experts"]} experts,
top-{m["top_k"]}), {t["epochs"]} epochs, lr {t["lr"]:g}, batch {t["batch_size"]}, one torch
thread; trained once per seed and cached. Owners score with **{ckpt}** in the
privacy-preserving mode (D_hard-shared's embeddings and closed-form last-layer gradients only).
Trainer side: **fine-tune** from the baseline ({t["finetune_epochs"] or t["epochs"]} epochs at lr
{t["finetune_lr"] or t["lr"]:g} re-warmed, replaying own rows at {t["replay_fraction"]:.0%} of each
epoch; a budgeted fine-tune took {finetune_seconds:.1f} s); a subset under {t["oversample_to"]}
rows is repeated up to {t["oversample_to"]} per epoch. Every cell is measured against **the
control** of its size: the same schedule and seed on as many of the trainer's own rows
(`trainer_node.evaluate.Controls`'s draw; the bench also measures the test set's
sub-population slice where there is one, which the product cannot see). A method that returns no rows leaves the
model unchanged: gain 0."""


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def discussion(summary: dict[str, Any], ix: Index, owners: list[str], ablation: list[dict]) -> str:
    a, b_owner = owners[0], owners[1]
    budgets = sorted({r["budget_share"] for r in summary["rows"] if r["budget_share"]})
    methods = sorted({r["method"] for r in summary["rows"] if r["budget_share"]})
    ours = [m for m in ("feature", "gradient", "funcfeat") if m in methods]
    parts = [
        '*How to read it.* "Best of ours" is picked after the fact, per budget, among '
        f"{', '.join(ours)}, which flatters ours; with {len(summary['full_gain'])} owners one "
        "adjacent swap already gives Spearman 0.90."
    ]
    reach = []
    for s in budgets:
        best = ix.best(a, s)
        r = ix.get(a, best, s)
        reach.append(
            f"{100 * s:g}%: {best} {_fmt(r['x_random'])}× random, "
            f"{100 * (r['recovered_of_full'] or 0):.0f}% of full"
        )
    parts.append("Best of ours on owner (a) by budget — " + "; ".join(reach) + ".")
    if "uniform" in methods:
        vs_uniform = []
        for s in budgets:
            u = ix.get(a, "uniform", s)["dhard_gain"]["mean"]
            g = ix.get(a, ix.best(a, s), s)["dhard_gain"]["mean"]
            vs_uniform.append(f"{100 * s:g}%: {_fmt(g / u) if u > 1e-9 else '–'}×")
        parts.append(
            "Against uniform (class-blind) random instead, the best of ours gains "
            + ", ".join(vs_uniform)
            + " as much: part of what separates Mycroft from a naive draw is already in the "
            "class-stratified random baseline."
        )
    blind = [o for o in owners if 0.01 in budgets and ix.get(o, "random", 0.01)["rows"] == 0]
    if blind and "uniform" in methods and "random" in methods:
        d = blind[0]
        u, f = ix.get(d, "uniform", 0.01), ix.get(d, "full", None)
        best = ix.best(a, 0.01)
        ra, ba = ix.get(a, "random", 0.01), ix.get(a, best, 0.01)

        def both(r: dict[str, Any]) -> str:
            return (
                f"{100 * r['base_dhard_gain']['mean']:+.1f} vs the baseline, "
                f"{100 * r['dhard_gain']['mean']:+.1f} vs the control"
            )

        def x(num: dict[str, Any], den: dict[str, Any]) -> str:
            return f"{num['mean'] / den['mean']:.2f}×" if den["mean"] > 1e-9 else "–"

        parts.append(
            "**Why a control.** D_hard-eval is the baseline's own mistakes (accuracy 0 by "
            "construction), so any further fine-tuning wins part of it back by chance. Owner "
            f"({d}) holds no row of a D_hard class: uniform at 1% gains {both(u)}; its full "
            f"information {both(f)}. On owner (a) at 1%, random gains {both(ra)} and {best} "
            f"{both(ba)}: the ratio to random goes from "
            f"{x(ba['base_dhard_gain'], ra['base_dhard_gain'])} to "
            f"{x(ba['dhard_gain'], ra['dhard_gain'])}."
        )
    rnd = [ix.get(a, "random", s)["recovered_of_full"] or 0 for s in budgets]
    parts.append(
        "Class-stratified random alone recovers "
        + ", ".join(f"{100 * x:.0f}%" for x in rnd)
        + " of the full-information gain at those budgets: the trainer holds 16 rows of each "
        "scarce class, so any correctly labelled row of the right class helps, which caps how "
        "much better a selection can look."
    )
    if 0.01 in budgets and "random" in methods:
        rt = ix.get(a, "random", 0.01)["test_gain"]["mean"]
        ot = {m: ix.get(a, m, 0.01)["test_gain"]["mean"] for m in ours}
        tests = ", ".join(f"{m} {100 * t:+.1f}" for m, t in ot.items())
        if all(t < rt for t in ot.values()):
            parts.append(
                f"Selected rows cost test accuracy that random rows do not (owner (a), 1%, "
                f"test-set change vs the control: random {100 * rt:+.1f} points, {tests}); "
                "likely because rows matched to D_hard sit on the scarce classes' confusable "
                "boundary and pull predictions toward them."
            )
        else:
            parts.append(
                f"Test-set change vs the control on owner (a) at 1%: random {100 * rt:+.1f} "
                f"points, {tests}."
            )
        rc = ix.get(b_owner, "random", 0.01)["clean_share"]
        cleans = ", ".join(
            f"{m} {100 * (ix.get(b_owner, m, 0.01)['clean_share'] or 0):.0f}%" for m in ours
        )
        parts.append(
            f"On the noisy-label owner ({b_owner}) at 1%, correctly labelled rows: random "
            f"{100 * (rc or 0):.0f}%, {cleans}. 30% of that owner's labels are flipped, but a "
            "flip into a non-D_hard class takes the row out of every method's pool, so about "
            "0.7 / (0.7 + 0.3 · 3/9) = 88% of the rows it could send are correctly labelled."
        )
        rho = ", ".join(
            f"{m} {', '.join(_fmt(x) for x in ix.agreement(m, 0.01)['per_seed_spearman'])}"
            for m in methods
        )
        r_rho = ix.agreement("random", 0.01)["spearman"]
        o_rho = [ix.agreement(m, 0.01)["spearman"] for m in ours]
        o_best = max((v for v in o_rho if v is not None), default=None)
        if r_rho is not None and o_best is not None and r_rho >= o_best - 1e-9:
            cmp = (
                f"Random ranks owners at least as well as ours (mean-gain ρ {r_rho:.2f} vs "
                f"best of ours {o_best:.2f}): the ranking is decided by whether an owner holds "
                "clean rows of the D_hard classes at all."
            )
        else:
            cmp = f"Mean-gain ρ at 1%: random {_fmt(r_rho)}, best of ours {_fmt(o_best)}."
        parts.append(
            f"Ranking per seed at 1% (Spearman) — {rho}. {cmp} Owner (d) holds no row of a "
            "D_hard class, so every library strategy returns no rows and its budgeted gain is "
            "exactly 0."
        )
    paired = {
        f"{a}@{s}": {m: ix.get(a, m, s)["vs_random"] for m in ours if ix.get(a, m, s)["vs_random"]}
        for s in budgets
    }
    if paired:
        lines = []
        for s in budgets:
            p = paired.get(f"{a}@{s}", {})
            cells = ", ".join(f"{m} {ci(p[m], signed=True)}" for m in ours if m in p)
            lines.append(f"{100 * s:g}%: {cells}")
        sig = [
            f"{m} at {100 * s:g}%"
            for s in budgets
            for m in ours
            if (p := paired.get(f"{a}@{s}", {}).get(m))
            and p["ci95_half"] is not None
            and p["mean"] - p["ci95_half"] > 0
        ]
        parts.append(
            "**Does selection beat random?** Paired per seed (same data, baseline, D_hard "
            "and control), D_hard gain minus random's on owner (a), points, mean ± 95% CI — "
            + "; ".join(lines)
            + ". "
            + (
                "Significantly above random (CI excludes 0): " + ", ".join(sig) + "."
                if sig
                else "No method is significantly above random at any budget with these seeds."
            )
        )
    p1 = paired.get(f"{a}@0.01", {})
    if ablation and p1:
        half = [p1[m]["ci95_half"] or 0.0 for m in ours if m in p1]
        text = (
            "Ablation reading: paired differences against random at 1% on owner (a) have 95% CI "
            f"half-widths of {100 * min(half):.0f}–{100 * max(half):.0f} points, so ablation "
            "differences of a few points are within seed noise."
        )
        equal = next((r for r in ablation if r["overrides"].get("class_split") == "equal"), None)
        if equal and "random" in equal["dhard_gain_mean"]:
            drop = (
                ix.get(a, "random", 0.01)["dhard_gain"]["mean"] - equal["dhard_gain_mean"]["random"]
            )
            lead = max(p1[m]["mean"] for m in ours if m in p1)
            if drop > lead:
                text += (
                    f" Random loses {100 * drop:.1f} points when the budget is split equally "
                    "over classes instead of by D_hard's class counts, more than the best "
                    f"method's lead over random ({100 * lead:+.1f}): the class allocation is "
                    "worth more than the row-level choice here."
                )
        parts.append(text)
    return "\n\n".join(parts)


def subpop_discussion(ix: Index, owners: list[str], lead: str, noisy: str | None) -> str:
    """Claims computed from a sub-population run: how well picks hit needles, what the
    references say about the owner's worth, and how the ranking agrees with them."""
    budgets = sorted({r["budget_share"] for r in ix.s["rows"] if r["budget_share"]})
    methods = sorted({r["method"] for r in ix.s["rows"] if r["budget_share"]})
    ours = [m for m in ("feature", "gradient", "funcfeat") if m in methods]
    yard = ix.s["yardstick"]
    base_rate = ix.get(lead, "full", None)["needle_share"]
    parts = []
    for s in (x for x in budgets if x in (0.005, 0.01)):
        prec = ", ".join(
            f"{m} {100 * (ix.get(lead, m, s)['needle_share'] or 0):.0f}%" for m in methods
        )
        parts.append(
            f"Needle precision on owner ({lead}) at {100 * s:g}%: {prec} (the owner's rows are "
            f"{100 * (base_rate or 0):.0f}% needles, what a blind draw gets)."
        )
    refs = ", ".join(
        f"{r} {100 * ix.get(lead, r, None)['dhard_gain']['mean']:+.1f}" for r in ix.s["references"]
    )
    best = ix.best(lead, 0.01) if 0.01 in budgets else ours[0]
    b = ix.get(lead, best, 0.01 if 0.01 in budgets else budgets[0])
    parts.append(
        f"References on owner ({lead}), D_hard gain vs control in points: {refs}; the best of "
        f"ours ({best}) gains {100 * b['dhard_gain']['mean']:+.1f} at 1%, "
        f"{_fmt(b['recovered_of_full'])}× full information and "
        f"{_fmt(b[f'recovered_of_{yard}'])}× the yardstick ({yard}) in ratio of means."
    )
    if noisy is not None and 0.01 in budgets:
        own = ix.get(noisy, "full", None)["wrong_label_share"]
        picks = ", ".join(
            f"{m} {100 * (ix.get(noisy, m, 0.01)['wrong_label_share'] or 0):.0f}%" for m in methods
        )
        parts.append(
            f"Wrong labels among the noisy owner's ({noisy}) picks at 1%: {picks} (the owner's "
            f"rows: {100 * (own or 0):.0f}%)."
        )
    if 0.01 in budgets:
        rho = ", ".join(
            f"{m} {_fmt(ix.agreement(m, 0.01)['spearman'])} / "
            f"{_fmt(ix.agreement(m, 0.01)['spearman_full'])}"
            for m in methods
        )
        parts.append(
            f"Owner ranking at 1%, Spearman vs the yardstick ({' > '.join(ix.s['yardstick_order'])})"
            f" / vs full information ({' > '.join(ix.s['full_order'])}): {rho}."
        )
    return "\n\n".join(parts)
