"""Scenario files: a TOML description of one trainer, several data owners and a run plan,
built from any labelled data source. Format (annotated examples in mycroft/scenarios/):

  name, description         optional strings
  [data]                    an open_source table: source = "digits" | "csv" | ..., path = ...
  [trainer]                 size, scarce_classes = [...] (may be empty with [subpop]),
                            scarce_fraction, val_size, test_size?, subpop_share (default 0),
                            val_subpop_share?, test_subpop_share?
  [[owners]]                name, size, classes = [...] | "all", label_noise in [0, 1),
                            feature_noise (std in feature stds), corrupt_share, seed,
                            subpop_share (default 0)
  [subpop]                  optional: kind = "transform" | "cluster", transform, classes,
                            clusters: the sub-population the trainer lacks (mycroft/subpop.py)
  [run]                     methods, budgets (ints = rows, floats in (0, 1] = share of owner),
                            seeds, dhard_classes?, shared_fraction, training, epochs,
                            mode, mode_by_method (e.g. { binning = "raw" })
  [run.model]               gate, experts, top_k

Each table is a declared model on mycroft.config_base: `load_scenario(name_or_path)` parses
and validates (a bad field raises ConfigError naming it, e.g. "owners[2].label_noise: must be
< 1, got 1.0"); `build(scenario, seed)` draws the trainer's and owners' rows (disjoint,
deterministic for a seed) and applies the owners' noise. D_hard's classes are run.dhard_classes,
else the trainer's scarce classes, else (with [subpop] and no scarce classes) all classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    Field,
    PlainValidator,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from moe.config import GATES
from mycroft.config_base import ConfigModel, Distinct, FieldProblem, Float, Int, Str, parse, shown
from mycroft.data import LabeledData, corrupt_features, flip_labels, open_source, save_npz
from mycroft.data.base import DataSource
from mycroft.data.fashion_mnist import FashionMNIST
from mycroft.data.partition import ClassesOrNone, ClassList, RowPool, class_indices, scarce_counts
from mycroft.errors import ConfigError, DataError
from mycroft.files import read_toml
from mycroft.subpop import SubpopSpec, Subpopulation, require_subpop_table, row_shares

SCENARIO_DIR = Path(__file__).parent / "scenarios"
Share = Annotated[Float, Field(ge=0, le=1)]


def _budget(value: object) -> int | float:
    # An int is a row count, a float a share of the owner's rows (1.0 = all, 1 = one row).
    if (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
        isinstance(value, float) and 0.0 < value <= 1.0
    ):
        return value
    raise ValueError(f"must be a row count >= 1 or a share in (0, 1], got {shown(value)}")


Budget = Annotated[int | float, PlainValidator(_budget)]
Name = Annotated[Str, StringConstraints(min_length=1)]


class TrainerSpec(ConfigModel):
    size: Int = Field(ge=1)  # rows of the trainer's train set, drawn from the train split
    scarce_classes: ClassesOrNone = ()  # none: a natural class mix
    scarce_fraction: Float = Field(0.05, ge=0, le=1)  # a scarce class's share of a normal one's
    val_size: Int = Field(ge=1)  # validation rows (natural class mix), where D_hard is found
    test_size: Int | None = Field(None, ge=1)  # subsample of the test split; None = all of it
    # Shares of [subpop] rows; val/test None = as drawn without [subpop] (mycroft/subpop.py).
    subpop_share: Share = 0.0
    val_subpop_share: Share | None = None
    test_subpop_share: Share | None = None


class OwnerSpec(ConfigModel):
    name: Str
    classes: ClassList | None = None  # None (or "all" in the file) = all classes
    size: Int = Field(ge=1)
    label_noise: Float = Field(0.0, ge=0, lt=1)  # share of rows whose label is flipped
    feature_noise: Float = Field(0.0, ge=0, le=100)  # Gaussian std, in each feature's stds
    corrupt_share: Float = Field(1.0, ge=0, le=1)  # share of rows that get the feature noise
    seed: Int = Field(0, ge=0)  # in a file, defaults to the owner's index
    subpop_share: Share = 0.0  # share of rows from the [subpop] sub-population

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # The name becomes a file name and a compose-side label.
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"use letters, digits, '_' or '-', got {shown(name)}")
        return name

    @field_validator("classes", mode="before")
    @classmethod
    def _all(cls, value: object) -> object:
        return None if value == "all" else value


class ModelSpec(ConfigModel):
    gate: Literal[GATES] = "topk"  # type: ignore[valid-type]
    experts: Int = Field(4, ge=1)
    top_k: Int = Field(2, ge=1)

    @model_validator(mode="after")
    def _k_fits(self) -> ModelSpec:
        if self.top_k > self.experts:
            raise FieldProblem("top_k", f"{self.top_k} exceeds experts = {self.experts}")
        return self


class RunSpec(ConfigModel):
    methods: Annotated[tuple[Name, ...], Field(min_length=1), Distinct]
    budgets: tuple[Budget, ...] = Field(min_length=1)
    seeds: Int = Field(1, ge=1)
    dhard_classes: ClassList | None = None  # None = the trainer's scarce classes
    # Share of D_hard sent to owners (some is needed); the rest measures the gains.
    shared_fraction: Float = Field(0.5, gt=0, lt=1)
    training: Literal["finetune", "retrain"] = "finetune"
    # The form D_hard is sent in (trainer selection.mode), and per method where it differs:
    # binning reads raw rows, e.g. mode_by_method = { binning = "raw" }
    mode: Literal["embedded", "raw"] = "embedded"
    mode_by_method: dict[Name, Literal["embedded", "raw"]] = Field(default_factory=dict)
    epochs: Int = Field(3, ge=1)
    model: ModelSpec = ModelSpec()
    # Fine-tuning on a subset (see trainer_node.config.TrainingSettings); None: trainer default.
    finetune_epochs: Int | None = Field(None, ge=1)
    finetune_lr: Float | None = Field(None, ge=1e-8, le=10)
    oversample_to: Int = Field(0, ge=0)
    score_epoch: Int | None = Field(None, ge=1)  # owners score with this baseline epoch

    @model_validator(mode="after")
    def _modes(self) -> RunSpec:
        from trainer_node.selection_names import check_modes  # the trainer's own rule

        methods = [m for m in self.methods if m != "full"]
        check_modes(methods, lambda m: self.mode_by_method.get(m, self.mode))
        return self

    def budget_rows(self, budget: int | float, owner_rows: int) -> int:
        """A budget as a row count for an owner holding `owner_rows` rows."""
        if isinstance(budget, float):
            return max(1, int(round(budget * owner_rows)))
        return int(budget)


class Scenario(ConfigModel):
    name: Str  # in a file, defaults to the file's stem
    description: Str = ""
    data: dict[str, Any]  # the open_source spec, checked (not read) when parsed
    trainer: TrainerSpec
    owners: tuple[OwnerSpec, ...]
    run: RunSpec
    subpop: SubpopSpec | None = None
    # Relative data paths resolve against the scenario's folder; not a field of the file.
    _base_dir: Path | None = PrivateAttr(None)

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    def source(self) -> DataSource:
        return open_source(self.data, base_dir=self.base_dir, where="data")

    @model_validator(mode="before")
    @classmethod
    def _file_defaults(cls, raw: Any, info: ValidationInfo) -> Any:
        if not isinstance(raw, Mapping):
            return raw
        raw = {"name": (info.context or {}).get("name", "scenario"), "run": {}, **raw}
        owners = raw.get("owners")
        if isinstance(owners, list):  # an owner's seed defaults to its place in the file
            raw["owners"] = [
                {"seed": i, **o} if isinstance(o, Mapping) else o for i, o in enumerate(owners)
            ]
        return raw

    @field_validator("data")
    @classmethod
    def _known_source(cls, data: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Checks the table's fields now (ConfigError names them); files are read by build().
        open_source(data, base_dir=(info.context or {}).get("base_dir"), where="data")
        return data

    @field_validator("owners")
    @classmethod
    def _distinct_owners(cls, owners: tuple[OwnerSpec, ...]) -> tuple[OwnerSpec, ...]:
        if not owners:
            raise ValueError("list at least one owner ([[owners]] tables)")
        first: dict[str, int] = {}
        for i, o in enumerate(owners):
            if o.name in first:
                raise FieldProblem(
                    (i, "name"), f"{o.name!r} already used by owners[{first[o.name]}]"
                )
            first.setdefault(o.name, i)
        return owners

    @model_validator(mode="after")
    def _dhard_known(self, info: ValidationInfo) -> Scenario:
        if self.subpop is None:
            require_subpop_table(self.trainer, self.owners)
        # With a sub-population and no scarce classes, D_hard is the failures in any class.
        if self.run.dhard_classes is None and not self.trainer.scarce_classes and not self.subpop:
            raise FieldProblem(
                ("run", "dhard_classes"),
                "required when trainer.scarce_classes is empty and there is no [subpop] table",
            )
        self._base_dir = (info.context or {}).get("base_dir")
        return self


def parse_scenario(
    raw: Mapping[str, Any], name: str = "scenario", base_dir: Path | None = None
) -> Scenario:
    """A validated Scenario from an already-parsed TOML document."""
    return parse(Scenario, raw, base_dir=base_dir, name=name)


def builtin_scenarios() -> list[str]:
    """Names accepted by load_scenario besides paths ("demo" included)."""
    return sorted([p.stem for p in SCENARIO_DIR.glob("*.toml")] + ["demo"])


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name, or a TOML file by path. "demo" is the sub-population
    scenario on Fashion-MNIST when its files are present, else on digits."""
    text = str(name_or_path)
    if text == "demo":
        text = "fashion_subpop" if FashionMNIST.available() else "digits_subpop"
    path = Path(text).expanduser()
    if not (path.suffix == ".toml" or path.exists()):
        path = SCENARIO_DIR / f"{text}.toml"
        if not path.is_file():
            raise ConfigError(
                f"scenario: no built-in scenario {text!r} (built-in: "
                f"{', '.join(builtin_scenarios())}) and no such file"
            )
    raw = read_toml(path)
    try:
        return parse_scenario(raw, name=path.stem, base_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# Building ------------------------------------------------------------------------------------


@dataclass
class ScenarioData:
    """Everything one simulation run needs. Owner rows keep the source's row ids; every mask
    is aligned with the rows of its part."""

    scenario: Scenario
    seed: int
    class_names: tuple[str, ...]
    trainer_train: LabeledData
    trainer_val: LabeledData
    test: LabeledData
    owners: dict[str, LabeledData]
    noisy_label: dict[str, np.ndarray]  # per owner: rows whose label was flipped
    corrupted: dict[str, np.ndarray]  # per owner: rows whose features got noise
    true_labels: dict[str, np.ndarray]  # per owner: labels before flipping
    scarce_classes: tuple[int, ...]
    dhard_classes: tuple[int, ...]
    subpop: dict[str, np.ndarray]  # per owner: [subpop] rows (all False without [subpop])
    subpop_train: np.ndarray
    subpop_val: np.ndarray
    subpop_test: np.ndarray

    def relevant(self, owner: str) -> np.ndarray:
        """Rows of `owner` whose true class is a D_hard class."""
        return np.isin(self.true_labels[owner], self.dhard_classes)

    def needles(self, owner: str) -> np.ndarray:
        """Rows of `owner` from the sub-population whose true class is a D_hard class."""
        return self.subpop[owner] & self.relevant(owner)

    def truth(self, owner: str) -> dict[str, np.ndarray]:
        """Ground-truth row masks of `owner`: "needle", "wrong_label", "noisy_features"."""
        return {
            "needle": self.needles(owner),
            "wrong_label": self.noisy_label[owner],
            "noisy_features": self.corrupted[owner],
        }

    def truth_shares(self, owner: str, row_ids: np.ndarray) -> dict[str, float | None]:
        """Share of the given row ids of `owner` (e.g. a selection) in each truth() mask.

        None where the scenario has no such rows at all (no [subpop]; no owner with label or
        feature noise), so a report can show "n/a" rather than a misleading 0, and for an
        empty selection. An id that is not the owner's is a ValueError.
        """
        owners = self.scenario.owners
        present = {
            "needle": self.scenario.subpop is not None,
            "wrong_label": any(o.label_noise > 0 for o in owners),
            "noisy_features": any(o.feature_noise > 0 and o.corrupt_share > 0 for o in owners),
        }
        masks = {k: m if present[k] else None for k, m in self.truth(owner).items()}
        return row_shares(self.owners[owner].row_ids, row_ids, masks, owner)

    def save_owners(self, directory: str | Path) -> dict[str, Path]:
        """Each owner's rows as `<directory>/<name>.npz` (NpzSource reads them back exactly),
        for handing to owner processes as `{source = "npz", path = ...}`."""
        return {n: save_npz(d, Path(directory) / f"{n}.npz") for n, d in self.owners.items()}


def build(scenario: Scenario, seed: int = 0) -> ScenarioData:
    """Draw the trainer's and owners' rows (pairwise disjoint), place the sub-population and
    apply the owners' noise.

    Order: trainer train (per-class counts), trainer validation (natural mix), test, then owners
    in file order from what is left. Same scenario and seed -> same rows, labels and noise.
    """
    source = scenario.source()
    train = source.load("train")
    names = train.class_names
    spec = scenario.trainer
    scarce = class_indices(spec.scarce_classes, names, "trainer.scarce_classes")
    refs = scenario.run.dhard_classes
    if refs is not None:
        dhard = class_indices(refs, names, "run.dhard_classes")
    else:  # without scarce classes (a [subpop] scenario): failures in any class
        dhard = scarce or list(range(len(names)))
    sub = Subpopulation.prepare(scenario.subpop, train, source.name)
    rng = np.random.default_rng([seed, 0])

    def rngs(part: int) -> tuple[np.random.Generator, np.random.Generator]:
        return rng, np.random.default_rng([seed, 2, part])

    pool = RowPool(train.labels)
    counts = scarce_counts(spec.size, len(names), scarce, spec.scarce_fraction)
    where = ("trainer.size", "trainer.subpop_share")
    train_rows, sub_train = sub.take_per_class(
        pool, counts, spec.subpop_share, rngs(0), where, names
    )
    where = ("trainer.val_size", "trainer.val_subpop_share")
    val_rows, sub_val = sub.take(
        pool, sub.train_member, spec.val_size, spec.val_subpop_share, rngs(1), where
    )
    where = ("trainer.test_size", "trainer.test_subpop_share")
    if "test" in getattr(source, "splits", ("train", "test")):
        test = source.load("test")
        if test.class_names != names:
            raise DataError(f"{source.name}: the test split's class names differ from train's")
        test, sub_test = sub.take_split(
            test, spec.test_size, spec.test_subpop_share, rngs(2), where
        )
    elif spec.test_size is None:
        raise ConfigError(
            f"trainer.test_size: required, source {source.name!r} has no test split so the "
            "test set is carved from its train split"
        )
    else:  # carved from the train split
        share = spec.test_subpop_share
        rows, sub_test = sub.take(pool, sub.train_member, spec.test_size, share, rngs(2), where)
        test = train.subset(rows)

    scale: np.ndarray | None = None
    owners: dict[str, LabeledData] = {}
    noisy: dict[str, np.ndarray] = {}
    corrupted: dict[str, np.ndarray] = {}
    true_labels: dict[str, np.ndarray] = {}
    subpop: dict[str, np.ndarray] = {}
    for i, o in enumerate(scenario.owners):
        classes = (
            None if o.classes is None else class_indices(o.classes, names, f"owners[{i}].classes")
        )
        r = np.random.default_rng([seed, 1, o.seed])
        where = (f"owners[{i}] ({o.name}).size", f"owners[{i}] ({o.name}).subpop_share")
        marker = np.random.default_rng([seed, 3, o.seed])
        rows, subpop[o.name] = sub.take(
            pool, sub.train_member, o.size, o.subpop_share, (r, marker), where, classes, names
        )
        part = sub.apply(train.subset(rows, name=o.name), subpop[o.name])
        labels, noisy[o.name] = flip_labels(part.labels, o.label_noise, len(names), r)
        features = part.features
        corrupted[o.name] = np.zeros(len(part), dtype=bool)
        if o.feature_noise > 0:
            if scale is None:
                # Noise in units of each feature's spread; constant features (image borders)
                # get the overall spread so they are corrupted too.
                scale = train.features.std(axis=0)
                scale[scale < 1e-6] = train.features.std()
            features, corrupted[o.name] = corrupt_features(
                features, o.corrupt_share, o.feature_noise, r, scale, sub.value_range
            )
        true_labels[o.name] = part.labels
        owners[o.name] = LabeledData(
            features, labels, names, part.row_ids, o.name, part.feature_names
        )
    return ScenarioData(
        scenario=scenario,
        seed=seed,
        class_names=names,
        trainer_train=sub.apply(train.subset(train_rows, name="trainer_train"), sub_train),
        trainer_val=sub.apply(train.subset(val_rows, name="trainer_val"), sub_val),
        test=sub.apply(replace(test, name="test"), sub_test),
        owners=owners,
        noisy_label=noisy,
        corrupted=corrupted,
        true_labels=true_labels,
        scarce_classes=tuple(scarce),
        dhard_classes=tuple(dhard),
        subpop=subpop,
        subpop_train=sub_train,
        subpop_val=sub_val,
        subpop_test=sub_test,
    )
