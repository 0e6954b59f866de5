"""Acquisition in rounds: does spending a budget in R requests, re-deriving D_hard in between,
beat one request of the same total size?

For each seed the scenario is drawn and the trainer's baseline trained (bench.quality_core's
`make_world`, cached per seed). For every owner x method x budget x R the budget is acquired with
trainer_node.rounds.acquire_in_rounds, selection running locally on the owner's rows (privacy
mode: D_hard embeddings + last-layer gradients; rows already held are left out of the candidates,
as the owner does with `exclude_row_ids`). The union is then fine-tuned on and measured against
trainer_node's control exactly as a one-shot subset: R = 1 *is* the one-shot request. Reported:
the D_hard-eval gain per R and the paired difference R minus 1 over seeds, with a 95% t-interval
(trainer_node.ranking.mean_interval).

Usage: .venv/bin/python -m bench.quality_rounds [--scenario NAME] [--seeds N] [--owners A,B]
  [--methods feature,gradient] [--budgets 32,128] [--rounds 1,2,4] [--no-write]
Writes bench/results/quality_rounds.json and the `quality_rounds` section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from bench._report import write_section
from bench.quality_core import BenchConfig, World, make_world
from bench.quality_families import family_for_scenario
from moe.model import MoEClassifier
from moe.train import embed_numpy
from mycroft.data.base import LabeledData
from mycroft.messages import EmbeddedHard, RawHard
from selection import Candidates, HardSet, Head, get_strategy
from trainer_node.evaluate import Controls, train_and_measure, versus_control
from trainer_node.ranking import mean_interval
from trainer_node.rounds import acquire_in_rounds

NAME = "quality_rounds"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class RoundsCell:
    seed: int
    owner: str
    method: str
    budget: int  # rows
    rounds: int  # as asked; fewer ran when the chain stopped early (see `stopped`)
    rows: int  # distinct rows acquired in all
    dhard_gain: float  # vs the control, as trainer_node reports it
    test_gain: float
    needle_share: float | None  # share of rows from the owner's sub-population, if it has one
    per_round: list[dict[str, Any]] = field(default_factory=list)  # RoundInfo per round
    stopped: str | None = None
    seconds: float = 0.0  # acquisition (rounds, fine-tunes between them) + final measurement


def _rows(budget: float, owner_rows: int) -> int:
    """A scenario budget: an int is rows, a float in (0, 1] a share of the owner's rows."""
    if isinstance(budget, float) and budget <= 1.0:
        return max(1, round(budget * owner_rows))
    return int(budget)


def local_ask(world: World, owner: str, method: str):
    """`ask` for acquire_in_rounds, answered as the owner would: the strategy on the owner's
    rows embedded with the round's scoring model, rows already held left out."""
    rows_all = world.scen.owners[owner]
    strategy = get_strategy(method)

    def ask(
        model: MoEClassifier, payload: RawHard | EmbeddedHard, wanted: int, held: np.ndarray
    ) -> LabeledData:
        assert isinstance(payload, EmbeddedHard)
        if model is world.base.scoring_model:  # round 1: the world embedded them already
            embeddings = world.candidates[owner].embeddings
        else:
            embeddings = embed_numpy(model, rows_all.features)
        keep = ~np.isin(rows_all.row_ids, held)
        cand = Candidates(rows_all.row_ids[keep], rows_all.labels[keep], embeddings[keep])
        hard = HardSet(payload.labels, payload.embeddings, payload.gradients)
        w, b = model.head_weights()
        picked = strategy.select(
            cand, hard, wanted, head=Head(weight=w, bias=b), seed=world.seed
        ).row_ids
        return rows_all.subset(np.flatnonzero(np.isin(rows_all.row_ids, picked)))

    return ask


def run_cell(
    cfg: BenchConfig,
    world: World,
    controls: Controls,
    owner: str,
    method: str,
    budget: int,
    rounds: int,
) -> RoundsCell:
    start = time.perf_counter()
    training = cfg.training()
    got = acquire_in_rounds(
        world.base,
        world.data,
        training,
        budget,
        rounds,
        local_ask(world, owner, method),
        seed=world.seed,
        neighbours=cfg.dhard_neighbours,
        min_error=cfg.dhard_min_error,
    )
    union = LabeledData(
        got.features, got.labels, world.data.class_names, got.row_ids, f"{owner}-{method}-r{rounds}"
    )
    if len(union):
        trained = train_and_measure(world.base, world.data, union, "finetune", world.seed, training)
        gains = versus_control(trained, controls.get("finetune", world.seed, len(union)))
    else:  # nothing acquired: the model is unchanged (as trainer_node reports it)
        gains = {"dhard_gain": 0.0, "test_gain": 0.0}
    needles = getattr(world.scen, "needles", None)  # scenarios with a sub-population
    needle_share = None
    if needles is not None and len(union):
        mask = needles(owner)
        if mask.any():
            rows_all = world.scen.owners[owner]
            needle_share = float(mask[np.isin(rows_all.row_ids, got.row_ids)].mean())
    return RoundsCell(
        seed=world.seed,
        owner=owner,
        method=method,
        budget=budget,
        rounds=rounds,
        rows=len(union),
        dhard_gain=float(gains["dhard_gain"]),
        test_gain=float(gains["test_gain"]),
        needle_share=needle_share,
        per_round=[asdict(r) for r in got.rounds],
        stopped=got.stopped,
        seconds=time.perf_counter() - start,
    )


