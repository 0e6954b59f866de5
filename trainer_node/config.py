"""The trainer's TOML config, declared as models on the shared config layer.

Every problem raises ConfigError naming the field (e.g. ``owners[1].address``) so a user can
fix the file without reading code. Relative paths are resolved against the config file's
directory, so a config works the same from any working directory.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from moe.device import check_device
from mycroft.config_base import (
    ConfigModel,
    Distinct,
    FieldProblem,
    Float,
    Int,
    RelPath,
    Str,
    load,
    parse,
    require_files,
    shown,
)
from trainer_node.compute import ComputeSettings

# Re-exported: the owner-side sections used to live here.
from trainer_node.config_owners import (  # noqa: F401
    ClientSettings,
    Name,
    OwnerEndpoint,
    TlsSettings,
)
from trainer_node.selection_names import (
    check_methods,
    check_modes,
    check_rank_method,
    parse_params,
)

SelectionMode = Literal["embedded", "raw"]
TrainingMode = Literal["finetune", "retrain", "both"]
SELECTION_MODES: tuple[str, ...] = typing.get_args(SelectionMode)
TRAINING_MODES: tuple[str, ...] = typing.get_args(TrainingMode)
FULL_METHOD = "full"  # all of an owner's rows: the evaluation ceiling, never ranked as primary
NonEmptyStr = Annotated[Str, Field(min_length=1)]
Names = Annotated[tuple[NonEmptyStr, ...], Field(min_length=1), Distinct]


def _split(data: Any, info: ValidationInfo, model: type[BaseModel], into: str) -> Any:
    """Moves the TOML keys `model` does not declare into the pass-through table `into`.
    Only for TOML (validation context present): code building the model passes `into` itself."""
    if info.context is None or not isinstance(data, dict):
        return data
    own = set(model.model_fields) - {into, "base_dir"}
    rest = {k: v for k, v in data.items() if k not in own}
    return {k: v for k, v in data.items() if k in own} | {into: rest}


def _field_names(cls: type) -> set[str]:
    fields = getattr(cls, "model_fields", None)  # a pydantic model or a dataclass
    return set(fields) if fields is not None else {f.name for f in dataclasses.fields(cls)}


class DataConfig(ConfigModel):
    """Either an `open_source` table (val split carved from train) or prepared NPZ files.

    `source` holds the table given to `mycroft.data.open_source` (``source = "digits"`` plus
    that source's own fields); `base_dir` resolves its relative paths.
    """

    source: dict[str, Any] | None = None
    train: RelPath | None = None
    val: RelPath | None = None
    test: RelPath | None = None
    val_fraction: Float = Field(0.2, ge=0.0, le=0.9)
    split_seed: Int = Field(0, ge=0)
    base_dir: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _source_table(cls, data: Any, info: ValidationInfo) -> Any:
        data = _split(data, info, cls, "source")
        if info.context is not None and isinstance(data, dict):
            data |= {"source": data["source"] or None, "base_dir": info.context["base_dir"]}
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> DataConfig:
        if self.source is not None and self.train is not None:
            raise FieldProblem("source", "give either `source` or NPZ paths (`train`...), not both")
        if self.source is not None:
            from mycroft.data import open_source

            open_source(self.source, base_dir=self.base_dir, where="data")  # fail early
            return self
        if self.train is None:
            raise FieldProblem("source", "give a data source table or NPZ paths (data.train)")
        if self.test is None:
            raise FieldProblem("test", "required with data.train")
        require_files(self, ("train", "val", "test"))
        return self


class _PassThrough(ConfigModel):
    """A section whose undeclared keys go, in `extra`, to the config class `_extra_fields` names
    (moe's ModelConfig or TrainConfig); each key must be one of that class's fields."""

    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _extras(cls, data: Any, info: ValidationInfo) -> Any:
        return _split(data, info, cls, "extra")

    @model_validator(mode="after")
    def _known_extras(self) -> _PassThrough:
        if not self.extra:
            return self
        allowed = self._extra_fields()
        for key in self.extra:
            if key not in allowed:
                known = ", ".join(sorted((set(type(self).model_fields) - {"extra"}) | allowed))
                raise FieldProblem(key, f"unknown field; known: {known}")
        return self

    @classmethod
    def _extra_fields(cls) -> set[str]:
        raise NotImplementedError


class ModelSettings(_PassThrough):
    """The MoE's shape. `extra` passes further `moe.config.ModelConfig` fields through."""

    gate: Str = "topk"
    num_experts: Int = Field(4, ge=1)
    top_k: Int = Field(2, ge=1)
    embed_dim: Int = Field(64, ge=1)

    @classmethod
    def _extra_fields(cls) -> set[str]:
        from moe.config import ModelConfig  # no torch: numpy only

        return _field_names(ModelConfig) - {"input_shape", "num_classes", "class_names"}

    @model_validator(mode="after")
    def _top_k(self) -> ModelSettings:
        if self.top_k > self.num_experts:
            raise FieldProblem(
                "top_k", f"{self.top_k} exceeds model.num_experts {self.num_experts}"
            )
        return self


def _seed_count(value: Any) -> Any:
    """`seeds = 3` means seeds 0, 1, 2."""
    if isinstance(value, bool) or not isinstance(value, int | list | tuple):
        raise ValueError(f"must be a count or a list of seeds, got {shown(value)}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"a count must be >= 1, got {value}")
        return tuple(range(value))
    return value


Seeds = Annotated[
    tuple[Annotated[Int, Field(ge=0)], ...],
    BeforeValidator(_seed_count),
    Field(min_length=1),
    Distinct,
]


class TrainingSettings(_PassThrough):
    """`extra` passes further `moe.train.TrainConfig` fields through."""

    epochs: Int = Field(5, ge=1)
    batch_size: Int = Field(64, ge=1)
    lr: Float = Field(1e-3, ge=1e-8, le=10.0)
    seeds: Seeds = (0, 1, 2)
    mode: TrainingMode = "finetune"
    # Where the baseline, fine-tunes and evaluation run: auto (a GPU when present) | cpu | cuda[:N]
    device: Annotated[Str, AfterValidator(check_device)] = "auto"
    replay_fraction: Float = Field(0.5, ge=0.0, le=0.99)
    finetune_epochs: Int | None = Field(None, ge=1)  # None: same as `epochs`
    finetune_lr: Float | None = Field(None, ge=1e-8, le=10.0)  # None: same as `lr`
    # A subset smaller than this is repeated up to it each fine-tuning epoch, so 16 rows get as
    # many optimiser steps as 512 and can move the model (0: off). See docs/BENCHMARKS.md.
    oversample_to: Int = Field(0, ge=0)

    @classmethod
    def _extra_fields(cls) -> set[str]:
        from moe.config import TrainConfig

        return _field_names(TrainConfig) - {"epochs", "batch_size", "lr", "seed"}

    @property
    def modes(self) -> tuple[str, ...]:
        return ("finetune", "retrain") if self.mode == "both" else (self.mode,)


class DHardSettings(ConfigModel):
    classes: Names | None = None  # None: every class the model gets wrong
    shared_fraction: Float = Field(0.5, gt=0.0, lt=1.0)
    seed: Int = Field(0, ge=0)
    # Owners get only systematic failures: those whose `neighbours` nearest validation rows
    # are failures in a share >= min_neighbour_error (trainer_node.dhard.systematic); 0 = all.
    neighbours: Int = Field(20, ge=0, le=1000)
    min_neighbour_error: Float = Field(0.5, ge=0.0, le=1.0)


class RankBy(ConfigModel):
    method: Str
    budget: Int


Budgets = Annotated[tuple[Annotated[Int, Field(ge=1)], ...], Field(min_length=1), Distinct]


class SelectionSettings(ConfigModel):
    methods: Names = ("feature", "random")
    budgets: Budgets = (16,)
    mode: SelectionMode = "embedded"
    # A method that needs another form of D_hard than `mode` (binning reads raw rows), by name
    mode_by_method: dict[Str, SelectionMode] = Field(default_factory=dict)
    seed: Int = Field(0, ge=0)
    rank_by: RankBy | None = None  # None: the first listed non-full method, first budget
    params: dict[Str, Any] = Field(default_factory=dict)  # method -> {param: value}
    score_epoch: Int | None = Field(None, ge=1)  # owners score with this epoch; None: final
    # Each budget acquired in this many requests, re-deriving D_hard in between (rounds.py)
    rounds: Int = Field(1, ge=1)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        check_methods(methods)
        if all(m == FULL_METHOD for m in methods):
            raise ValueError("needs a method besides 'full' to rank owners")
        return methods

    @field_validator("params")
    @classmethod
    def _known_params(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        methods = info.data.get("methods")  # absent when `methods` itself was refused
        return params if methods is None else parse_params(params, methods)

    @field_validator("mode_by_method")
    @classmethod
    def _listed(cls, modes: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        methods = info.data.get("methods")
        for name in modes if methods is not None else ():
            if name not in methods:
                raise FieldProblem(name, f"not in selection.methods ({', '.join(methods)})")
        return modes

    def mode_for(self, method: str) -> str:
        """The form of D_hard `method` is sent."""
        return self.mode_by_method.get(method, self.mode)

    @property
    def modes(self) -> tuple[str, ...]:
        """Every form of D_hard this run sends, `mode` first."""
        return tuple(dict.fromkeys([self.mode, *(self.mode_for(m) for m in self.methods)]))

    @model_validator(mode="after")
    def _rank_by(self) -> SelectionSettings:
        check_modes([m for m in self.methods if m != FULL_METHOD], self.mode_for)
        if self.rank_by is not None:
            check_rank_method(self.rank_by.method, self.methods, FULL_METHOD)
            if self.rank_by.budget not in self.budgets:
                problem = f"{self.rank_by.budget!r} is not in selection.budgets"
                raise FieldProblem(("rank_by", "budget"), problem)
        return self

    @property
    def primary(self) -> tuple[str, int]:
        if self.rank_by is not None:
            return (self.rank_by.method, self.rank_by.budget)
        ranked = [m for m in self.methods if m != FULL_METHOD]
        return (ranked[0], self.budgets[0])


class TrainerSection(ConfigModel):
    """The `[trainer]` table; its fields are read through `TrainerConfig.id` etc."""

    id: Name
    run_dir: RelPath
    run_id: Name | None = None  # fixed id: a re-run resumes idempotently at the owners

    @model_validator(mode="before")
    @classmethod
    def _default_run_dir(cls, data: Any) -> Any:
        # `runs/<id>` next to the config file; a bad id is reported on `id` first.
        if isinstance(data, dict) and "run_dir" not in data and isinstance(data.get("id"), str):
            return {**data, "run_dir": f"runs/{data['id']}"}
        return data


class TrainerConfig(ConfigModel):
    trainer: TrainerSection = Field({}, validate_default=True)  # absent: `trainer.id: required`
    data: DataConfig
    model: ModelSettings = ModelSettings()
    training: TrainingSettings = TrainingSettings()
    dhard: DHardSettings = DHardSettings()
    selection: SelectionSettings = SelectionSettings()
    owners: tuple[OwnerEndpoint, ...] = Field(min_length=1)
    client: ClientSettings = ClientSettings()
    compute: ComputeSettings = ComputeSettings()  # where the evaluation's training runs
    _config_path: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> TrainerConfig:
        names = [o.name for o in self.owners]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise FieldProblem(("owners", i, "name"), f"duplicate owner name {name!r}")
        score_epoch, epochs = self.selection.score_epoch, self.training.epochs
        if score_epoch is not None and score_epoch > epochs:
            problem = f"{score_epoch} is after the last epoch (training.epochs = {epochs})"
            raise FieldProblem(("selection", "score_epoch"), problem)
        compute, device = self.compute, self.training.device
        if compute.backend == "ray" and device.startswith("cuda") and not compute.gpus_per_task:
            problem = f"training.device is {device!r}: give each task a share of a GPU, e.g. 0.25"
            raise FieldProblem(("compute", "gpus_per_task"), problem)
        self._config_path = (info.context or {}).get("config_path")
        return self

    @property
    def id(self) -> str:
        return self.trainer.id

    @property
    def run_dir(self) -> Path:
        return self.trainer.run_dir

    @property
    def run_id(self) -> str | None:
        return self.trainer.run_id

    @property
    def config_path(self) -> Path | None:
        return self._config_path


def parse_config(
    raw: dict[str, Any], base_dir: Path, config_path: Path | None = None
) -> TrainerConfig:
    """A validated TrainerConfig from an already-parsed TOML document."""
    return parse(TrainerConfig, raw, base_dir=base_dir, config_path=config_path)


def load_config(path: str | os.PathLike[str]) -> TrainerConfig:
    """Read and validate a trainer TOML file."""
    return load(TrainerConfig, path)
