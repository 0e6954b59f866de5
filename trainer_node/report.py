"""The trainer's report: dataclasses -> JSON (schema `mycroft/schemas/report.v1.json`).

The JSON carries everything the HTML report needs, so the renderer never re-runs anything.
It is written atomically (temporary file + rename): a crash leaves the old report or none,
never half of one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TextIO

from mycroft.files import write_atomic
from trainer_node.verdict import compute_verdict

SCHEMA_VERSION = "1.0"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "mycroft" / "schemas" / "report.v1.json"


@dataclass
class Routing:
    expert_share: list[float]  # fraction of routed inputs per expert
    max_routing_imbalance: float  # largest share relative to the uniform share


@dataclass
class BudgetState:
    cap: int
    used: int
    left: int


@dataclass
class ModelSummary:
    gate: str
    num_experts: int
    top_k: int
    embed_dim: int
    sha256: str
    size_bytes: int
    config: dict[str, Any]  # the full moe ModelConfig as a dict


@dataclass
class DataSummary:
    name: str
    train_rows: int
    val_rows: int
    test_rows: int
    input_shape: list[int]


@dataclass
class Settings:
    methods: list[str]
    budgets: list[int]
    seeds: list[int]
    selection_mode: str  # "embedded" | "raw"
    training_mode: str  # "finetune" | "retrain" | "both"
    training_modes: list[str]
    rank_by: dict[str, Any]  # {"method", "budget", "training_mode"}
    epochs: int
    finetune_epochs: int
    batch_size: int
    lr: float
    replay_fraction: float
    dhard_classes: list[str] | None
    shared_fraction: float
    dhard_seed: int
    selection_seed: int
    oversample_to: int = 0  # subsets repeated up to this many rows per fine-tuning epoch
    score_epoch: int | None = None  # the checkpoint owners scored with; None: the final model
    rounds: int = 1  # each budget acquired in this many Selects (selection.rounds)
    device: str | None = None  # where the trainer trained, e.g. "cpu", "cuda:0 (NVIDIA H200)"
    compute: str | None = (
        None  # where the evaluation's tasks ran, e.g. "ray (auto), 1 CPU per task"
    )


@dataclass
class BaselineSummary:
    dhard_eval_accuracy: float | None  # None when D_hard-eval is empty
    test_accuracy: float
    val_accuracy: float
    test_loss: float
    per_class_accuracy: list[float | None]  # test set, aligned with class_names
    routing: Routing
    train_seconds: float


@dataclass
class DHardClass:
    class_name: str
    class_index: int
    shared: int
    eval: int


@dataclass
class DHardSummary:
    classes: list[str]
    shared_total: int
    eval_total: int
    per_class: list[DHardClass]
    # the shared part's failures before the cut to systematic ones (None: no cut was made)
    shared_failures: int | None = None


@dataclass
class OwnerDescribe:
    owner_name: str
    protocol_version: str
    row_count: int
    classes: list[str]
    class_counts: list[int]
    input_shape: list[int]
    methods: list[str]
    trainer_id: str


@dataclass
class RequestRecord:
    request_id: str
    method: str
    budget: int
    rows_requested: int
    status: str  # "ok" | "failed"
    rows_received: int = 0
    new_rows_charged: int = 0
    replayed: bool = False
    attempts: int = 0
    transfer_seconds: float = 0.0  # wall time of the Select call (selection + streaming)
    selection_seconds: float = 0.0  # the owner's own timings, summed
    timings: dict[str, float] = field(default_factory=dict)
    received_per_class: list[int] = field(default_factory=list)  # aligned with class_names
    missing_classes: list[str] = field(default_factory=list)
    shortfall_reason: str | None = None
    error: str | None = None
    error_code: str | None = None
    round: int = 1  # its place in a chain of rounds (`budget` is the chain's total)
    # Only in a simulation, where the scenario knows each row: the share of the rows received
    # that are sub-population rows ("needle"), wrong-labelled or feature-corrupted; None (or a
    # None share) where the scenario has no such rows.
    truth: dict[str, float | None] | None = None


@dataclass
class SeedResult:
    method: str
    budget: int
    training_mode: str
    seed: int
    rows_received: int
    new_rows_charged: int
    dhard_accuracy: float | None
    test_accuracy: float
    # The control: the same training schedule with the owner's rows replaced by the trainer's
    # own. Gains are measured against it, not against the baseline, because D_hard is the
    # baseline's own mistakes and any further training fixes some of them by chance.
    control_dhard_accuracy: float | None
    control_test_accuracy: float
    dhard_gain: float | None
    test_gain: float
    per_class_accuracy: list[float | None]
    routing: Routing
    selection_seconds: float
    transfer_seconds: float
    train_seconds: float
    missing_classes: list[str]
    shortfall_reason: str | None


@dataclass
class EvaluationFailure:
    """A (request, training mode, seed) cell whose training or control run failed on every
    attempt (compute.retries): it has no SeedResult, so its owner's gains rest on fewer seeds."""

    method: str
    budget: int
    training_mode: str
    seed: int
    error: str


