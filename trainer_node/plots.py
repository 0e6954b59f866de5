"""The HTML report's charts: matplotlib (Agg) figures from a report dict, as base64 PNG data URIs.

Each chart function returns None when the report has nothing to draw for it (no ranked owner,
a single budget, ...), so the page simply leaves that section out. Gains and accuracies are drawn
in percent / percentage points; the JSON keeps fractions.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from trainer_node.config import FULL_METHOD  # noqa: E402
from trainer_node.verdict import primary, primary_results, revealed_rows  # noqa: E402

MAX_PANELS = 6  # budget small multiples: the top owners only, so the figure stays readable
BEFORE, AFTER = "#9aa5b1", "#2f6db5"
METHOD_COLORS = ["#2f6db5", "#d9822b", "#3d9970", "#b03a48", "#7d5ba6", "#8c6d31"]


def label(text: str) -> str:
    """Plain text for matplotlib: a '$' from a class or owner name must not start mathtext."""
    return text.replace("$", r"\$")


def to_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pp(x: float | None) -> float:
    return math.nan if x is None else 100.0 * x


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def gain_chart(report: dict[str, Any]) -> str | None:
    """D_hard gain (95% CI over seeds) and test-set change (± std) per owner, ranked order."""
    ranking = report["ranking"]
    if not ranking:
        return None
    owners = {o["name"]: o for o in report["owners"]}
    names = [r["owner"] for r in ranking]
    gains = [_pp(r["dhard_gain_mean"]) for r in ranking]
    lo = [g - _pp(r["ci95"][0]) if r["ci95"] else 0.0 for g, r in zip(gains, ranking, strict=True)]
    hi = [_pp(r["ci95"][1]) - g if r["ci95"] else 0.0 for g, r in zip(gains, ranking, strict=True)]
    tests, test_err = [], []
    for r in ranking:
        u = next(
            (
                u
                for u in owners[r["owner"]]["utility"]
                if (u["method"], u["budget"], u["training_mode"])
                == (r["method"], r["budget"], r["training_mode"])
            ),
            None,
        )
        tests.append(_pp(r["test_gain_mean"]))
        test_err.append(_pp(u["test_gain_std"]) if u else 0.0)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2.5), 3.4))
    x = range(len(names))
    w = 0.38
    ax.bar(
        [i - w / 2 for i in x],
        gains,
        w,
        yerr=[lo, hi],
        capsize=4,
        color=AFTER,
        label="D_hard-eval gain (95% CI)",
    )
    ax.bar(
        [i + w / 2 for i in x],
        tests,
        w,
        yerr=test_err,
        capsize=4,
        color=BEFORE,
        label="test-set change (± std)",
    )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(
        list(x),
        [f"#{r['rank']} {label(r['owner'])}" for r in ranking],
        rotation=20,
        ha="right",  # long owner names otherwise run into each other
    )
    ax.set_ylabel("percentage points over the control")
    method, budget, mode = primary(report)
    ax.set_title(f"Utility gain per owner ({label(method)}, budget {budget}, {mode})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return to_data_uri(fig)


def _control_by_budget(owner: dict[str, Any], mode: str) -> dict[int, float]:
    """Budget -> mean D_hard-eval accuracy of the control runs behind that budget's gains."""
    values: dict[int, list[float]] = {}
    for r in owner.get("results", []):
        if (
            r["training_mode"] == mode
            and r["method"] != FULL_METHOD
            and r["control_dhard_accuracy"] is not None
        ):
            values.setdefault(r["budget"], []).append(r["control_dhard_accuracy"])
    return {b: sum(v) / len(v) for b, v in sorted(values.items())}


