"""Markdown tables and the plot for the quality bench (from quality_stats.summarise output)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.quality_core import FULL

OURS = ("feature", "gradient", "funcfeat")


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def ci(stat: dict[str, Any] | None, scale: float = 100.0, signed: bool = False) -> str:
    if stat is None:
        return "–"
    half = stat["ci95_half"]
    m = f"{scale * stat['mean']:+.1f}" if signed else f"{scale * stat['mean']:.1f}"
    return m if half is None else f"{m} ± {scale * half:.1f}"


def ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def budget_label(share: float | None, rows: int) -> str:
    return f"full ({rows})" if share is None else f"{100 * share:g}% ({rows})"


class Index:
    def __init__(self, summary: dict[str, Any]) -> None:
        self.s = summary
        self.by = {(r["owner"], r["method"], r["budget_share"]): r for r in summary["rows"]}

    def get(self, owner: str, method: str, share: float | None) -> dict[str, Any]:
        return self.by[(owner, method, share)]

    def best(self, owner: str, share: float) -> str:
        """Our best method at this budget for this owner, by mean D_hard gain."""
        ours = [m for m in OURS if (owner, m, share) in self.by] or ["random"]
        return max(ours, key=lambda m: self.get(owner, m, share)["dhard_gain"]["mean"])

    def agreement(self, method: str, share: float) -> dict[str, Any]:
        return next(
            a for a in self.s["agreement"] if a["method"] == method and a["budget_share"] == share
        )


def owner_table(
    ix: Index, owner: str, methods, budgets, metric: str, control: str | None = None
) -> str:
    """One row per budget, one column per method; `control`: a last column with that metric of
    the control run (the control of methods[0]'s subset size, which returns its full budget)."""
    extra = 1 if control else 0
    signed = metric.endswith("gain")
    head = "| budget (rows) | " + " | ".join(methods) + (" | control |" if control else " |")
    lines = [head, "|" + "---|" * (len(methods) + 1 + extra)]
    for share in budgets:
        rows = ix.get(owner, methods[0], share)["rows"]
        cells = [ci(ix.get(owner, m, share)[metric], signed=signed) for m in methods]
        if control:
            cells.append(ci(ix.get(owner, methods[0], share)[control]))
        lines.append(f"| {budget_label(share, rows)} | " + " | ".join(cells) + " |")
    full = ix.get(owner, FULL, None)
    last = f" {ci(full[control])} |" if control else ""
    lines.append(
        f"| {budget_label(None, full['rows'])} | {ci(full[metric], signed=signed)} "
        "(full information) |" + " |" * (len(methods) - 1) + last
    )
    return "\n".join(lines)


def _budget_grid(
    methods: list[str],
    budgets: list[float],
    header: Callable[[str], str],
    cell: Callable[[str, float], str],
) -> str:
    """A table with a row per budget share and a column per method."""
    lines = [
        "| budget | " + " | ".join(header(m) for m in methods) + " |",
        "|" + "---|" * (len(methods) + 1),
    ]
    for share in budgets:
        lines.append(f"| {100 * share:g}% | " + " | ".join(cell(m, share) for m in methods) + " |")
    return "\n".join(lines)


def recovery_table(ix: Index, owner: str, methods, budgets, ref: str = FULL) -> str:
    def cell(m: str, share: float) -> str:
        r = ix.get(owner, m, share)
        return f"{ci(r[f'recovered_per_seed_{ref}'])}% / {ratio(r['x_random'])}"

    return _budget_grid(methods, budgets, lambda m: f"{m}: % of {ref} / × random", cell)


def agreement_table(ix: Index, methods, budgets, ref: str | None = None) -> str:
    """Spearman ρ / Kendall τ-b of the owner ranking against `ref` (default: the yardstick)."""
    ref = ref or ix.s["yardstick"]

    def cell(m: str, share: float) -> str:
        a = ix.agreement(m, share)
        return f"{_num(a[f'spearman_{ref}'])} / {_num(a[f'kendall_tau_{ref}'])}"

    return _budget_grid(methods, budgets, lambda m: f"{m} ρ / τ", cell)


def references(ix: Index) -> list[str]:
    """The references run for every owner (full first, the yardstick among them)."""
    return list(ix.s["references"])


def owners_table(ix: Index, owners: list[str], methods, share: float) -> str:
    refs = references(ix)
    cols = list(methods) + refs
    lines = [
        "| owner | " + " | ".join(cols) + " | best ours | clean rows: random / best ours |",
        "|" + "---|" * (len(cols) + 3),
    ]
    for o in owners:
        cells = [ci(ix.get(o, m, share)["dhard_gain"], signed=True) for m in methods]
        cells += [ci(ix.get(o, r, None)["dhard_gain"], signed=True) for r in refs]
        best = ix.best(o, share)
        b, r = ix.get(o, best, share), ix.get(o, "random", share)
        clean = f"{pct(r['clean_share'], 0)}% / {pct(b['clean_share'], 0)}%"
        lines.append(f"| {o} | " + " | ".join(cells) + f" | {best} | {clean} |")
    return "\n".join(lines)


def share_table(ix: Index, owners: list[str], methods, budgets, field: str) -> str:
    """A share of the picks (needle precision, wrong-label share), owner × method, one column
    per (method, budget); references give the owner's own share for comparison."""
    cols = [(m, s) for s in budgets for m in methods]
    lines = [
        "| owner | " + " | ".join(f"{m} {100 * s:g}%" for m, s in cols) + f" | {FULL} |",
        "|" + "---|" * (len(cols) + 2),
    ]
    for o in owners:
        cells = [pct(ix.get(o, m, s)[field], 0) for m, s in cols]
        cells.append(pct(ix.get(o, FULL, None)[field], 0))
        lines.append(f"| {o} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slice_table(ix: Index, owner: str, methods, budgets) -> str:
    """Gains on the test set's sub-population slice and on the rest, vs the control."""

    def cell(m: str, share: float | None) -> str:
        r = ix.get(owner, m, share)
        return f"{ci(r['subpop_gain'], signed=True)} / {ci(r['rest_gain'], signed=True)}"

    grid = _budget_grid(list(methods), list(budgets), lambda m: f"{m}: slice / rest", cell)
    refs = " · ".join(f"{r} {cell(r, None)}" for r in references(ix))
    return f"{grid}\n\nReferences (slice / rest): {refs}."


def summary_table(
    ix: Index, lead: str, noisy: str | None, methods, budgets, has_subpop: bool
) -> str:
    """The family at a glance: one row per (budget, method) on the lead owner."""
    yard = ix.s["yardstick"]
    head = ["budget", "method", "D_hard gain", "× random", "− random (paired)"]
    head += [f"% of {yard}", f"% of {FULL}"] if yard != FULL else [f"% of {FULL}"]
    head += ["needle precision"] if has_subpop else []
    head += [f"wrong labels ({noisy})"] if noisy else []
    head += [f"ρ vs {yard}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for share in budgets:
        for m in methods:
            r = ix.get(lead, m, share)
            cells = [f"{100 * share:g}% ({r['rows']})", m, ci(r["dhard_gain"], signed=True)]
            cells += [
                ratio(r["x_random"]),
                ci(r["vs_random"], signed=True) if m != "random" else "–",
            ]
            cells += [f"{ci(r[f'recovered_per_seed_{yard}'])}%"]
            cells += [f"{ci(r[f'recovered_per_seed_{FULL}'])}%"] if yard != FULL else []
            cells += [f"{pct(r['needle_share'], 0)}%"] if has_subpop else []
            cells += [f"{pct(ix.get(noisy, m, share)['wrong_label_share'], 0)}%"] if noisy else []
            cells += [_num(ix.agreement(m, share)["spearman"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(ix: Index, owner: str, methods, budgets, embed_seconds: float) -> str:
    lines = ["| budget | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for share in budgets:
        cells = [f"{1000 * ix.get(owner, m, share)['select_seconds']:.1f}" for m in methods]
        lines.append(f"| {100 * share:g}% | " + " | ".join(cells) + " |")
    lines.append(
        f"\nEmbedding owner (a)'s rows with the scoring checkpoint: {embed_seconds:.2f} s."
    )
    return "\n".join(lines)


def plot(ix: Index, owners: list[str], methods, budgets, headline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = owners[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, m in enumerate(methods):
        rs = [ix.get(a, m, s) for s in budgets]
        # a small multiplicative offset per method so the error bars do not hide each other
        x = [r["rows"] * (1 + 0.04 * (k - (len(methods) - 1) / 2)) for r in rs]
        y = [100 * r["dhard_accuracy"]["mean"] for r in rs]
        err = [100 * (r["dhard_accuracy"]["ci95_half"] or 0.0) for r in rs]
        left.errorbar(x, y, yerr=err, marker="o", capsize=3, label=m)
    ctl = [ix.get(a, methods[0], s)["control_dhard_accuracy"]["mean"] for s in budgets]
    ticks = [ix.get(a, methods[0], s)["rows"] for s in budgets]
    left.plot(
        ticks,
        [100 * c for c in ctl],
        color="gray",
        ls=":",
        marker="x",
        label="control (own rows, same schedule)",
    )
    for ref, colour in zip(
        dict.fromkeys([FULL, ix.s["yardstick"]]), ("k", "tab:purple"), strict=False
    ):
        acc = ix.get(a, ref, None)["dhard_accuracy"]
        left.axhline(100 * acc["mean"], color=colour, ls="--", label=f"{ref} ({a})")
        if acc["ci95_half"] is not None:
            lo, hi = 100 * (acc["mean"] - acc["ci95_half"]), 100 * (acc["mean"] + acc["ci95_half"])
            left.axhspan(lo, hi, color=colour, alpha=0.08)
    left.set_xscale("log")
    left.set_xticks(ticks, [str(t) for t in ticks])
    left.minorticks_off()
    left.set_xlabel(f"budget (rows of {a})")
    left.set_ylabel("accuracy on held-out D_hard (%)")
    left.set_title(f"Owner {a}: D_hard accuracy vs budget (mean ± 95% CI)")
    left.legend(fontsize=8)
    refs = references(ix)
    cols = list(methods) + refs
    width = 0.8 / len(cols)
    for j, m in enumerate(cols):
        share = None if m in refs else headline
        g = [ix.get(o, m, share)["dhard_gain"] for o in owners]
        right.bar(
            [i + (j - len(cols) / 2 + 0.5) * width for i in range(len(owners))],
            [100 * s["mean"] for s in g],
            width,
            yerr=[100 * (s["ci95_half"] or 0.0) for s in g],
            capsize=2,
            label=m if m in refs else f"{m} @ {100 * headline:g}%",
        )
    right.set_xticks(range(len(owners)), owners, rotation=15, fontsize=8)
    right.set_ylabel("D_hard accuracy gain vs control (points)")
    right.set_title("Gain over the control, per owner")
    right.axhline(0, color="k", lw=0.5)
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
