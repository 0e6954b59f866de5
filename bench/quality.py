"""Selection quality after the Mycroft paper: does budgeted selection beat random at tiny
budgets, pick the rare rows the trainer lacks, and rank owners as their true utility does?

Runs every family of bench/quality_families.py (class-scarce fashion_five_owners; the
sub-population fashion_subpop and fashion_cluster): for each seed, draw the scenario, train the
trainer's MoE (cached per seed), build D_hard (half shared, half held out), and for every owner
x method x budget select on the owner side (privacy mode: D_hard embeddings + gradients only),
fine-tune on own data + subset and measure accuracy on held-out D_hard, on the test set and on
its sub-population slice against trainer_node's control; plus the references (full
information, guided, oracle needles) that define each owner's true utility.

Usage: .venv/bin/python -m bench.quality [--quick] [--seeds N] [--family NAME ...]
  default: all families, 5 seeds, sized for about 30 min on 2 idle cores (TIME_NOTE);
  --scenario X runs any scenario file with its own settings; --quick: 1 seed, the headline
  budgets, nothing written but bench/results/quality_quick.json and the markdown on stdout;
  --render redoes the doc section and plots from the JSON; --ablation adds the ablation on
  the class-scarce family (--ablation-only runs it alone, e.g. in a second process).
Writes bench/results/quality.json (one key per family; a --family run replaces only its
families), docs/img/quality_<family>.png and the `quality` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from bench._report import RESULTS, write_section
from bench.quality_ablation import ablation_only, run_ablation
from bench.quality_core import (
    BUDGET_BASES,
    FULL,
    ORACLE,
    REFERENCES,
    BenchConfig,
    run_seed,
)
from bench.quality_families import (
    DEFAULT_FAMILIES,
    FAMILIES,
    HEADLINES,
    Family,
    family_for_scenario,
)
from bench.quality_render import render
from bench.quality_stats import cells_json, summarise
from mycroft.errors import ConfigError

# What the default run was sized to (the docs state it; a run past it says so).
TIME_NOTE = (
    "Sized for about 30 minutes on 2 otherwise idle cores (5 seeds × 3 families, budgets "
    "0.25–2% of the median owner, full information and oracle needles as references; guided "
    "and the class-scarce ablation are opt-in), estimated from the per-row training cost of "
    "the earlier class-scarce run; the times above are this run's."
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_family(family: Family, cfg: BenchConfig, ablation: bool) -> dict[str, Any]:
    """One family's cells, summary and run facts, JSON-ready."""
    # checked before the run: the yardstick must be among the references this scenario runs
    has_subpop = cfg.spec().subpop is not None
    yardstick = family.yardstick_for(has_subpop)
    runs = [r for r in cfg.references if r != ORACLE or has_subpop]
    if yardstick not in runs:
        raise SystemExit(
            f"mycroft: error: --yardstick: {yardstick!r} is not run on {cfg.scenario} "
            f"(references run: {', '.join(runs)})"
        )
    start, cpu = time.perf_counter(), _cpu_seconds()
    worlds, cells = [], []
    for seed in cfg.seeds:
        world, cs = run_seed(cfg, seed, log)
        worlds.append(world)
        cells += cs
    scen = worlds[0].scen
    owners = list(scen.owners)
    summary = summarise(cells, owners, cfg.methods, cfg.budgets, yardstick)
    spec = scen.scenario
    noisy = max(spec.owners, key=lambda o: o.label_noise)
    abl = run_ablation(cfg, owners[0], log) if ablation else []
    return {
        "scenario": cfg.scenario,
        "description": spec.description or spec.name,
        "config": asdict(cfg),
        "recipe": cfg.recipe(),
        "why": family.why,
        "owners": owners,
        "has_subpop": bool(np.any(scen.subpop_test)),
        "noisy_owner": noisy.name if noisy.label_noise > 0 else None,
        "meta": {
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "seconds": time.perf_counter() - start,
            "cpu_seconds": _cpu_seconds() - cpu,
            "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), torch threads {cfg.threads}",
            "reference_rows": worlds[0].reference_rows or None,
            "dhard_eval": round(float(np.mean([len(w.base.dhard.eval) for w in worlds]))),
            "dhard_shared": round(float(np.mean([len(w.base.dhard.shared) for w in worlds]))),
            "base_test": float(np.mean([w.base.test.accuracy for w in worlds])),
            "embed_seconds_lead": float(np.mean([w.embed_seconds[owners[0]] for w in worlds])),
            "baseline_seconds": [w.base_seconds for w in worlds],
            "baseline_cached": [w.cached for w in worlds],
            "ablation_note": "" if ablation else "(not run: opt-in with --ablation)",
        },
        "summary": summary,
        "ablation": abl,
        "cells": cells_json(cells),
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 seed, the headline budgets (smoke)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES), help="repeatable")
    ap.add_argument("--scenario", help="any scenario file or built-in name, its own settings")
    ap.add_argument(
        "--budget-basis",
        choices=BUDGET_BASES,
        default=None,
        help="budget shares of the median owner's rows (common, default) or own",
    )
    ap.add_argument("--budgets", help="comma-separated shares, e.g. 0.005,0.01")
    ap.add_argument("--yardstick", choices=REFERENCES, help="override the family's yardstick")
    ap.add_argument(
        "--references",
        help=f"comma-separated, of {', '.join(REFERENCES)} (default full,oracle; guided opt-in)",
    )
    ap.add_argument("--score-checkpoint", choices=("early", "final"), default=None)
    ap.add_argument("--oversample-to", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ablation", action="store_true", help="add the class-scarce ablation")
    ap.add_argument(
        "--ablation-only",
        action="store_true",
        help="only the ablation, into bench/results/quality_ablation.json",
    )
    ap.add_argument("--render", action="store_true", help="redo the doc section from the JSON")
    return ap


def _budgets(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        shares = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"mycroft: error: --budgets: not a list of numbers: {text!r}") from None
    if not shares or not all(0.0 < s <= 1.0 for s in shares):
        raise SystemExit(f"mycroft: error: --budgets: shares must be in (0, 1], got {text!r}")
    return shares


def _references(text: str | None, yardstick: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None if yardstick is None else tuple(dict.fromkeys((FULL, yardstick, ORACLE)))
    refs = tuple(dict.fromkeys(x.strip() for x in text.split(",")))
    unknown = [r for r in refs if r not in REFERENCES]
    if unknown or FULL not in refs:
        raise SystemExit(
            f"mycroft: error: --references: {', '.join(REFERENCES)} with full among them, "
            f"got {text!r}"
        )
    return refs


def _checked(cfg: BenchConfig) -> BenchConfig:
    """The config, once its scenario file and overrides have been read: a bad name or field
    is one line, not a traceback an hour into the run."""
    try:
        cfg.spec(), cfg.training(), cfg.model()
    except (ConfigError, ValueError) as exc:
        raise SystemExit(f"mycroft: error: {exc}") from None
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render:
        out = json.loads((RESULTS / "quality.json").read_text())
        if "families" not in out:
            raise SystemExit(
                "mycroft: error: bench/results/quality.json: written by an older bench (no "
                "families); run the bench to regenerate it"
            )
        write_section("quality", render(out), out)
        return 0
    torch.set_num_threads(args.threads)
    if args.scenario:
        families = [family_for_scenario(args.scenario, args.yardstick)]
    else:
        names = args.family or list(DEFAULT_FAMILIES)
        families = [
            replace(FAMILIES[n], yardstick=args.yardstick or FAMILIES[n].yardstick) for n in names
        ]
    quick = args.quick
    cli = {
        "seeds": (0,) if quick else tuple(range(args.seeds)),
        "budgets": _budgets(args.budgets) or (HEADLINES if quick else None),
        "budget_basis": args.budget_basis,
        "references": _references(args.references, args.yardstick),
        "score_checkpoint": args.score_checkpoint,
        "oversample_to": args.oversample_to,
        "threads": args.threads,
    }
    configs = {fam.name: _checked(fam.config(**cli)) for fam in families}
    if args.ablation_only:
        cfg = configs[families[0].name]
        ablation_only(cfg, cfg.spec().owners[0].name, log)
        return 0
    start = time.perf_counter()
    results = {}
    for fam in families:
        results[fam.name] = run_family(fam, configs[fam.name], args.ablation and not quick)
        log(f"{fam.name}: {results[fam.name]['meta']['seconds'] / 60:.1f} min")
    seconds = time.perf_counter() - start
    path = RESULTS / ("quality_quick.json" if quick else "quality.json")
    previous = json.loads(path.read_text()) if path.exists() and not quick else {}
    out = {
        "run": {
            "when": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(["python -m bench.quality", *(argv or sys.argv[1:])]),
            "seconds": seconds,
            "load_average": os.getloadavg(),
            "time_note": TIME_NOTE,
        },
        # a --family run replaces its families and keeps the others of the last run
        "families": {**previous.get("families", {}), **results},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    # the raw run first: a rendering bug must not lose it (then --render)
    path.write_text(json.dumps(out, indent=2) + "\n")
    if quick:  # a smoke run: never touches the docs
        print(render(out, plots=False))
        return 0
    write_section("quality", render(out), out)
    log(f"done in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