def budget_chart(report: dict[str, Any]) -> str | None:
    """D_hard accuracy against budget, one line per method, one panel per top owner."""
    budgets = report["settings"]["budgets"]
    if len(budgets) < 2 or not report["ranking"]:
        return None
    mode = primary(report)[2]
    owners = {o["name"]: o for o in report["owners"]}
    top = [r["owner"] for r in report["ranking"]][:MAX_PANELS]
    methods = [m for m in report["settings"]["methods"] if m != FULL_METHOD]
    base = report["baseline"]["dhard_eval_accuracy"]
    cols = min(3, len(top))
    rows = math.ceil(len(top) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols + 0.6, 2.9 * rows + 0.4), sharey=True, squeeze=False
    )
    for ax in axes.flat[len(top) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, top, strict=False):
        utility = [u for u in owners[name]["utility"] if u["training_mode"] == mode]
        for i, method in enumerate(methods):
            pts = sorted((u["budget"], u) for u in utility if u["method"] == method)
            if not pts:
                continue
            ax.errorbar(
                [b for b, _ in pts],
                [_pp(u["dhard_accuracy_mean"]) for _, u in pts],
                yerr=[_pp(u["dhard_gain"]["std"]) for _, u in pts],
                marker="o",
                capsize=3,
                color=METHOD_COLORS[i % len(METHOD_COLORS)],
                label=label(method),
            )
        full = next((u for u in utility if u["method"] == FULL_METHOD), None)
        if full is not None:
            ax.axhline(
                _pp(full["dhard_accuracy_mean"]),
                color="black",
                ls="--",
                lw=1,
                label="full data (all its rows)",
            )
        control = _control_by_budget(owners[name], mode)
        if control:
            ax.plot(
                list(control),
                [_pp(v) for v in control.values()],
                color="gray",
                ls="-.",
                marker="x",
                lw=1,
                label="control (own rows, same schedule)",
            )
        if base is not None:
            ax.axhline(_pp(base), color="gray", ls=":", lw=1, label="baseline (before)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.set_title(f"#{owners[name]['rank']} {label(name)}", fontsize=10)
        ax.set_xlabel("budget (rows)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("D_hard-eval accuracy (%)")
    # One legend for all panels: per-panel legends covered the lines.
    handles: dict[str, Any] = {}
    for ax in axes.flat[: len(top)]:
        for h, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, h)
    if len(top) < axes.size:  # an empty panel slot: put the legend there
        spare = axes.flat[len(top)]
        spare.set_visible(True)
        spare.axis("off")
        spare.legend(handles.values(), handles.keys(), loc="center", fontsize=9, frameon=False)
    else:
        fig.legend(
            handles.values(),
            handles.keys(),
            loc="lower center",
            ncol=len(handles),
            fontsize=9,
            frameon=False,
            bbox_to_anchor=(0.5, -0.06),
        )
    fig.suptitle(f"D_hard accuracy against budget ({mode}; mean ± std over seeds)", fontsize=11)
    fig.tight_layout()
    return to_data_uri(fig)


def best_owner_results(report: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """(top-ranked owner, its primary results), or None when nothing was ranked or measured."""
    if not report["ranking"]:
        return None
    best = report["ranking"][0]["owner"]
    owner = next(o for o in report["owners"] if o["name"] == best)
    results = primary_results(owner, report)
    return (best, results) if results else None


def per_class_chart(report: dict[str, Any]) -> str | None:
    """Test-set accuracy per class: baseline vs the best owner's subset (mean over seeds)."""
    found = best_owner_results(report)
    if found is None:
        return None
    best, results = found
    names = report["class_names"]
    before = [_pp(a) for a in report["baseline"]["per_class_accuracy"]]
    after = [_pp(_mean([r["per_class_accuracy"][c] for r in results])) for c in range(len(names))]
    hard = set(report["dhard"]["classes"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(names) + 2.5), 3.3))
    x = range(len(names))
    w = 0.4
    ax.bar([i - w / 2 for i in x], before, w, color=BEFORE, label="baseline")
    ax.bar([i + w / 2 for i in x], after, w, color=AFTER, label=f"with {label(best)}'s rows")
    ax.set_xticks(list(x), [label(n) for n in names], rotation=45 if len(names) > 12 else 0)
    for tick, name in zip(ax.get_xticklabels(), names, strict=True):
        if name in hard:  # the classes D_hard is made of: what the rows should fix
            tick.set_fontweight("bold")
            tick.set_color("#b03a48")
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Per-class accuracy before and after (D_hard classes in red)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return to_data_uri(fig)


def routing_after(report: dict[str, Any]) -> tuple[str, list[float], float] | None:
    """(best owner, mean expert share, mean MRI) over the best owner's primary results."""
    found = best_owner_results(report)
    if found is None:
        return None
    best, results = found
    n = len(results)
    shares = [
        sum(r["routing"]["expert_share"][e] for r in results) / n
        for e in range(len(results[0]["routing"]["expert_share"]))
    ]
    mri = sum(r["routing"]["max_routing_imbalance"] for r in results) / n
    return best, shares, mri


def routing_chart(report: dict[str, Any]) -> str | None:
    """Share of routed test inputs per expert, baseline vs after the best owner's rows."""
    before = report["baseline"]["routing"]
    after = routing_after(report)
    k = len(before["expert_share"])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * k + 2.5), 3.0))
    x = range(k)
    w = 0.4 if after else 0.6
    ax.bar(
        [i - (w / 2 if after else 0) for i in x],
        [100 * s for s in before["expert_share"]],
        w,
        color=BEFORE,
        label=f"baseline (MRI {before['max_routing_imbalance']:.2f})",
    )
    if after:
        name, shares, mri = after
        ax.bar(
            [i + w / 2 for i in x],
            [100 * s for s in shares],
            w,
            color=AFTER,
            label=f"with {label(name)}'s rows (MRI {mri:.2f})",
        )
    ax.axhline(100 / k, color="black", ls="--", lw=0.8, label="uniform")
    ax.set_xticks(list(x), [f"expert {e}" for e in x])
    ax.set_ylabel("share of routed inputs (%)")
    ax.set_title("Routing balance (MRI: largest share / uniform share)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return to_data_uri(fig)


def budget_use_chart(report: dict[str, Any]) -> str | None:
    """Rows each owner revealed to budgeted requests against its cap (after the run). The
    evaluation-only full run is left out of the bars and named beside them: drawn in, it would
    fill every bar and suggest each owner gave everything away."""
    owners = [o for o in report["owners"] if o["budget"] is not None]
    if not owners:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(owners) + 1.3))
    y = list(range(len(owners)))[::-1]
    caps = [o["budget"]["cap"] for o in owners]
    revealed = [revealed_rows(o) for o in owners]
    budgeted = [b for b, _ in revealed]
    ax.barh(y, caps, color="#e4e7eb", edgecolor=BEFORE, label="cap")
    ax.barh(y, budgeted, height=0.5, color=AFTER, label="revealed to budgeted requests")
    for yi, (b, full), c in zip(y, revealed, caps, strict=True):
        text = f"{b} / {c}" + (f"  (+{full} to the evaluation-only full run)" if full else "")
        ax.text(b + 0.01 * max(caps + [1]), yi, text, va="center", fontsize=8)
    ax.set_xlim(0, 1.18 * max(caps + budgeted + [1]))  # room for the "revealed / cap" labels
    ax.set_yticks(y, [label(o["name"]) for o in owners])
    ax.set_xlabel("rows")
    ax.set_title("Rows revealed to budgeted requests, per owner, against its budget")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="x", alpha=0.3)
    return to_data_uri(fig)
