"""The quality bench's ablation (opt-in: `--ablation`, or `--ablation-only` as a second
process): on one family's first owner at 1%, each variant changes one choice of the recipe
(scoring checkpoint, oversampling, per-class split, FuncFeat's psi in the pick) and is measured
against its own control over the same seeds."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np

from bench._report import RESULTS
from bench.quality_core import METHODS, BenchConfig, Cell, make_world, run_cell, strategy_for
from bench.quality_stats import cells_json

SHARE = 0.01
ABLATION_FILE = RESULTS / "quality_ablation.json"
# name -> (BenchConfig overrides, methods it concerns)
ABLATIONS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "final checkpoint scores": ({"score_checkpoint": "final"}, ("feature", "gradient", "funcfeat")),
    "no oversampling": ({"oversample_to": 0}, METHODS),
    "equal per-class budget split": ({"class_split": "equal"}, METHODS),
    "funcfeat: psi in the pick": ({"funcfeat_psi_in_pick": True}, ("funcfeat",)),
    "every failure sent (no systematic cut)": ({"dhard_neighbours": 0}, METHODS),
}


def run_ablation(cfg: BenchConfig, owner: str, log: Callable[[str], None]) -> list[dict]:
    out = []
    for name, (overrides, only) in ABLATIONS.items():
        acfg = replace(cfg, **overrides)
        cells: list[Cell] = []
        for seed in cfg.seeds:
            world = make_world(acfg, seed, log=lambda _m: None)
            for method in cfg.methods:
                if method not in only:
                    continue  # the variant does not change this method
                strategy = strategy_for(acfg, method)
                cells.append(run_cell(acfg, world, owner, method, SHARE, strategy))
        gains = {m: [c.dhard_gain for c in cells if c.method == m] for m in cfg.methods}
        tests = {m: [c.test_gain for c in cells if c.method == m] for m in cfg.methods}
        out.append(
            {
                "variant": name,
                "overrides": overrides,
                "dhard_gain_mean": {m: float(np.mean(g)) for m, g in gains.items() if g},
                "test_gain_mean": {m: float(np.mean(t)) for m, t in tests.items() if t},
                "cells": cells_json(cells),
            }
        )
        log(
            f"ablation {name}: "
            + ", ".join(f"{m} {v:+.3f}" for m, v in out[-1]["dhard_gain_mean"].items())
        )
    return out


def ablation_only(cfg: BenchConfig, owner: str, log: Callable[[str], None]) -> None:
    """The ablation as its own process (beside the main grid on a loaded machine), written to
    ABLATION_FILE; rendering picks it up when the main run has none."""
    start = time.perf_counter()
    cfg = replace(cfg, seeds=tuple(reversed(cfg.seeds)))
    ablation = run_ablation(cfg, owner, log)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "config": asdict(cfg),
        "seconds": time.perf_counter() - start,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "ablation": ablation,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    ABLATION_FILE.write_text(json.dumps(out, indent=2) + "\n")


def separate_ablation(family: dict) -> list[dict]:
    """The family's ablation, or the one from --ablation-only if it used this run's seeds and
    recipe (then the family's meta says how it ran)."""
    if family["ablation"] or not ABLATION_FILE.exists():
        return family["ablation"]
    abl = json.loads(ABLATION_FILE.read_text())
    mine = {k: v for k, v in family["config"].items() if k != "seeds"}
    theirs = {k: v for k, v in abl["config"].items() if k != "seeds"}
    if mine != theirs or sorted(abl["config"]["seeds"]) != sorted(family["config"]["seeds"]):
        return family["ablation"]
    family["meta"]["ablation_note"] = ""
    family["meta"]["ablation_process"] = {
        "seconds": abl["seconds"],
        "cpu_seconds": abl["cpu_seconds"],
    }
    return abl["ablation"]


def ablation_table(ablation: list[dict], methods: list[str], as_run: list[float]) -> str:
    """D_hard gain (points) per variant and method; `as_run`: the main grid's, per method."""
    lines = [
        "| variant (owner a, 1%) | " + " | ".join(methods) + " |",
        "|" + "---|" * (len(methods) + 1),
        "| **as run above** | " + " | ".join(f"{100 * g:+.1f}" for g in as_run) + " |",
    ]
    for row in ablation:
        cells = [
            f"{100 * row['dhard_gain_mean'][m]:+.1f}" if m in row["dhard_gain_mean"] else "–"
            for m in methods
        ]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
