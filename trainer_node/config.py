"""The trainer's TOML config, parsed into dataclasses.

Every problem raises ConfigError naming the field (e.g. ``owners[1].address``) so a user can
fix the file without reading code. Relative paths are resolved against the config file's
directory, so a config works the same from any working directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mycroft.errors import ConfigError
from mycroft.files import read_toml
from trainer_node._toml import Section
from trainer_node.selection_names import check_methods, check_rank_method, parse_params

SELECTION_MODES = ("embedded", "raw")
TRAINING_MODES = ("finetune", "retrain", "both")
FULL_METHOD = "full"  # all of an owner's rows: the evaluation ceiling, never ranked as primary
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class DataConfig:
    """Either an `open_source` table (val split carved from train) or prepared NPZ files.

    `source` holds the table given to `mycroft.data.open_source` (``source = "digits"`` plus
    that source's own fields); `base_dir` resolves its relative paths.
    """

    source: dict[str, Any] | None = None
    train: Path | None = None
    val: Path | None = None
    test: Path | None = None
    val_fraction: float = 0.2
    split_seed: int = 0
    base_dir: Path | None = None


@dataclass(frozen=True)
class ModelSettings:
    """The MoE's shape. `extra` passes further `moe.config.ModelConfig` fields through."""

    gate: str = "topk"
    num_experts: int = 4
    top_k: int = 2
    embed_dim: int = 64
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    mode: str = "finetune"
    replay_fraction: float = 0.5
    finetune_epochs: int | None = None  # None: same as `epochs`
    finetune_lr: float | None = None  # None: same as `lr`
    # A subset smaller than this is repeated up to it each fine-tuning epoch, so 16 rows get as
    # many optimiser steps as 512 and can move the model (0: off). See docs/BENCHMARKS.md.
    oversample_to: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # more `moe.train.TrainConfig` fields

    @property
    def modes(self) -> tuple[str, ...]:
        return ("finetune", "retrain") if self.mode == "both" else (self.mode,)


@dataclass(frozen=True)
class DHardSettings:
    classes: tuple[str, ...] | None = None  # None: every class the model gets wrong
    shared_fraction: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class SelectionSettings:
    methods: tuple[str, ...] = ("feature", "random")
    budgets: tuple[int, ...] = (16,)
    mode: str = "embedded"
    seed: int = 0
    rank_by: tuple[str, int] | None = None  # (method, budget); None: first listed non-full
    params: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> params
    score_epoch: int | None = None  # owners score with this epoch's checkpoint; None: final

    @property
    def primary(self) -> tuple[str, int]:
        if self.rank_by is not None:
            return self.rank_by
        ranked = [m for m in self.methods if m != FULL_METHOD]
        return (ranked[0], self.budgets[0])


@dataclass(frozen=True)
class TlsSettings:
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None  # overrides the name checked against the certificate


@dataclass(frozen=True)
class OwnerEndpoint:
    name: str
    address: str
    token: str | None = field(default=None, repr=False)  # never printed in logs or reprs
    tls: TlsSettings | None = None
    deadline_seconds: float = 60.0
    price: float | None = None  # asking price per row revealed (report only); None: not given


@dataclass(frozen=True)
class ClientSettings:
    retries: int = 3
    backoff: float = 0.5  # first wait in seconds; doubles per attempt
    backoff_max: float = 10.0
    concurrency: int = 4


@dataclass(frozen=True)
class TrainerConfig:
    id: str
    run_dir: Path
    data: DataConfig
    model: ModelSettings
    training: TrainingSettings
    dhard: DHardSettings
    selection: SelectionSettings
    owners: tuple[OwnerEndpoint, ...]
    client: ClientSettings
    run_id: str | None = None  # fixed id: a re-run resumes idempotently at the owners
    config_path: Path | None = None


# ---------------------------------------------------------------- sections


def _parse_data(s: Section) -> DataConfig:
    known = {"train", "val", "test", "val_fraction", "split_seed"}
    spec = s.rest(known)
    cfg = DataConfig(
        source=spec or None,
        train=s.path("train"),
        val=s.path("val"),
        test=s.path("test"),
        val_fraction=s.number("val_fraction", 0.2, 0.0, 0.9),
        split_seed=s.integer("split_seed", 0, 0),
        base_dir=s.base_dir,
    )
    if cfg.source is not None and cfg.train is not None:
        raise ConfigError("data.source: give either `source` or NPZ paths (`train`...), not both")
    if cfg.source is not None:
        from mycroft.data import open_source

        open_source(cfg.source, base_dir=s.base_dir, where="data")  # fail early, naming field
        return cfg
    if cfg.train is None:
        raise ConfigError("data.source: give a data source table or NPZ paths (data.train)")
    if cfg.test is None:
        raise ConfigError("data.test: required with data.train")
    for key in ("train", "val", "test"):
        p = getattr(cfg, key)
        if p is not None and not p.is_file():
            raise ConfigError(f"data.{key}: file not found: {p}")
    return cfg


def _parse_model(s: Section) -> ModelSettings:
    known = {"gate", "num_experts", "top_k", "embed_dim"}
    cfg = ModelSettings(
        gate=s.get("gate", str, "topk"),
        num_experts=s.integer("num_experts", 4, 1),
        top_k=s.integer("top_k", 2, 1),
        embed_dim=s.integer("embed_dim", 64, 1),
        extra=s.rest(known),
    )
    from moe.config import ModelConfig  # lazily: config parsing should not need torch

    allowed = {f.name for f in fields(ModelConfig)} - {"input_shape", "num_classes", "class_names"}
    for key in cfg.extra:
        if key not in allowed:
            raise ConfigError(f"model.{key}: unknown key")
    if cfg.top_k > cfg.num_experts:
        raise ConfigError(f"model.top_k: {cfg.top_k} exceeds model.num_experts {cfg.num_experts}")
    return cfg


def _parse_training(s: Section) -> TrainingSettings:
    known = {"epochs", "batch_size", "lr", "seeds", "mode", "replay_fraction"}
    known |= {"finetune_epochs", "finetune_lr", "oversample_to"}
    raw_seeds = s.get("seeds", (int, list), 3)
    if isinstance(raw_seeds, int):
        if raw_seeds < 1:
            raise ConfigError("training.seeds: a count must be >= 1")
        seeds = tuple(range(raw_seeds))
    else:
        if not raw_seeds or not all(type(v) is int and v >= 0 for v in raw_seeds):
            raise ConfigError("training.seeds: must be a count or a list of integers >= 0")
        if len(set(raw_seeds)) != len(raw_seeds):
            raise ConfigError("training.seeds: contains duplicates")
        seeds = tuple(raw_seeds)
    finetune_lr = s.get("finetune_lr", float)
    if finetune_lr is not None and not 1e-8 <= finetune_lr <= 10.0:
        raise ConfigError(f"training.finetune_lr: {finetune_lr} is outside [1e-08, 10.0]")
    extra = s.rest(known)
    from moe.train import TrainConfig

    allowed = {f.name for f in fields(TrainConfig)} - {"epochs", "batch_size", "lr", "seed"}
    for key in extra:
        if key not in allowed:
            raise ConfigError(f"training.{key}: unknown key")
    return TrainingSettings(
        epochs=s.integer("epochs", 5, 1),
        batch_size=s.integer("batch_size", 64, 1),
        lr=s.number("lr", 1e-3, 1e-8, 10.0),
        seeds=seeds,
        mode=s.choice("mode", TRAINING_MODES, "finetune"),
        replay_fraction=s.number("replay_fraction", 0.5, 0.0, 0.99),
        finetune_epochs=s.integer("finetune_epochs", None, 1),
        finetune_lr=finetune_lr,
        oversample_to=s.integer("oversample_to", 0, 0),
        extra=extra,
    )


def _parse_dhard(s: Section) -> DHardSettings:
    cfg = DHardSettings(
        classes=s.str_list("classes", None),
        shared_fraction=s.number("shared_fraction", 0.5, 0.0, 1.0),
        seed=s.integer("seed", 0, 0),
    )
    s.done()
    if not 0.0 < cfg.shared_fraction < 1.0:
        raise ConfigError("dhard.shared_fraction: must be strictly between 0 and 1")
    return cfg


def _parse_selection(s: Section) -> SelectionSettings:
    methods = s.str_list("methods", ("feature", "random"))
    check_methods(methods)
    raw_budgets = s.get("budgets", list, [16])
    if not raw_budgets or not all(type(b) is int and b >= 1 for b in raw_budgets):
        raise ConfigError("selection.budgets: must be a non-empty list of integers >= 1")
    if len(set(raw_budgets)) != len(raw_budgets):
        raise ConfigError("selection.budgets: contains duplicates")
    if all(m == FULL_METHOD for m in methods):
        raise ConfigError("selection.methods: needs a method besides 'full' to rank owners")
    params = parse_params(s.get("params", dict, {}), methods)
    rank_by = None
    raw_rank = s.get("rank_by", dict)
    if raw_rank is not None:
        method, budget = raw_rank.get("method"), raw_rank.get("budget")
        check_rank_method(method, methods, FULL_METHOD)
        if budget not in raw_budgets:
            raise ConfigError(f"selection.rank_by.budget: {budget!r} is not in selection.budgets")
        if set(raw_rank) - {"method", "budget"}:
            raise ConfigError("selection.rank_by: only `method` and `budget` are allowed")
        rank_by = (method, budget)
    cfg = SelectionSettings(
        methods=methods,
        budgets=tuple(raw_budgets),
        mode=s.choice("mode", SELECTION_MODES, "embedded"),
        seed=s.integer("seed", 0, 0),
        rank_by=rank_by,
        params=params,
        score_epoch=s.integer("score_epoch", None, 1),
    )
    s.done()
    return cfg


def _parse_owner(s: Section) -> OwnerEndpoint:
    name = s.get("name", str)
    if name is None or not _NAME_RE.match(name):
        raise ConfigError(f"{s.name}.name: required; letters, digits, '.', '_', '-' (<= 64)")
    address = s.get("address", str)
    if not address or ":" not in address:
        raise ConfigError(f"{s.name}.address: required, as host:port")
    token, token_env = s.get("token", str), s.get("token_env", str)
    if token is not None and token_env is not None:
        raise ConfigError(f"{s.name}.token: give `token` or `token_env`, not both")
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise ConfigError(f"{s.name}.token_env: environment variable {token_env} is not set")
    # Sent as gRPC metadata: printable ASCII without spaces. Never echo the token itself.
    if token is not None and not all("\x21" <= c <= "\x7e" for c in token):
        key = "token" if token_env is None else "token_env"
        raise ConfigError(
            f"{s.name}.{key}: the token must be printable ASCII without spaces (0x21-0x7E)"
        )
    tls = None
    tls_table = s.get("tls", dict)
    if tls_table is not None:
        t = Section(tls_table, f"{s.name}.tls", s.base_dir)
        tls = TlsSettings(
            ca_cert=t.path("ca_cert"),
            client_cert=t.path("client_cert"),
            client_key=t.path("client_key"),
            server_name=t.get("server_name", str),
        )
        t.done()
        if (tls.client_cert is None) != (tls.client_key is None):
            raise ConfigError(f"{s.name}.tls.client_key: client_cert and client_key go together")
        for key in ("ca_cert", "client_cert", "client_key"):
            p = getattr(tls, key)
            if p is not None and not p.is_file():
                raise ConfigError(f"{s.name}.tls.{key}: file not found: {p}")
    deadline = s.number("deadline_seconds", 60.0, 0.1, 86400.0)
    price = s.get("price", float)
    if price is not None and not 0 <= price < float("inf"):  # also rejects NaN
        raise ConfigError(f"{s.name}.price: must be a number >= 0, got {price}")
    s.done()
    return OwnerEndpoint(name, address, token, tls, deadline, price)


def _parse_client(s: Section) -> ClientSettings:
    cfg = ClientSettings(
        retries=s.integer("retries", 3, 0),
        backoff=s.number("backoff", 0.5, 0.0, 60.0),
        backoff_max=s.number("backoff_max", 10.0, 0.0, 600.0),
        concurrency=s.integer("concurrency", 4, 1),
    )
    s.done()
    return cfg


def parse_config(raw: dict[str, Any], base_dir: Path, config_path: Path | None = None):
    """A validated TrainerConfig from an already-parsed TOML document."""
    top = Section(raw, "", base_dir)
    known = {"trainer", "data", "model", "training", "dhard", "selection", "owners", "client"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown section")
    trainer = Section(top.get("trainer", dict, None) or {}, "trainer", base_dir)
    trainer_id = trainer.get("id", str)
    if trainer_id is None or not _NAME_RE.match(trainer_id):
        raise ConfigError("trainer.id: required; letters, digits, '.', '_', '-' (<= 64)")
    run_dir = trainer.path("run_dir") or (base_dir / "runs" / trainer_id).resolve()
    run_id = trainer.get("run_id", str)
    if run_id is not None and not _NAME_RE.match(run_id):
        raise ConfigError("trainer.run_id: letters, digits, '.', '_', '-' (<= 64)")
    trainer.done()
    if "data" not in raw:
        raise ConfigError("data: section required")
    data = _parse_data(Section(raw["data"], "data", base_dir))
    model = _parse_model(Section(raw.get("model", {}), "model", base_dir))
    training = _parse_training(Section(raw.get("training", {}), "training", base_dir))
    dhard = _parse_dhard(Section(raw.get("dhard", {}), "dhard", base_dir))
    selection = _parse_selection(Section(raw.get("selection", {}), "selection", base_dir))
    owners_raw = raw.get("owners")
    if not isinstance(owners_raw, list) or not owners_raw:
        raise ConfigError("owners: at least one [[owners]] entry is required")
    owners = tuple(
        _parse_owner(Section(o, f"owners[{i}]", base_dir)) for i, o in enumerate(owners_raw)
    )
    names = [o.name for o in owners]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"owners[{i}].name: duplicate owner name {name!r}")
    if selection.score_epoch is not None and selection.score_epoch > training.epochs:
        raise ConfigError(
            f"selection.score_epoch: {selection.score_epoch} is after the last epoch "
            f"(training.epochs = {training.epochs})"
        )
    client = _parse_client(Section(raw.get("client", {}), "client", base_dir))
    return TrainerConfig(
        id=trainer_id,
        run_dir=run_dir,
        data=data,
        model=model,
        training=training,
        dhard=dhard,
        selection=selection,
        owners=owners,
        client=client,
        run_id=run_id,
        config_path=config_path,
    )


def load_config(path: str | os.PathLike[str]) -> TrainerConfig:
    """Read and validate a trainer TOML file."""
    p = Path(path).resolve()
    raw = read_toml(p)
    return parse_config(raw, p.parent, p)