@dataclass
class GainSummary:
    mean: float
    std: float
    ci95: list[float] | None  # [low, high]; None with a single seed
    n: int


@dataclass
class Utility:
    method: str
    budget: int
    training_mode: str
    dhard_gain: GainSummary
    test_gain_mean: float
    test_gain_std: float
    dhard_accuracy_mean: float
    test_accuracy_mean: float
    rank: int | None  # this owner's rank among owners for this (method, budget, mode)


@dataclass
class OwnerReport:
    name: str
    address: str
    status: str  # "ok" | "failed"
    error: str | None = None
    error_code: str | None = None
    describe: OwnerDescribe | None = None
    budget: BudgetState | None = None  # after the run
    model_uploaded: bool | None = None  # False: the owner already had it cached
    requests: list[RequestRecord] = field(default_factory=list)
    results: list[SeedResult] = field(default_factory=list)
    utility: list[Utility] = field(default_factory=list)
    rank: int | None = None  # rank under the primary (method, budget, mode)
    price: float | None = None  # per row revealed, from the trainer config; None: not given
    evaluation_failures: list[EvaluationFailure] = field(default_factory=list)


@dataclass
class RankEntry:
    rank: int
    owner: str
    method: str
    budget: int
    training_mode: str
    dhard_gain_mean: float
    dhard_gain_std: float
    ci95: list[float] | None
    test_gain_mean: float
    n: int


@dataclass
class Agreement:
    method: str
    budget: int
    training_mode: str
    n_owners: int
    spearman: float | None
    kendall_tau: float | None


@dataclass
class FullInformation:
    training_mode: str
    gains: dict[str, float]  # owner -> mean D_hard gain with all its rows
    ranking: list[str]  # owners best first under full information
    agreement: list[Agreement]


@dataclass
class Timings:
    total_seconds: float
    baseline_seconds: float
    acquire_seconds: float
    evaluate_seconds: float


@dataclass
class Report:
    run_id: str
    created_at: str  # ISO 8601, UTC
    trainer_id: str
    data: DataSummary
    class_names: list[str]
    model: ModelSummary
    settings: Settings
    baseline: BaselineSummary
    dhard: DHardSummary
    owners: list[OwnerReport]
    ranking: list[RankEntry]
    full_information: FullInformation | None
    timings: Timings
    schema_version: str = SCHEMA_VERSION
    warnings: list[str] = field(default_factory=list)  # why the ranking may not be trusted

    def to_dict(self) -> dict[str, Any]:
        d = _jsonable(asdict(self))
        d["verdict"] = compute_verdict(d)  # derived from the data above, so re-rendering agrees
        # schema_version first: a reader can check it before anything else
        return {"schema_version": d.pop("schema_version"), **d}


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, numpy scalars -> Python, NaN/inf -> None (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@cache
def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def validate_report(obj: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (with the failing path) if `obj` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise error


def write_report(report: Report | dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Validate, then write atomically: temporary file in the same directory + rename."""
    obj = report.to_dict() if isinstance(report, Report) else report
    validate_report(obj)

    def dump(f: TextIO) -> None:  # streamed: no second copy of a large report in memory
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")

    return write_atomic(path, dump)


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A report JSON, validated against the schema."""
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    validate_report(obj)
    return obj
