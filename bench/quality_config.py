"""The quality bench's configuration: which scenario, and where the bench departs from the
scenario file. Every field left at None takes the file's value (or the trainer's default where
the file has no such field: lr, batch size, replay), so the scenario is the source of truth;
a set field is a stated override (the command line, or a family's in
bench/quality_families.py)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from bench.quality_train import GUIDED, ORACLE
from mycroft.scenario import Scenario, load_scenario
from trainer_node.config import DHardSettings, ModelSettings, TrainingSettings

METHODS = ("random", "feature", "gradient", "funcfeat")
# A bench-only reference, not a strategy: B rows drawn uniformly from all of the owner's rows,
# blind to D_hard (what a "random" baseline means in much of the literature).
UNIFORM = "uniform"
FULL = "full"
# Per-owner references (no budget): all rows; all rows sampled toward D_hard; the owner's
# sub-population rows (only where the scenario has one).
REFERENCES = (FULL, GUIDED, ORACLE)
BUDGET_BASES = ("common", "own")


@dataclass
class BenchConfig:
    scenario: str = "fashion_five_owners"
    # Every None below means "the scenario file's value" (or the trainer's default where the
    # file has no such field: lr, batch size, replay).
    owner_sizes: dict[str, int] = field(default_factory=dict)  # per-owner size overrides
    budgets: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02)
    # "common": a share of the median owner's rows, the same row count for every owner (as
    # mycroft.simulate does); "own": a share of each owner's own rows.
    budget_basis: str = "common"
    methods: tuple[str, ...] = METHODS
    # References run for every owner; ORACLE only where there are needles. GUIDED costs as much
    # as full information and is not the yardstick, so it is opt-in (--references).
    references: tuple[str, ...] = (FULL, ORACLE)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    base_epochs: int | None = None
    base_lr: float | None = None
    score_checkpoint: str = "early"  # "early" (after score_epoch) or "final"
    score_epoch: int | None = None
    finetune_epochs: int | None = None
    finetune_lr: float | None = None
    batch_size: int | None = None
    # a subset smaller than this is repeated up to it, per epoch (TrainingSettings.oversample_to)
    oversample_to: int | None = None
    replay_fraction: float | None = None
    funcfeat_psi_in_pick: bool = False
    # "dhard": each strategy's own split, in proportion to D_hard's class counts (METHOD.md);
    # "equal": the bench calls the strategy once per class with an equal share of the budget.
    class_split: str = "dhard"
    threads: int = 1
    test_size: int | None = None
    # D_hard's shared part cut to systematic failures (trainer_node.dhard.systematic), with the
    # trainer's defaults; dhard_neighbours = 0 sends every failure (the ablation)
    dhard_neighbours: int = DHardSettings().neighbours
    dhard_min_error: float = DHardSettings().min_neighbour_error

    def spec(self) -> Scenario:
        """The scenario file with this config's owner-size and test-size overrides."""
        scen = _load(self.scenario)
        unknown = sorted(set(self.owner_sizes) - {o.name for o in scen.owners})
        if unknown:
            raise ValueError(f"owner_sizes: no owner {unknown} in scenario {self.scenario!r}")
        owners = tuple(
            o.model_copy(update={"size": self.owner_sizes.get(o.name, o.size)}) for o in scen.owners
        )
        trainer = scen.trainer
        if self.test_size is not None:
            trainer = trainer.model_copy(update={"test_size": self.test_size})
        return scen.model_copy(update={"owners": owners, "trainer": trainer})

    def training(self) -> TrainingSettings:
        run = _load(self.scenario).run
        given = {
            "epochs": self.base_epochs or run.epochs,
            "lr": self.base_lr,
            "batch_size": self.batch_size,
            "finetune_epochs": self.finetune_epochs or run.finetune_epochs,
            "finetune_lr": self.finetune_lr or run.finetune_lr,
            "oversample_to": run.oversample_to
            if self.oversample_to is None
            else self.oversample_to,
            "replay_fraction": self.replay_fraction,
        }
        return TrainingSettings(
            mode="finetune",
            extra={"num_threads": self.threads},
            **{k: v for k, v in given.items() if v is not None},
        )

    def model(self) -> ModelSettings:
        m = _load(self.scenario).run.model
        return ModelSettings(gate=m.gate, num_experts=m.experts, top_k=m.top_k)

    def scoring_epoch(self) -> int | None:
        """The baseline epoch owners score with; None: the converged baseline."""
        if self.score_checkpoint == "final":
            return None
        return self.score_epoch or _load(self.scenario).run.score_epoch

    def recipe(self) -> dict:
        """The resolved recipe, as the report states it."""
        return {
            "training": self.training().model_dump(),
            "model": self.model().model_dump(),
            "score_epoch": self.scoring_epoch(),
            "owner_sizes": {o.name: o.size for o in self.spec().owners},
        }


@functools.lru_cache(maxsize=16)
def _load(name: str) -> Scenario:
    return load_scenario(name)
