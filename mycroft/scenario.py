"""Scenario files: a TOML description of one trainer, several data owners and a run plan,
built from any labelled data source. Format (annotated examples in mycroft/scenarios/):

  name, description         optional strings
  [data]                    an open_source table: source = "digits" | "csv" | ..., path = ...
  [trainer]                 size, scarce_classes = [...], scarce_fraction, val_size, test_size?
  [[owners]]                name, size, classes = [...] | "all", label_noise in [0, 1),
                            feature_noise (std in feature stds), corrupt_share, seed
  [run]                     methods, budgets (ints = rows, floats in (0, 1] = share of owner),
                            seeds, dhard_classes?, shared_fraction, training, epochs
  [run.model]               gate, experts, top_k

`load_scenario(name_or_path)` parses and validates (a bad field raises ConfigError naming it,
e.g. "owners[2].label_noise: must be in [0, 1)"); `build(scenario, seed)` draws the trainer's
and owners' rows (disjoint, deterministic for a seed) and applies the owners' noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mycroft.data import LabeledData, corrupt_features, flip_labels, open_source, save_npz
from mycroft.data.base import DataSource
from mycroft.data.fashion_mnist import FashionMNIST
from mycroft.data.partition import RowPool, class_indices, scarce_counts
from mycroft.errors import ConfigError, DataError
from mycroft.files import read_toml

SCENARIO_DIR = Path(__file__).parent / "scenarios"
TRAINING_MODES = ("finetune", "retrain")
GATES = ("topk", "sinkhorn", "hash", "comet", "dense")  # mirrors moe.config.GATES
ClassRef = str | int  # a class name, or an index into the source's class names


class _Table:
    """Typed, range-checked reads from one TOML table; unknown keys are reported on `done`."""

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where or 'scenario'}: must be a table")
        self.raw, self.where, self.seen = raw, where, set[str]()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, default: Any = ..., types: tuple[type, ...] = (object,)) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            if default is ...:
                raise ConfigError(f"{self._name(key)}: required")
            return default
        value = self.raw[key]
        # bool is an int in Python; a scenario's `true` is never meant as a count.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"{self._name(key)}: must be {names}, got {value!r}")
        return value

    def int(self, key: str, default: Any = ..., lo: int = 0) -> int:
        value = self.get(key, default, (int,))
        if value < lo:
            raise ConfigError(f"{self._name(key)}: must be >= {lo}, got {value}")
        return value

    def float(self, key: str, default: Any, lo: float, hi: float, hi_open: bool = False) -> float:
        value = float(self.get(key, default, (int, float)))
        if not (lo <= value and (value < hi if hi_open else value <= hi)):
            raise ConfigError(
                f"{self._name(key)}: must be in [{lo:g}, {hi:g}{')' if hi_open else ']'}, "
                f"got {value:g}"
            )
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, default, (str,))
        if value not in choices:
            raise ConfigError(f"{self._name(key)}: must be one of {list(choices)}, got {value!r}")
        return value

    def classes(self, key: str, default: Any = ..., allow_all: bool = False) -> Any:
        value = self.get(key, default, (list, str) if allow_all else (list,))
        if value is None or (allow_all and value == "all"):
            return None
        if isinstance(value, str) or not value:
            raise ConfigError(f"{self._name(key)}: must be a non-empty list of class names")
        for i, v in enumerate(value):
            if not isinstance(v, str | int) or isinstance(v, bool):
                raise ConfigError(f"{self._name(key)}[{i}]: must be a class name, got {v!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"{self._name(key)}: lists a class twice")
        return tuple(value)

    def done(self) -> None:
        for key in self.raw:
            if key not in self.seen:
                raise ConfigError(f"{self._name(key)}: unknown field")


@dataclass(frozen=True)
class TrainerSpec:
    size: int  # rows of the trainer's train set, drawn from the source's train split
    scarce_classes: tuple[ClassRef, ...]
    scarce_fraction: float  # a scarce class gets this share of a normal class's row count
    val_size: int  # validation rows (natural class mix), where D_hard is found
    test_size: int | None = None  # subsample of the test split; None = all of it


@dataclass(frozen=True)
class OwnerSpec:
    name: str
    classes: tuple[ClassRef, ...] | None  # None = all classes
    size: int
    label_noise: float = 0.0  # share of rows whose label is flipped to another class
    feature_noise: float = 0.0  # Gaussian std, in units of each feature's std
    corrupt_share: float = 1.0  # share of rows that get the feature noise
    seed: int = 0


@dataclass(frozen=True)
class ModelSpec:
    gate: str = "topk"
    experts: int = 4
    top_k: int = 2


@dataclass(frozen=True)
class RunSpec:
    methods: tuple[str, ...]
    budgets: tuple[int | float, ...]  # int = rows; float in (0, 1] = share of an owner's rows
    seeds: int = 1
    dhard_classes: tuple[ClassRef, ...] | None = None  # None = the trainer's scarce classes
    shared_fraction: float = 0.5  # share of D_hard sent to owners; the rest measures gains
    training: str = "finetune"
    epochs: int = 3
    model: ModelSpec = field(default_factory=ModelSpec)
    # Fine-tuning on a subset (see trainer_node.config.TrainingSettings); None: trainer default.
    finetune_epochs: int | None = None
    finetune_lr: float | None = None
    oversample_to: int = 0
    score_epoch: int | None = None  # owners score with this baseline epoch; None: the final one

    def budget_rows(self, budget: int | float, owner_rows: int) -> int:
        """A budget as a row count for an owner holding `owner_rows` rows."""
        if isinstance(budget, float):
            return max(1, int(round(budget * owner_rows)))
        return int(budget)


@dataclass(frozen=True)
class Scenario:
    name: str
    data: Mapping[str, Any]  # the open_source spec
    trainer: TrainerSpec
    owners: tuple[OwnerSpec, ...]
    run: RunSpec
    description: str = ""
    base_dir: Path | None = None  # relative data paths resolve against the scenario's folder

    def source(self) -> DataSource:
        return open_source(self.data, base_dir=self.base_dir, where="data")


def _parse_owner(raw: object, i: int) -> OwnerSpec:
    t = _Table(raw, f"owners[{i}]")
    name = t.get("name", types=(str,))
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"owners[{i}].name: use letters, digits, '_' or '-', got {name!r}")
    spec = OwnerSpec(
        name=name,
        classes=t.classes("classes", "all", allow_all=True),
        size=t.int("size", lo=1),
        label_noise=t.float("label_noise", 0.0, 0.0, 1.0, hi_open=True),
        feature_noise=t.float("feature_noise", 0.0, 0.0, 100.0),
        corrupt_share=t.float("corrupt_share", 1.0, 0.0, 1.0),
        seed=t.int("seed", i),
    )
    t.done()
    return spec


def _parse_budgets(t: _Table) -> tuple[int | float, ...]:
    budgets = t.get("budgets", types=(list,))
    if not budgets:
        raise ConfigError("run.budgets: must list at least one budget")
    for i, b in enumerate(budgets):
        ok = (isinstance(b, int) and not isinstance(b, bool) and b >= 1) or (
            isinstance(b, float) and 0.0 < b <= 1.0
        )
        if not ok:
            raise ConfigError(
                f"run.budgets[{i}]: must be a row count >= 1 or a share in (0, 1], got {b!r}"
            )
    return tuple(budgets)


def parse_scenario(
    raw: Mapping[str, Any], name: str = "scenario", base_dir: Path | None = None
) -> Scenario:
    """A validated Scenario from an already-parsed TOML document."""
    top = _Table(raw, "")  # top-level fields are named bare
    name = top.get("name", name, (str,))
    description = top.get("description", "", (str,))
    data = top.get("data", types=(dict,))
    if not isinstance(data.get("source"), str):
        raise ConfigError("data.source: required, the name of a data source")

    tr = _Table(top.get("trainer", types=(dict,)), "trainer")
    trainer = TrainerSpec(
        size=tr.int("size", lo=1),
        scarce_classes=tr.classes("scarce_classes", ()) or (),
        scarce_fraction=tr.float("scarce_fraction", 0.05, 0.0, 1.0),
        val_size=tr.int("val_size", lo=1),
        test_size=tr.int("test_size", None, lo=1) if "test_size" in tr.raw else None,
    )
    tr.done()

    owners_raw = top.get("owners", types=(list,))
    if not owners_raw:
        raise ConfigError("owners: list at least one owner ([[owners]] tables)")
    owners = tuple(_parse_owner(o, i) for i, o in enumerate(owners_raw))
    seen: dict[str, int] = {}
    for i, o in enumerate(owners):
        if o.name in seen:
            raise ConfigError(
                f"owners[{i}].name: {o.name!r} already used by owners[{seen[o.name]}]"
            )
        seen[o.name] = i

    rt = _Table(top.get("run", {}, (dict,)), "run")
    methods = rt.get("methods", types=(list,))
    if not methods or not all(isinstance(m, str) and m for m in methods):
        raise ConfigError("run.methods: must be a non-empty list of method names")
    if len(set(methods)) != len(methods):
        raise ConfigError("run.methods: lists a method twice")
    mt = _Table(rt.get("model", {}, (dict,)), "run.model")
    model = ModelSpec(
        gate=mt.choice("gate", "topk", GATES),
        experts=mt.int("experts", 4, lo=1),
        top_k=mt.int("top_k", 2, lo=1),
    )
    mt.done()
    if model.top_k > model.experts:
        raise ConfigError(f"run.model.top_k: {model.top_k} exceeds experts = {model.experts}")
    dhard = rt.classes("dhard_classes", None)
    if dhard is None and not trainer.scarce_classes:
        raise ConfigError("run.dhard_classes: required when trainer.scarce_classes is empty")
    run = RunSpec(
        methods=tuple(methods),
        budgets=_parse_budgets(rt),
        seeds=rt.int("seeds", 1, lo=1),
        dhard_classes=dhard,
        shared_fraction=rt.float("shared_fraction", 0.5, 0.0, 1.0, hi_open=True),
        training=rt.choice("training", "finetune", TRAINING_MODES),
        epochs=rt.int("epochs", 3, lo=1),
        model=model,
        finetune_epochs=rt.int("finetune_epochs", None, lo=1)
        if "finetune_epochs" in rt.raw
        else None,
        finetune_lr=rt.float("finetune_lr", None, 1e-8, 10.0) if "finetune_lr" in rt.raw else None,
        oversample_to=rt.int("oversample_to", 0, lo=0),
        score_epoch=rt.int("score_epoch", None, lo=1) if "score_epoch" in rt.raw else None,
    )
    if run.shared_fraction == 0.0:
        raise ConfigError("run.shared_fraction: must be > 0 (owners need some of D_hard)")
    rt.done()
    top.done()
    scenario = Scenario(name, data, trainer, owners, run, description, base_dir)
    scenario.source()  # checks the data table's fields now; files are read only by build()
    return scenario


def builtin_scenarios() -> list[str]:
    """Names accepted by load_scenario besides paths ("demo" included)."""
    return sorted([p.stem for p in SCENARIO_DIR.glob("*.toml")] + ["demo"])


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name, or a TOML file by path. "demo" is the Fashion-MNIST
    scenario when its files are present, else the digits one."""
    text = str(name_or_path)
    if text == "demo":
        text = "fashion_five_owners" if FashionMNIST.available() else "digits_four_owners"
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
    """Everything one simulation run needs. Owner rows keep the source's row ids."""

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

    def relevant(self, owner: str) -> np.ndarray:
        """Rows of `owner` whose true class is a D_hard class."""
        return np.isin(self.true_labels[owner], self.dhard_classes)

    def save_owners(self, directory: str | Path) -> dict[str, Path]:
        """Each owner's rows as `<directory>/<name>.npz` (NpzSource reads them back exactly),
        for handing to owner processes as `{source = "npz", path = ...}`."""
        return {n: save_npz(d, Path(directory) / f"{n}.npz") for n, d in self.owners.items()}


