"""MoE bench on Fashion-MNIST: gates vs a dense baseline, then fine-tuning vs retraining.

Part A: every gate (top-k + Switch loss, Sinkhorn, hash, COMET, COMET + permutation local search)
and the dense baseline at matched active parameters, several seeds: test accuracy, training
throughput, Maximum Routing Imbalance (MRI = E * the largest expert's share of top-k
assignments on the test set; 1 = balanced).
Part B: a model trained on a class-skewed original set gets an added set rich in the missing
classes; continual fine-tuning (replay 0.5, lr re-warmed) vs retraining from scratch on both.

Usage: .venv/bin/python -m bench.moe_bench [--train-size N] [--epochs E] [--seeds S] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from bench._report import write_section
from moe import (
    ModelConfig,
    TrainConfig,
    build_model,
    evaluate,
    finetune,
    parameter_counts,
    train,
)
from mycroft.data import FashionMNIST, LabeledData

# The shape every variant shares, pinned here (the section's text states it) rather than left
# to ModelConfig's defaults: a conv stem, then 8 experts, top-2, expert hidden 64.
STEM = {"stem": "conv", "conv_channels": 16, "stem_dim": 128, "embed_dim": 64}
EXPERTS = {"num_experts": 8, "top_k": 2, "expert_hidden": 64}
# name -> ModelConfig overrides; dense: one expert of hidden 2 * 64 = the same active expert
# parameters as top-2 of 64.
VARIANTS: dict[str, dict] = {
    "dense": {"gate": "dense"},
    "topk": {"gate": "topk"},
    "sinkhorn": {"gate": "sinkhorn"},
    "hash": {"gate": "hash"},
    "comet": {"gate": "comet"},
    "comet+ls": {"gate": "comet", "local_search": True, "local_search_steps": 150},
}
SKEWED = (2, 4, 6)  # Pullover, Coat, Shirt: the classes most confused with each other

# Quick screening of recipe levers (measured once, by hand, around choosing the defaults): the
# same setup on a stratified subsample, seeds 0-1 unless noted, mean test acc %. Kept
# here so the BENCHMARKS.md section can show what was tried; not re-run by this script.
QUICK_EXPERIMENTS: list[tuple[str, str, str, str]] = [
    # (setting, lever, dense, topk + lever)
    ("10k rows, 3 epochs", "none (topk as shipped)", "87.33", "87.18"),
    ("10k rows, 3 epochs", "none (topk as shipped), seeds 0-2", "87.37", "87.09"),
    ("10k rows, 3 epochs", "zero-init router", "87.33", "87.11"),
    ("10k rows, 3 epochs", "no top-k renormalisation of gate values", "87.33", "87.39"),
    ("10k rows, 3 epochs", "gate values × k (output scale of dense)", "87.33", "87.17"),
    ("10k rows, 3 epochs", "balance α = 0 (z-loss only)", "87.33", "87.38"),
    ("10k rows, 3 epochs", "balance α = 0.1", "87.33", "86.75"),
    ("10k rows, 3 epochs", "k = 1, expert hidden 128 (same active)", "87.33", "87.11"),
    ("10k rows, 3 epochs", "no renorm + α = 0, seeds 0-2", "87.37", "87.32"),
    ("10k rows, 8 epochs", "none (more epochs for both)", "88.56", "88.60"),
    ("10k rows, 8 epochs", "no renorm + α = 0", "88.56", "88.52"),
    ("60k rows, 2 epochs, seed 0", "none (full training set for both)", "90.63", "90.48"),
    # Confirmation with this script: --train-size 60000 --epochs 3 --variants dense,topk,comet
    ("60k rows, 3 epochs, seeds 0-2", "none (full training set for both)", "91.30", "91.32"),
    ("60k rows, 3 epochs, seeds 0-2", "comet gate", "91.30", "91.06"),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def model_config(data: LabeledData, overrides: dict) -> ModelConfig:
    return ModelConfig(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        class_names=data.class_names,
        **{**STEM, **EXPERTS, **overrides},
    )


def stratified(data: LabeledData, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    per = n // data.num_classes
    idx = [rng.permutation(np.flatnonzero(data.labels == c))[:per] for c in range(data.num_classes)]
    return np.sort(np.concatenate(idx))


def mean_spread(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def fmt(ms: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
    return f"{ms['mean'] * scale:.{digits}f} ± {ms['std'] * scale:.{digits}f}"


def part_a(train_set: LabeledData, test: LabeledData, args: argparse.Namespace) -> dict:
    out: dict = {}
    for name in args.variants:
        runs = []
        for seed in range(args.seeds):
            model = build_model(model_config(train_set, VARIANTS[name]), seed=seed)
            tc = TrainConfig(epochs=args.epochs, batch_size=128, lr=3e-3, seed=seed)
            hist = train(model, train_set, tc)
            met = evaluate(model, test)
            runs.append(
                {
                    "seed": seed,
                    "accuracy": met.accuracy,
                    "samples_per_sec": hist.samples_per_sec,
                    "mri": met.max_routing_imbalance,
                    "expert_share": met.expert_share,
                    "train_seconds": hist.wall_time,
                }
            )
            log(
                f"A {name} seed {seed}: acc {met.accuracy:.4f} mri {met.max_routing_imbalance:.2f}"
                f" {hist.samples_per_sec:.0f} samples/s"
            )
        counts = parameter_counts(model)
        out[name] = {
            "runs": runs,
            "accuracy": mean_spread([r["accuracy"] for r in runs]),
            "samples_per_sec": mean_spread([r["samples_per_sec"] for r in runs]),
            "mri": mean_spread([r["mri"] for r in runs]),
            "params_active": counts["active"],
            "params_total": counts["total"],
        }
    return out


def part_b(full: LabeledData, test: LabeledData, variant: str, args: argparse.Namespace) -> dict:
    """Original set: skewed classes kept at 10%; added set: 80% skewed classes, disjoint rows."""
    rng = np.random.default_rng(123)
    pool = rng.permutation(len(full))
    is_skewed = np.isin(full.labels[pool], SKEWED)
    n_orig = args.original_size
    keep = ~is_skewed | (rng.random(len(pool)) < 0.1)
    orig_idx = pool[keep][:n_orig]
    rest = np.setdiff1d(pool, orig_idx)
    rest = rest[rng.permutation(len(rest))]
    n_add = args.added_size
    add_sk = rest[np.isin(full.labels[rest], SKEWED)][: int(0.8 * n_add)]
    add_ot = rest[~np.isin(full.labels[rest], SKEWED)][: n_add - len(add_sk)]
    original, added = full.subset(orig_idx), full.subset(np.concatenate([add_sk, add_ot]))
    both = full.subset(np.concatenate([orig_idx, add_sk, add_ot]))

    def score(model) -> dict[str, float]:
        m = evaluate(model, test)
        # The test set is class-balanced, so a group's accuracy is the mean of its classes'.
        per = [m.per_class_accuracy[full.class_names[c]] for c in range(full.num_classes)]
        return {
            "accuracy": m.accuracy,
            "skewed_acc": float(np.mean([per[c] for c in SKEWED])),
            "other_acc": float(np.mean([per[c] for c in range(len(per)) if c not in SKEWED])),
            "mri": m.max_routing_imbalance,
        }

    runs = []
    for seed in range(args.seeds):
        cfg = model_config(full, VARIANTS[variant])
        tc = TrainConfig(epochs=args.epochs, batch_size=128, lr=3e-3, seed=seed)
        base = build_model(cfg, seed=seed)
        train(base, original, tc)
        before = score(base)
        t = time.perf_counter()
        ft_cfg = TrainConfig(epochs=args.finetune_epochs, batch_size=128, lr=2e-3, seed=seed)
        finetune(base, added, original, ft_cfg, replay_fraction=0.5)
        ft_time = time.perf_counter() - t
        after_ft = score(base)
        t = time.perf_counter()
        scratch = build_model(model_config(full, VARIANTS[variant]), seed=seed)
        train(scratch, both, tc)
        rt_time = time.perf_counter() - t
        after_rt = score(scratch)
        runs.append(
            {
                "seed": seed,
                "before": before,
                "finetune": after_ft,
                "retrain": after_rt,
                "finetune_seconds": ft_time,
                "retrain_seconds": rt_time,
            }
        )
        log(
            f"B {variant} seed {seed}: before {before['accuracy']:.4f} "
            f"ft {after_ft['accuracy']:.4f} ({ft_time:.0f}s) "
            f"retrain {after_rt['accuracy']:.4f} ({rt_time:.0f}s)"
        )

    def summary(key: str) -> dict:
        return {
            "accuracy": mean_spread([r[key]["accuracy"] for r in runs]),
            "gain": mean_spread([r[key]["accuracy"] - r["before"]["accuracy"] for r in runs]),
            "skewed_gain": mean_spread(
                [r[key]["skewed_acc"] - r["before"]["skewed_acc"] for r in runs]
            ),
            # Forgetting: accuracy lost on the original (well-represented) classes' test rows.
            "forgetting": mean_spread(
                [r["before"]["other_acc"] - r[key]["other_acc"] for r in runs]
            ),
            "mri": mean_spread([r[key]["mri"] for r in runs]),
            "seconds": mean_spread([r[f"{key}_seconds"] for r in runs]),
        }

    return {
        "variant": variant,
        "original_size": len(original),
        "added_size": len(added),
        "skewed_classes": [full.class_names[c] for c in SKEWED],
        "before": {
            "accuracy": mean_spread([r["before"]["accuracy"] for r in runs]),
            "mri": mean_spread([r["before"]["mri"] for r in runs]),
        },
        "finetune": summary("finetune"),
        "retrain": summary("retrain"),
        "runs": runs,
    }


def markdown(res: dict) -> str:
    a, s = res["part_a"], res["settings"]
    lines = [
        "## Mixture of experts (Fashion-MNIST)",
        "",
        f"Train {s['train_size']} rows (class-stratified subsample of the 60k), test all "
        f"{s['test_size']}; {s['epochs']} epochs, batch 128, AdamW lr 3e-3, warmup + cosine; "
        f"{s['seeds']} seeds (mean ± std); 1 torch thread, CPU shared with other jobs. "
        "MoE: 8 experts, top-2, expert hidden 64; dense: one expert of hidden 128 (same active "
        "expert parameters). MRI = 8 × largest expert share of top-k assignments (1 = balanced).",
        "",
        "| variant | test acc % | train samples/s | MRI | active / total params |",
        "|---|---|---|---|---|",
    ]
    for name, r in a.items():
        mri = "—" if name == "dense" else fmt(r["mri"])
        lines.append(
            f"| {name} | {fmt(r['accuracy'], 100)} | {fmt(r['samples_per_sec'], 1, 0)} | {mri} "
            f"| {r['params_active']:,} / {r['params_total']:,} |"
        )
    best = max((n for n in a if n != "dense"), key=lambda n: a[n]["accuracy"]["mean"])
    diff = (a[best]["accuracy"]["mean"] - a["dense"]["accuracy"]["mean"]) * 100
    spread = max(a[best]["accuracy"]["std"], a["dense"]["accuracy"]["std"]) * 100
    if diff >= 0:
        verdict = "reaches the dense baseline's mean accuracy"
    else:
        verdict = "stays below the dense baseline's mean accuracy"
    within = "within" if abs(diff) <= spread else "outside"
    lines += [
        "",
        f"Best gate: **{best}**, {diff:+.2f} points vs dense: it {verdict} ({within} one "
        f"seed-to-seed std, {spread:.2f} points).",
        "",
        "Why the recipe is what it is. The issue's hypothesis was that each expert sees only "
        "~k/E = 1/4 of the rows, so the MoE is under-trained at equal epochs. The architecture "
        "already has what the usual levers ask for: the MoE layer is a pre-norm residual block "
        "(h + Σ gate · expert(LN(h))) between the conv stem and the embedding, and the dense "
        "baseline is the same network with the same stem, embedding and head, its MoE layer "
        "replaced by one expert of hidden k × 64. Levers were screened on a 10k-row subsample "
        "(test acc %, mean of the seeds; dense and MoE trained with the same recipe), and the "
        "full-data result was confirmed with 3 seeds:",
        "",
        "| setting | lever (MoE side unless noted) | dense | MoE (topk unless noted) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a_} | {b_} | {c_} | {d_} |" for a_, b_, c_, d_ in QUICK_EXPERIMENTS]
    lines += [
        "",
        "Seed-to-seed spread in this screen is 0.1-0.4 points, so no gate-side lever (router "
        "init, gate-value normalisation or scale, balancing weight, k = 1 with wider experts) "
        "moved topk clearly past dense; a strong balancing weight (α = 0.1) clearly hurt. The "
        "best lever, dropping the top-k renormalisation together with the balancing loss, beat "
        "plain topk on each of 3 paired seeds at 3 epochs (+0.23) but not at 8 epochs, and it "
        "unbalances the experts (MRI 2.1-2.6 vs 1.4-2.2), so the gates ship unchanged. More "
        "training for both narrowed the gap (-0.15 at 3 epochs, +0.04 at 8 on 10k rows), which "
        "supports the under-training hypothesis only weakly; with the full 60k rows × 3 epochs "
        "(3 seeds) topk ties dense, 91.32 ± 0.17 vs 91.30 ± 0.16: a tie, not a win. "
        "The recipe change is therefore one more epoch for every variant, dense included "
        "(20k rows × 4 epochs instead of × 3), which is what the 20-minute budget on this "
        "shared 2-core machine allows at a load of 4-5.",
    ]
    b = res.get("part_b")
    if b:
        lines += [
            "",
            f"### Continual training ({b['variant']}): {b['original_size']} original rows with "
            f"{', '.join(b['skewed_classes'])} at 10%, then {b['added_size']} added rows "
            "(80% those classes)",
            "",
            f"Before: test acc {fmt(b['before']['accuracy'], 100)} %, MRI "
            f"{fmt(b['before']['mri'])}. Fine-tune: {s['finetune_epochs']} epochs on the added "
            "rows + an equal number of replayed original rows, lr re-warmed to 2e-3 then cosine. "
            "Retrain: from scratch on original + added, same recipe as the original training. "
            "Forgetting: accuracy lost on the test rows of the other classes (positive = worse).",
            "",
            "| method | test acc % | gain (pts) | gain on skewed classes (pts) | forgetting (pts) "
            "| MRI after | wall s |",
            "|---|---|---|---|---|---|---|",
        ]
        for key in ("finetune", "retrain"):
            r = b[key]
            lines.append(
                f"| {key} | {fmt(r['accuracy'], 100)} | {fmt(r['gain'], 100)} | "
                f"{fmt(r['skewed_gain'], 100)} | {fmt(r['forgetting'], 100)} | {fmt(r['mri'])} "
                f"| {fmt(r['seconds'], 1, 1)} |"
            )
    lines += [
        "",
        f"Total bench wall time: {res['wall_seconds']:.0f} s; 1-minute load average "
        f"{s['load_avg_start']:.1f} at start, {s['load_avg_end']:.1f} at end (2 cores). "
        "Throughput is measured on a CPU shared with other jobs: compare variants within one "
        "run, and expect it to swing with the load.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-size", type=int, default=20_000)
    ap.add_argument("--original-size", type=int, default=20_000)
    ap.add_argument("--added-size", type=int, default=6_000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--continual", default="best", help="variant for part B, 'best', or 'none'")
    ap.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    args = ap.parse_args()
    args.variants = args.variants.split(",")
    if args.quick:
        args.train_size, args.original_size, args.added_size = 2000, 2000, 600
        args.epochs, args.seeds = 1, 2
    start = time.perf_counter()
    src = FashionMNIST()
    full, test = src.load("train"), src.load("test")
    train_set = full.subset(stratified(full, args.train_size, seed=0))
    log(f"loaded: train {len(train_set)} of {len(full)}, test {len(test)}")
    res: dict = {
        "settings": {
            "train_size": len(train_set),
            "test_size": len(test),
            "epochs": args.epochs,
            "finetune_epochs": args.finetune_epochs,
            "seeds": args.seeds,
            "quick": args.quick,
            "load_avg_start": os.getloadavg()[0],
        },
        "part_a": part_a(train_set, test, args),
    }
    if args.continual != "none":
        variant = args.continual
        if variant == "best":
            moe = [n for n in res["part_a"] if n != "dense"]
            variant = max(moe, key=lambda n: res["part_a"][n]["accuracy"]["mean"])
        res["part_b"] = part_b(full, test, variant, args)
    res["wall_seconds"] = time.perf_counter() - start
    res["settings"]["load_avg_end"] = os.getloadavg()[0]
    md = markdown(res)
    write_section("moe", md, res)
    print(md)


if __name__ == "__main__":
    main()
