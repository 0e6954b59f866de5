"""Core of the quality bench: one seed's world (scenario draw, baseline, D_hard, scoring
checkpoint, control runs), owner-side selection, and "train on own data + subset, measure the
gain against the control".

Training, the early checkpoint, oversampling and the controls are trainer_node's
(train_with_checkpoint, train_and_measure with TrainingSettings.oversample_to, Controls,
hard_payload, build_dhard): the gain of a cell is its D_hard-eval accuracy minus that of the
same fine-tuning schedule and seed on as many of the trainer's own rows, exactly as the product
reports it. This module only adds what the bench controls: owner sizes, which checkpoint owners
score with, a per-seed baseline cache, and the class-blind `uniform` reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from moe.io import load_model, save_model
from moe.model import MoEClassifier, build_model
from moe.train import embed_numpy, evaluate
from mycroft.scenario import ScenarioData, build, load_scenario
from selection import Candidates, HardSet, Head, get_strategy
from trainer_node.baseline import (
    Baseline,
    TrainerData,
    hard_payload,
    model_config,
    train_config,
    train_with_checkpoint,
)
from trainer_node.config import ModelSettings, TrainingSettings
from trainer_node.dhard import build_dhard
from trainer_node.evaluate import Controls, TrainedEval, train_and_measure, versus_control

CACHE = Path(tempfile.gettempdir()) / "mycroft-quality-cache"
METHODS = ("random", "feature", "gradient", "funcfeat")
# A bench-only reference, not a strategy: B rows drawn uniformly from all of the owner's rows,
# blind to D_hard's classes (what a "random" baseline means in much of the literature).
UNIFORM = "uniform"
FULL = "full"


@dataclass
class BenchConfig:
    scenario: str = "fashion_five_owners"
    # Owner sizes override the scenario file so that 1% is a meaningful row count
    # (owner a: 6,000 rows -> 0.25%..2% = 15..120 rows, the paper's 16..128 range).
    owner_sizes: dict[str, int] = field(
        default_factory=lambda: {
            "a_relevant": 6000,
            "b_noisy_labels": 4000,
            "c_noisy_features": 4000,
            "d_irrelevant": 4000,
            "e_small_relevant": 600,
        }
    )
    budgets: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02, 0.05)  # share of an owner's rows
    methods: tuple[str, ...] = (UNIFORM, *METHODS)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    base_epochs: int = 6
    base_lr: float = 2e-3
    score_checkpoint: str = "early"  # "early" (after score_epoch) or "final"
    score_epoch: int = 1
    finetune_epochs: int = 3  # 4 gave the same gains (owner a, 1%, one seed) at 4/3 the cost
    finetune_lr: float = 1e-3
    batch_size: int = 64
    # a subset smaller than this is repeated up to it, per epoch (TrainingSettings.oversample_to)
    oversample_to: int = 512
    replay_fraction: float = 0.5
    funcfeat_psi_in_pick: bool = False
    # "dhard": each strategy's own split, in proportion to D_hard's class counts (METHOD.md);
    # "equal": the bench calls the strategy once per class with an equal share of the budget.
    class_split: str = "dhard"
    threads: int = 1
    test_size: int | None = None  # None: the scenario's

    def training(self) -> TrainingSettings:
        return TrainingSettings(
            epochs=self.base_epochs,
            batch_size=self.batch_size,
            lr=self.base_lr,
            mode="finetune",
            replay_fraction=self.replay_fraction,
            finetune_epochs=self.finetune_epochs,
            finetune_lr=self.finetune_lr,
            oversample_to=self.oversample_to,
            extra={"num_threads": self.threads},
        )


@dataclass
class World:
    """Everything fixed for one seed: data, baseline (with the scoring checkpoint as
    `base.scorer`), D_hard, the control runs."""

    seed: int
    scen: ScenarioData
    data: TrainerData
    base: Baseline
    controls: Controls  # trainer_node's control runs for this baseline and training recipe
    hard: HardSet
    head: Head
    candidates: dict[str, Candidates]
    base_seconds: float
    embed_seconds: dict[str, float]
    cached: bool


@dataclass
class Cell:
    seed: int
    owner: str
    method: str
    budget_share: float | None  # None for full information
    rows: int
    relevant_share: float | None  # share of returned rows whose true class is a D_hard class
    clean_share: float | None  # share neither label-flipped nor feature-corrupted
    select_seconds: float
    dhard_accuracy: float
    test_accuracy: float
    # the control: same schedule and seed on as many of the trainer's own rows
    control_dhard_accuracy: float
    control_test_accuracy: float
    dhard_gain: float  # vs the control (what trainer_node reports)
    test_gain: float  # vs the control
    base_dhard_gain: float  # vs the baseline (kept for reference: flattered by the schedule)
    base_test_gain: float
    train_seconds: float


def _scenario(cfg: BenchConfig):
    scen = load_scenario(cfg.scenario)
    owners = tuple(
        o.model_copy(update={"size": cfg.owner_sizes.get(o.name, o.size)}) for o in scen.owners
    )
    trainer = scen.trainer
    if cfg.test_size is not None:
        trainer = trainer.model_copy(update={"test_size": cfg.test_size})
    return scen.model_copy(update={"owners": owners, "trainer": trainer})


def _cache_key(cfg: BenchConfig, seed: int) -> str:
    keys = ("scenario", "owner_sizes", "base_epochs", "base_lr", "score_epoch", "batch_size")
    keys += ("test_size",)
    blob = json.dumps({k: asdict(cfg)[k] for k in keys} | {"seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _train_baseline(
    cfg: BenchConfig, data: TrainerData, seed: int
) -> tuple[MoEClassifier, MoEClassifier, float]:
    """Final model and the checkpoint after `score_epoch` epochs (same run), seconds."""
    mcfg = model_config(ModelSettings(gate="topk", num_experts=4, top_k=2), data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(mcfg)
    start = time.perf_counter()
    tcfg = train_config(cfg.training(), seed)
    early = train_with_checkpoint(model, data.train, tcfg, cfg.score_epoch)
    return model, early, time.perf_counter() - start


# Control runs shared across World objects of the same baseline and training recipe (the
# ablation rebuilds worlds per variant; a variant that leaves training alone reuses them).
_CONTROLS: dict[tuple[str, int, str], Controls] = {}


def make_world(cfg: BenchConfig, seed: int, log=print) -> World:
    scen = build(_scenario(cfg), seed)
    data = TrainerData(scen.trainer_train, scen.trainer_val, scen.test, "trainer")
    folder = CACHE / _cache_key(cfg, seed)
    cached = (folder / "final.safetensors").exists()
    if cached:
        model = load_model(folder / "final.safetensors")
        early = load_model(folder / "early.safetensors")
        seconds = json.loads((folder / "meta.json").read_text())["train_seconds"]
    else:
        model, early, seconds = _train_baseline(cfg, data, seed)
        # written aside, then renamed: a concurrent bench process never reads half a model
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        save_model(model, tmp / "final.safetensors", write_json=False)
        save_model(early, tmp / "early.safetensors", write_json=False)
        (tmp / "meta.json").write_text(json.dumps({"train_seconds": seconds}))
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: use its copy
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"seed {seed}: baseline {'cached' if cached else 'trained'} ({seconds:.1f} s)")
    dhard = build_dhard(model, data.val, list(scen.dhard_classes), 0.5, seed)
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
        scorer=early if cfg.score_checkpoint == "early" else model,
    )
    scorer = base.scoring_model
    key = (_cache_key(cfg, seed), seed, repr(cfg.training()))
    controls = _CONTROLS.get(key)
    if controls is None:
        controls = _CONTROLS[key] = Controls(base, data, cfg.training())
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
    )


def strategy_for(cfg: BenchConfig, method: str):
    if method == UNIFORM:
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


def run_cell(
    cfg: BenchConfig, world: World, owner: str, method: str, share: float | None, strategy
) -> Cell:
    """Select (owner side), then fine-tune on own data + subset and measure (trainer side)."""
    rows_all = world.scen.owners[owner]
    cand = world.candidates[owner]
    budget = len(rows_all) if share is None else max(1, int(round(share * len(rows_all))))
    t0 = time.perf_counter()
    if method == UNIFORM:
        ids = np.random.default_rng([world.seed, 7]).choice(cand.row_ids, budget, replace=False)
    elif cfg.class_split == "equal" and share is not None:
        ids = _select_equal_split(strategy, cand, world, budget)
    else:
        ids = strategy.select(cand, world.hard, budget, head=world.head, seed=world.seed).row_ids
    select_seconds = time.perf_counter() - t0
    pos = np.flatnonzero(np.isin(cand.row_ids, ids))
    base = TrainedEval(world.base.dhard_eval_accuracy or 0.0, world.base.test, 0.0)
    if len(pos) == 0:  # nothing to send: the model is unchanged, gain 0 (as trainer_node does)
        return _cell(world, owner, method, share, 0, None, None, select_seconds, base, base)
    relevant = float(world.scen.relevant(owner)[pos].mean())
    clean = ~(world.scen.noisy_label[owner][pos] | world.scen.corrupted[owner][pos])
    subset = rows_all.subset(pos, name=f"{owner}-{method}")
    # trainer_node oversamples the subset to settings.oversample_to in finetune mode, and the
    # control on as many own rows gets the same number of steps
    trained = train_and_measure(
        world.base, world.data, subset, "finetune", world.seed, cfg.training()
    )
    control = world.controls.get("finetune", world.seed, len(pos))
    return _cell(
        world,
        owner,
        method,
        share,
        len(pos),
        relevant,
        float(clean.mean()),
        select_seconds,
        trained,
        control,
    )


def _cell(
    world: World,
    owner: str,
    method: str,
    share: float | None,
    rows: int,
    relevant: float | None,
    clean: float | None,
    select_seconds: float,
    trained: TrainedEval,
    control: TrainedEval,
) -> Cell:
    before_d = world.base.dhard_eval_accuracy or 0.0
    before_t = world.base.test.accuracy
    return Cell(
        seed=world.seed,
        owner=owner,
        method=method,
        budget_share=share,
        rows=rows,
        relevant_share=relevant,
        clean_share=clean,
        select_seconds=select_seconds,
        **versus_control(trained, control),
        base_dhard_gain=trained.dhard_accuracy - before_d,
        base_test_gain=trained.test.accuracy - before_t,
        train_seconds=trained.train_seconds,
    )


def run_seed(cfg: BenchConfig, seed: int, log=print) -> tuple[World, list[Cell]]:
    world = make_world(cfg, seed, log)
    cells: list[Cell] = []
    for owner in world.scen.owners:
        for method in cfg.methods:
            strategy = strategy_for(cfg, method)  # one per owner: the FAISS index is reused
            for share in cfg.budgets:
                cells.append(run_cell(cfg, world, owner, method, share, strategy))
        cells.append(run_cell(cfg, world, owner, FULL, None, get_strategy(FULL)))
        done = [c for c in cells if c.owner == owner]
        log(
            f"seed {seed} {owner}: {len(done)} cells, full gain {done[-1].dhard_gain:+.3f}, "
            f"train {sum(c.train_seconds for c in done):.0f} s"
        )
    return world, cells