def build(scenario: Scenario, seed: int = 0) -> ScenarioData:
    """Draw the trainer's and owners' rows (pairwise disjoint) and apply the owners' noise.

    Order: trainer train (per-class counts), trainer validation (natural mix), then owners in
    file order from what is left. Same scenario and seed -> same rows, labels and noise.
    """
    source = scenario.source()
    train = source.load("train")
    names = train.class_names
    spec = scenario.trainer
    scarce = class_indices(spec.scarce_classes, names, "trainer.scarce_classes")
    refs = scenario.run.dhard_classes
    dhard = class_indices(refs, names, "run.dhard_classes") if refs is not None else scarce
    rng = np.random.default_rng([seed, 0])
    pool = RowPool(train.labels)
    counts = scarce_counts(spec.size, len(names), scarce, spec.scarce_fraction)
    train_rows = pool.draw_per_class(counts, rng, "trainer.size", names)
    val_rows = pool.draw(spec.val_size, rng, "trainer.val_size")
    if "test" in getattr(source, "splits", ("train", "test")):
        test = source.load("test")
        if test.class_names != names:
            raise DataError(f"{source.name}: the test split's class names differ from train's")
        if spec.test_size is not None and spec.test_size < len(test):
            test = test.subset(np.sort(rng.choice(len(test), spec.test_size, replace=False)))
    elif spec.test_size is None:
        raise ConfigError(
            f"trainer.test_size: required, source {source.name!r} has no test split so the "
            "test set is carved from its train split"
        )
    else:
        test = train.subset(pool.draw(spec.test_size, rng, "trainer.test_size"))

    scale: np.ndarray | None = None
    owners: dict[str, LabeledData] = {}
    noisy: dict[str, np.ndarray] = {}
    corrupted: dict[str, np.ndarray] = {}
    true_labels: dict[str, np.ndarray] = {}
    for i, o in enumerate(scenario.owners):
        classes = (
            None if o.classes is None else class_indices(o.classes, names, f"owners[{i}].classes")
        )
        r = np.random.default_rng([seed, 1, o.seed])
        rows = pool.draw(o.size, r, f"owners[{i}] ({o.name}).size", classes, names)
        part = train.subset(rows, name=o.name)
        labels, noisy[o.name] = flip_labels(part.labels, o.label_noise, len(names), r)
        features = part.features
        corrupted[o.name] = np.zeros(len(part), dtype=bool)
        if o.feature_noise > 0:
            if scale is None:
                # Noise in units of each feature's spread; constant features (image borders)
                # get the overall spread so they are corrupted too.
                scale = train.features.std(axis=0)
                scale[scale < 1e-6] = train.features.std()
            lo, hi = float(train.features.min()), float(train.features.max())
            features, corrupted[o.name] = corrupt_features(
                features, o.corrupt_share, o.feature_noise, r, scale, (lo, hi)
            )
        true_labels[o.name] = part.labels
        owners[o.name] = LabeledData(
            features, labels, names, part.row_ids, o.name, part.feature_names
        )
    return ScenarioData(
        scenario=scenario,
        seed=seed,
        class_names=names,
        trainer_train=train.subset(train_rows, name="trainer_train"),
        trainer_val=train.subset(val_rows, name="trainer_val"),
        test=replace(test, name="test"),
        owners=owners,
        noisy_label=noisy,
        corrupted=corrupted,
        true_labels=true_labels,
        scarce_classes=tuple(scarce),
        dhard_classes=tuple(dhard),
    )
