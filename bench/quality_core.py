"""Core of the quality bench: one seed's world (scenario draw, baseline, D_hard, scoring
checkpoint, control runs), owner-side selection, and "train on own data + subset, measure the
gain against the control".

The scenario file is the source of truth for the recipe (bench/quality_config.py); the
baseline is cached per recipe and seed (bench/quality_baseline.py). Training, the early checkpoint, oversampling and the control's
row draw are trainer_node's; bench/quality_train.py adds evaluation on the test
sub-population slice and the references (full information, guided, oracle needles).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from bench.quality_baseline import cache_key, cached_baseline
from bench.quality_config import (  # noqa: F401  (re-exported: the bench's names live here)
    BUDGET_BASES,
    FULL,
    METHODS,
    REFERENCES,
    UNIFORM,
    BenchConfig,
)
from bench.quality_train import (
    GUIDED,
    ORACLE,
    SliceControls,
    SliceEval,
    guided_sample,
    measure,
    oracle_rows,
)
from moe.train import embed_numpy, evaluate
from mycroft.scenario import ScenarioData, build
from selection import Candidates, HardSet, Head, get_strategy
from trainer_node.baseline import Baseline, TrainerData, hard_payload
from trainer_node.dhard import build_dhard, systematic
from trainer_node.evaluate import versus_control


@dataclass
class World:
    """Everything fixed for one seed: data, baseline (with the scoring checkpoint as
    `base.scorer`), D_hard, the control runs."""

    seed: int
    scen: ScenarioData
    data: TrainerData
    base: Baseline
    controls: SliceControls  # trainer_node's control runs, also measured on the slices
    hard: HardSet
    head: Head
    candidates: dict[str, Candidates]
    base_seconds: float
    embed_seconds: dict[str, float]
    cached: bool
    reference_rows: int  # the owner size budget shares are taken of ("common" basis)
    # (owner, subset positions) -> its measurement: two methods that pick the same rows share
    # one fine-tune (training is deterministic for a seed, so the numbers are the same)
    trained: dict[tuple[str, bytes], SliceEval] = field(default_factory=dict)


@dataclass
class Cell:
    seed: int
    owner: str
    method: str
    budget_share: float | None  # None for a reference (full, guided, oracle)
    rows: int
    relevant_share: float | None  # share of returned rows whose true class is a D_hard class
    clean_share: float | None  # share neither label-flipped nor feature-corrupted
    needle_share: float | None  # share in the owner's sub-population (None: scenario has none)
    wrong_label_share: float | None  # share whose label was flipped
    noisy_feature_share: float | None  # share whose features got noise
    select_seconds: float
    dhard_accuracy: float
    test_accuracy: float
    # the control: same schedule and seed on as many of the trainer's own rows
    control_dhard_accuracy: float
    control_test_accuracy: float
    dhard_gain: float  # vs the control (what trainer_node reports)
    test_gain: float  # vs the control
    subpop_accuracy: float | None  # on the test set's sub-population slice (None: no slice)
    rest_accuracy: float | None  # on the rest of the test set
    subpop_gain: float | None  # on the test set's sub-population slice, vs the control
    rest_gain: float | None  # on the rest of the test set, vs the control
    base_dhard_gain: float  # vs the baseline (kept for reference: flattered by the schedule)
    base_test_gain: float
    train_seconds: float
    picked: str = ""  # the picked row ids, comma-separated (budgeted cells only)


def picked_ids(cell: dict) -> np.ndarray:
    """The row ids a JSON cell picked."""
    return np.array([int(x) for x in cell["picked"].split(",") if x], dtype=np.int64)


# Control runs shared across World objects of the same baseline and training recipe (the
# ablation rebuilds worlds per variant; a variant that leaves training alone reuses them).
_CONTROLS: dict[tuple[str, int, str], SliceControls] = {}


def reference_rows(cfg: BenchConfig, scen: ScenarioData) -> int:
    """What budget shares are taken of: the median owner's rows (the upper one of an even
    count, as mycroft.simulate's budgets) or, with the "own" basis, 0 (each owner's own)."""
    if cfg.budget_basis == "own":
        return 0
    sizes = sorted(len(d) for d in scen.owners.values())
    return sizes[len(sizes) // 2]


def make_world(cfg: BenchConfig, seed: int, log=print) -> World:
    if cfg.budget_basis not in BUDGET_BASES:
        raise ValueError(f"budget_basis: must be one of {BUDGET_BASES}, got {cfg.budget_basis!r}")
    scen = build(cfg.spec(), seed)
    data = TrainerData(scen.trainer_train, scen.trainer_val, scen.test, "trainer")
    model, early, seconds, cached = cached_baseline(cfg, data, seed, log)
    run = scen.scenario.run
    dhard = build_dhard(model, data.val, list(scen.dhard_classes), run.shared_fraction, seed)
    dhard = systematic(model, data.val, dhard, cfg.dhard_neighbours, cfg.dhard_min_error)
    if len(dhard.shared) == 0 or len(dhard.eval) == 0:
        raise RuntimeError(
            f"seed {seed}: D_hard too small ({len(dhard.shared)}, {len(dhard.eval)})"
        )
    base = Baseline(
        model=model,
        config=model.config,
        test=evaluate(model, data.test),
        val=evaluate(model, data.val),
        dhard=dhard,
        dhard_eval_accuracy=evaluate(model, dhard.eval).accuracy,
        train_seconds=seconds,
        scorer=early,
    )
    scorer = base.scoring_model
    key = (cache_key(cfg, seed), seed, repr(cfg.training()))
    controls = _CONTROLS.get(key)
    if controls is None:
        controls = _CONTROLS[key] = SliceControls(base, data, cfg.training(), scen.subpop_test)
    # Privacy-preserving mode: the owner gets only D_hard embeddings + closed-form gradients.
    payload = hard_payload(scorer, dhard.shared, "embedded")
    hard = HardSet(
        labels=payload.labels, embeddings=payload.embeddings, gradients=payload.gradients
    )
    w, b = scorer.head_weights()
    candidates: dict[str, Candidates] = {}
    embed_seconds: dict[str, float] = {}
    for name, rows in scen.owners.items():
        t0 = time.perf_counter()
        emb = embed_numpy(scorer, rows.features)
        embed_seconds[name] = time.perf_counter() - t0
        candidates[name] = Candidates(row_ids=rows.row_ids, labels=rows.labels, embeddings=emb)
    return World(
        seed,
        scen,
        data,
        base,
        controls,
        hard,
        Head(weight=w, bias=b),
        candidates,
        seconds,
        embed_seconds,
        cached,
        reference_rows(cfg, scen),
    )


def strategy_for(cfg: BenchConfig, method: str):
    if method == UNIFORM or method in REFERENCES:
        return None
    if method == "funcfeat":
        return get_strategy("funcfeat", psi_in_pick=cfg.funcfeat_psi_in_pick)
    return get_strategy(method)


def _select_equal_split(strategy, cand: Candidates, world: World, budget: int) -> np.ndarray:
    """The budget split equally over the D_hard classes the owner holds (remainder to the
    classes with most D_hard rows), one strategy call per class on that class's rows."""
    hard = world.hard
    classes = [c for c in np.unique(hard.labels) if np.any(cand.labels == c)]
    if not classes:
        return np.empty(0, np.int64)
    by_size = sorted(classes, key=lambda c: -int((hard.labels == c).sum()))
    per = {c: budget // len(classes) + (i < budget % len(classes)) for i, c in enumerate(by_size)}
    out = []
    for c in classes:
        if per[c] == 0:
            continue
        m, h = cand.labels == c, hard.labels == c
        sub = Candidates(cand.row_ids[m], cand.labels[m], cand.embeddings[m])
        sub_hard = HardSet(hard.labels[h], hard.embeddings[h], hard.gradients[h])
        res = strategy.select(sub, sub_hard, int(per[c]), head=world.head, seed=world.seed)
        out.append(res.row_ids)
    return np.concatenate(out)


def budget_rows(world: World, owner: str, share: float) -> int:
    """A budget share as rows for `owner`: of the reference size (the same for every owner) or,
    with the "own" basis, of the owner's rows; never more than the owner holds."""
    held = len(world.scen.owners[owner])
    of = world.reference_rows or held
    return min(held, world.scen.scenario.run.budget_rows(share, of))


def _pick(cfg: BenchConfig, world: World, owner: str, method: str, share, strategy) -> np.ndarray:
    """Positions (into the owner's rows) of what the owner sends; all rows for a reference."""
    cand = world.candidates[owner]
    if method in (FULL, GUIDED):
        return np.arange(len(cand.row_ids))
    if method == ORACLE:
        return np.flatnonzero(oracle_rows(world.scen, owner))
    budget = budget_rows(world, owner, share)
    if method == UNIFORM:
        ids = np.random.default_rng([world.seed, 7]).choice(cand.row_ids, budget, replace=False)
    elif cfg.class_split == "equal":
        ids = _select_equal_split(strategy, cand, world, budget)
    else:
        ids = strategy.select(cand, world.hard, budget, head=world.head, seed=world.seed).row_ids
    return np.flatnonzero(np.isin(cand.row_ids, ids))


def run_cell(
    cfg: BenchConfig, world: World, owner: str, method: str, share: float | None, strategy
) -> Cell:
    """Select (owner side), then fine-tune on own data + subset and measure (trainer side)."""
    rows_all = world.scen.owners[owner]
    t0 = time.perf_counter()
    pos = _pick(cfg, world, owner, method, share, strategy)
    select_seconds = time.perf_counter() - t0
    if len(pos) == 0:  # nothing to send: the model is unchanged, gain 0 (as trainer_node does)
        base = world.controls.unchanged()
        return _cell(world, owner, method, share, pos, select_seconds, base, base)
    subset = rows_all.subset(pos, name=f"{owner}-{method}")
    if method == GUIDED:  # as many draws as rows (full's steps), weighted toward D_hard
        subset = guided_sample(subset, world.candidates[owner], world.hard, world.seed)
    key = (f"{owner}/{method == GUIDED}", pos.tobytes())
    if key not in world.trained:
        # trainer_node oversamples the subset to settings.oversample_to in finetune mode, and
        # the control on as many own rows gets the same number of steps
        world.trained[key] = measure(
            world.base,
            world.data,
            subset,
            world.seed,
            world.controls.settings,
            world.controls.slice,
        )
    trained = world.trained[key]
    control = world.controls.get("finetune", world.seed, len(subset))
    return _cell(world, owner, method, share, pos, select_seconds, trained, control)


def _cell(
    world: World,
    owner: str,
    method: str,
    share: float | None,
    pos: np.ndarray,
    select_seconds: float,
    trained: SliceEval,
    control: SliceEval,
) -> Cell:
    scen = world.scen
    ids = scen.owners[owner].row_ids[pos]
    truth = scen.truth_shares(owner, ids) if len(pos) else {}
    some = len(pos) > 0
    clean = ~(scen.noisy_label[owner][pos] | scen.corrupted[owner][pos])

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return Cell(
        seed=world.seed,
        owner=owner,
        method=method,
        budget_share=share,
        rows=len(pos),
        relevant_share=float(scen.relevant(owner)[pos].mean()) if some else None,
        clean_share=float(clean.mean()) if some else None,
        needle_share=truth.get("needle"),
        wrong_label_share=truth.get("wrong_label"),
        noisy_feature_share=truth.get("noisy_features"),
        select_seconds=select_seconds,
        **versus_control(trained, control),
        subpop_accuracy=trained.subpop_accuracy,
        rest_accuracy=trained.rest_accuracy,
        subpop_gain=diff(trained.subpop_accuracy, control.subpop_accuracy),
        rest_gain=diff(trained.rest_accuracy, control.rest_accuracy),
        base_dhard_gain=trained.dhard_accuracy - (world.base.dhard_eval_accuracy or 0.0),
        base_test_gain=trained.test.accuracy - world.base.test.accuracy,
        train_seconds=trained.train_seconds,
        picked=",".join(map(str, np.sort(ids))) if share is not None else "",
    )


def references_for(cfg: BenchConfig, scen: ScenarioData) -> tuple[str, ...]:
    """The references this config runs on this scenario: ORACLE needs a sub-population."""
    has_needles = any(scen.needles(o).any() for o in scen.owners)
    return tuple(r for r in cfg.references if r != ORACLE or has_needles)


def run_seed(cfg: BenchConfig, seed: int, log=print) -> tuple[World, list[Cell]]:
    world = make_world(cfg, seed, log)
    cells: list[Cell] = []
    refs = references_for(cfg, world.scen)
    for owner in world.scen.owners:
        for method in cfg.methods:
            strategy = strategy_for(cfg, method)  # one per owner: the FAISS index is reused
            for share in cfg.budgets:
                cells.append(run_cell(cfg, world, owner, method, share, strategy))
        for ref in refs:
            cells.append(run_cell(cfg, world, owner, ref, None, None))
        done = [c for c in cells if c.owner == owner]
        gains = ", ".join(f"{c.method} {c.dhard_gain:+.3f}" for c in done if c.method in refs)
        log(
            f"{cfg.scenario} seed {seed} {owner}: {len(done)} cells, {gains}, "
            f"train {sum(c.train_seconds for c in done):.0f} s"
        )
    return world, cells