def _stat(values: list[float]) -> dict[str, Any]:
    s = mean_interval(values)
    return {"mean": s.mean, "ci95": list(s.ci95) if s.ci95 else None, "n": s.n}


def summarise(cells: list[RoundsCell], rounds: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per (owner, method, budget): the gain per R and the paired difference R minus 1."""
    by: dict[tuple[str, str, int], dict[int, dict[int, RoundsCell]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for c in cells:
        by[(c.owner, c.method, c.budget)][c.rounds][c.seed] = c
    rows = []
    for (owner, method, budget), per_r in by.items():
        row: dict[str, Any] = {"owner": owner, "method": method, "budget": budget}
        row["gain"] = {r: _stat([c.dhard_gain for c in per_r[r].values()]) for r in rounds}
        one = per_r.get(1, {})
        row["paired_vs_1"] = {
            r: _stat([per_r[r][s].dhard_gain - one[s].dhard_gain for s in per_r[r] if s in one])
            for r in rounds
            if r != 1
        }
        rows.append(row)
    return rows


def _pp(stat: dict[str, Any], ci: bool = True) -> str:
    text = f"{100 * stat['mean']:+.1f}"
    if ci and stat["ci95"]:
        text += f" [{100 * stat['ci95'][0]:+.1f}, {100 * stat['ci95'][1]:+.1f}]"
    return text


def markdown(out: dict[str, Any]) -> str:
    rounds = out["settings"]["rounds"]
    last, n = max(rounds), len(out["settings"]["seeds"])
    head = ["owner", "method", "budget", *(f"gain R={r}" for r in rounds)]
    head += [f"R={last} − R=1 (95% CI)"]
    lines = [
        "## Acquisition in rounds",
        "",
        f"`python -m bench.quality_rounds` on `{out['settings']['scenario']}`, "
        f"{n} seed{'s' * (n != 1)}, {out['minutes']:.1f} min. A budget spent in R "
        "requests: before each later one the trainer fine-tunes on what it holds and re-derives "
        "D_hard from what still fails (D_hard-eval fixed); the union is evaluated like a "
        "one-shot subset. D_hard-eval gain vs the control in percentage points, mean over seeds; "
        "the last column is the paired difference over seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in out["summary"]:
        cells = [row["owner"], row["method"], str(row["budget"])]
        cells += [_pp(row["gain"][r], ci=False) for r in rounds]
        cells += [_pp(row["paired_vs_1"][last]) if last != 1 else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(text: str, cast=str) -> tuple:
    return tuple(cast(x) for x in text.split(",") if x)


def _budget(text: str) -> int | float:
    """ "32" is 32 rows, "0.01" 1% of the owner's rows (as in scenario files)."""
    return float(text) if "." in text else int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="fashion_subpop")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--owners", type=_csv, default=(), help="default: every owner")
    ap.add_argument("--methods", type=_csv, default=("feature", "gradient"))
    ap.add_argument(
        "--budgets",
        type=lambda t: _csv(t, _budget),
        default=(),
        help="default: the scenario's (an int is rows, a float in (0, 1] a share of the owner)",
    )
    ap.add_argument("--rounds", type=lambda t: _csv(t, int), default=(1, 2, 4))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help="print the markdown, write nothing")
    args = ap.parse_args(argv)
    if 1 not in args.rounds:
        ap.error("--rounds: must include 1 (the one-shot request the others are compared with)")
    torch.set_num_threads(args.threads)
    # the quality bench's world for this scenario (its family's stated owner sizes, the same
    # cached baselines), so rounds = 1 here is the one-shot cell there
    family = family_for_scenario(args.scenario)
    cfg = family.config(seeds=tuple(range(args.seeds)), threads=args.threads)
    start = time.perf_counter()
    cells: list[RoundsCell] = []
    for seed in cfg.seeds:
        world = make_world(cfg, seed, log)
        controls = Controls(world.base, world.data, cfg.training())
        budgets = args.budgets or tuple(world.scen.scenario.run.budgets)
        for owner in args.owners or tuple(world.scen.owners):
            size = len(world.scen.owners[owner])
            for method in args.methods:
                for budget in budgets:
                    for r in args.rounds:
                        cell = run_cell(cfg, world, controls, owner, method, _rows(budget, size), r)
                        cells.append(cell)
                        log(
                            f"seed {seed} {owner} {method}@{cell.budget} R={r}: {cell.rows} "
                            f"rows, gain {100 * cell.dhard_gain:+.1f} pp ({cell.seconds:.0f} s)"
                            + (f"; {cell.stopped}" if cell.stopped else "")
                        )
    out = {
        "settings": {
            "scenario": args.scenario,
            "seeds": list(cfg.seeds),
            "owners": list(args.owners) or None,
            "methods": list(args.methods),
            "budgets": list(args.budgets) or None,
            "rounds": list(args.rounds),
            "training": cfg.training().model_dump(),
        },
        "minutes": (time.perf_counter() - start) / 60,
        "summary": summarise(cells, tuple(args.rounds)),
        "cells": [asdict(c) for c in cells],
    }
    text = markdown(out)
    if args.no_write:
        print(text)
    else:
        write_section(NAME, text, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
