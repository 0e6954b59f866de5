"""Measure what each owner's subset is worth: train on own data + subset, per seed and mode.

"finetune" continues from the baseline with replay of the trainer's own rows; "retrain" trains a
fresh model (same architecture and normalisation) from scratch on own rows + subset. The gain is
accuracy on the never-shared D_hard-eval after minus the baseline's; the test-set change shows
forgetting (or general improvement).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from moe.model import MoEClassifier, build_model
from moe.train import Metrics, evaluate, finetune, train
from mycroft.data.base import LabeledData
from trainer_node.acquire import OwnerOutcome, ProgressEvent, ProgressFn, RequestOutcome
from trainer_node.baseline import Baseline, TrainerData, train_config
from trainer_node.compute import ComputeSettings, TaskFailure, run_tasks
from trainer_node.config import TrainingSettings
from trainer_node.messages import OwnerSubset
from trainer_node.report import EvaluationFailure, Routing, SeedResult

log = logging.getLogger("mycroft.trainer.evaluate")


def per_class_list(metrics: Metrics, class_names: tuple[str, ...]) -> list[float | None]:
    """Per-class accuracy aligned with class_names; None for classes absent from the data."""
    return [metrics.per_class_accuracy.get(name) for name in class_names]


def routing_of(metrics: Metrics) -> Routing:
    return Routing(list(metrics.expert_share), float(metrics.max_routing_imbalance))


def subset_data(subset: OwnerSubset, class_names: tuple[str, ...], name: str) -> LabeledData:
    return LabeledData(
        features=np.ascontiguousarray(subset.features, dtype=np.float32),
        labels=np.ascontiguousarray(subset.labels, dtype=np.int64),
        class_names=class_names,
        row_ids=subset.row_ids.astype(np.int64),
        name=name,
    )


def _combined(own: LabeledData, extra: LabeledData) -> LabeledData:
    # Owner row ids live in the owner's id space and may collide with ours: renumber.
    n = len(own) + len(extra)
    return LabeledData(
        features=np.concatenate([own.features, extra.features]),
        labels=np.concatenate([own.labels, extra.labels]),
        class_names=own.class_names,
        row_ids=np.arange(n, dtype=np.int64),
        name=f"{own.name}+{extra.name}",
    )


def oversampled(rows: LabeledData, target: int) -> LabeledData:
    """`rows` repeated (whole copies first, then a prefix) up to `target` rows; unchanged when
    already that large. Tiny subsets otherwise get one or two optimiser steps per epoch."""
    n = len(rows)
    if n == 0 or n >= target:
        return rows
    idx = np.resize(np.arange(n), target)
    return LabeledData(
        features=rows.features[idx],
        labels=rows.labels[idx],
        class_names=rows.class_names,
        row_ids=np.arange(target, dtype=np.int64),
        name=rows.name,
    )


@dataclass(frozen=True)
class TrainedEval:
    dhard_accuracy: float
    test: Metrics
    train_seconds: float


def versus_control(trained: TrainedEval, control: TrainedEval) -> dict[str, float | None]:
    """A trained cell's accuracies, its control's, and the gains between them: the one place
    that defines utility gain (the report and the quality benchmark both use it)."""
    return {
        "dhard_accuracy": trained.dhard_accuracy,
        "test_accuracy": trained.test.accuracy,
        "control_dhard_accuracy": control.dhard_accuracy,
        "control_test_accuracy": control.test.accuracy,
        "dhard_gain": trained.dhard_accuracy - control.dhard_accuracy,
        "test_gain": trained.test.accuracy - control.test.accuracy,
    }


def control_key(mode: str, seed: int, rows: int, oversample_to: int) -> tuple[str, int, int]:
    """The control run a cell of `rows` owner rows is compared with; cells sharing a key share
    one run."""
    if mode == "finetune":
        return (mode, seed, max(rows, oversample_to))
    return (mode, seed, 0)  # retraining on own data alone does not depend on the size


def control_rows(own: LabeledData, seed: int, rows: int) -> LabeledData:
    """The trainer's own rows a control trains on in place of an owner's `rows` rows:
    distinct rows while the trainer has enough of them, like a subset of distinct rows."""
    pick = np.random.default_rng([seed, rows]).choice(len(own), size=rows, replace=rows > len(own))
    return own.subset(pick, name="control")


class Controls:
    """Control runs, one per (mode, seed, rows): the same schedule on the trainer's own rows.

    Fine-tuning on k owner rows is compared with fine-tuning on k rows drawn from the trainer's
    own data (same seed, same replay, same steps); retraining on own + subset with retraining
    on own data alone. Cached, so owners and methods with equal subset sizes share one run.
    (evaluate_owners plans the same runs as tasks; the benchmarks use this cache.)
    """

    def __init__(self, base: Baseline, data: TrainerData, settings: TrainingSettings):
        self.base, self.data, self.settings = base, data, settings
        self._runs: dict[tuple[str, int, int], TrainedEval] = {}

    def has_run(self, mode: str, seed: int, rows: int) -> bool:
        """Whether the control for these settings has been trained already (it is cached)."""
        return self._key(mode, seed, rows) in self._runs

    def _key(self, mode: str, seed: int, rows: int) -> tuple[str, int, int]:
        return control_key(mode, seed, rows, self.settings.oversample_to)

    def get(self, mode: str, seed: int, rows: int) -> TrainedEval:
        key = self._key(mode, seed, rows)
        if key not in self._runs:
            extra = control_rows(self.data.train, seed, key[2])
            self._runs[key] = train_and_measure(
                self.base, self.data, extra, mode, seed, self.settings
            )
        return self._runs[key]


def trained_model(
    base: Baseline,
    data: TrainerData,
    extra: LabeledData,
    mode: str,
    seed: int,
    settings: TrainingSettings,
) -> MoEClassifier:
    """The baseline fine-tuned on own rows + `extra` (mode "finetune"), or a model retrained
    from scratch on both ("retrain")."""
    if mode == "finetune":
        model = copy.deepcopy(base.model)
        finetune(
            model,
            oversampled(extra, settings.oversample_to),
            data.train,
            train_config(settings, seed, finetune=True),
            replay_fraction=settings.replay_fraction,
        )
    else:
        model = build_model(base.config, seed=seed)  # the model takes its own copy of the config
        train(model, _combined(data.train, extra), train_config(settings, seed))
    return model.eval()


def train_and_measure(
    base: Baseline,
    data: TrainerData,
    extra: LabeledData,
    mode: str,
    seed: int,
    settings: TrainingSettings,
) -> TrainedEval:
    """One (subset, mode, seed) cell: train, then evaluate on D_hard-eval and the test set.
    A pure function of its inputs (seeded training, deterministic evaluation), so it gives the
    same numbers in this process, a worker process or a Ray task."""
    start = time.perf_counter()
    model = trained_model(base, data, extra, mode, seed, settings)
    seconds = time.perf_counter() - start
    device, threads = settings.device, train_config(settings, seed).num_threads
    return TrainedEval(
        dhard_accuracy=evaluate(model, base.dhard.eval, device=device, threads=threads).accuracy,
        test=evaluate(model, data.test, device=device, threads=threads),
        train_seconds=seconds,
    )


def _seed_result(
    req: RequestOutcome,
    mode: str,
    seed: int,
    base: Baseline,
    class_names: tuple[str, ...],
    trained: TrainedEval | None,
    control: TrainedEval | None,
) -> SeedResult:
    subset = req.subset
    assert subset is not None
    s = subset.summary
    if trained is None or control is None:  # no rows came back: nothing to train, no change
        trained = control = TrainedEval(base.dhard_eval_accuracy or 0.0, base.test, 0.0)
    return SeedResult(
        method=req.method,
        budget=req.budget,
        training_mode=mode,
        seed=seed,
        rows_received=len(subset),
        new_rows_charged=s.new_rows_charged,
        **versus_control(trained, control),
        per_class_accuracy=per_class_list(trained.test, class_names),
        routing=routing_of(trained.test),
        selection_seconds=s.selection_seconds,
        transfer_seconds=subset.seconds,
        train_seconds=trained.train_seconds,
        missing_classes=[_class_name(c, class_names) for c in s.missing_classes],
        shortfall_reason=s.shortfall_reason or None,
    )


def _class_name(index: int, class_names: tuple[str, ...]) -> str:
    return class_names[index] if 0 <= index < len(class_names) else f"#{index}"


@dataclass(frozen=True)
class TrainTask:
    """One training run of the plan: a cell's (on an owner's rows) or a control's."""

    mode: str
    seed: int
    extra: LabeledData | None  # the owner's rows; None: a control, drawn from own data
    control_rows: int = 0  # a control's row count (its key's)
    label: str = ""  # for progress and logs


@dataclass(frozen=True)
class EvalInputs:
    """What every task shares: sent to each worker once (trainer_node.compute)."""

    base: Baseline
    data: TrainerData
    settings: TrainingSettings


def run_train_task(inputs: EvalInputs, task: TrainTask) -> TrainedEval:
    """A task of the plan, wherever it runs."""
    extra = task.extra
    if extra is None:
        extra = control_rows(inputs.data.train, task.seed, task.control_rows)
    return train_and_measure(inputs.base, inputs.data, extra, task.mode, task.seed, inputs.settings)


@dataclass(frozen=True)
class Cell:
    """One (owner, request, mode, seed) of the report, and the tasks whose results it needs
    (None for a request that returned no rows: nothing to train)."""

    owner: str
    request: RequestOutcome
    mode: str
    seed: int
    trained: int | None
    control: int | None


def plan(
    outcomes: list[OwnerOutcome], data: TrainerData, settings: TrainingSettings
) -> tuple[list[Cell], list[TrainTask]]:
    """Every cell in report order, and the distinct training runs they need (each control once),
    in the order a serial run trains them."""
    cells: list[Cell] = []
    tasks: list[TrainTask] = []
    controls: dict[tuple[str, int, int], int] = {}
    for owner in outcomes:
        name = owner.endpoint.name
        requests = [r for r in owner.requests if r.subset is not None] if owner.ok else []
        for req, mode, seed in itertools.product(requests, settings.modes, settings.seeds):
            assert req.subset is not None
            if not len(req.subset):
                cells.append(Cell(name, req, mode, seed, None, None))
                continue
            extra = subset_data(req.subset, data.class_names, f"{name}-{req.method}-{req.budget}")
            label = f"{name}: {req.method}@{req.budget} {mode} seed {seed}"
            tasks.append(TrainTask(mode, seed, extra, label=label))
            trained = len(tasks) - 1
            key = control_key(mode, seed, len(req.subset), settings.oversample_to)
            if key not in controls:
                controls[key] = len(tasks)
                rows = f"{key[2]} own rows" if key[2] else "own data alone"
                label = f"control: {mode} seed {seed} on {rows}"
                tasks.append(TrainTask(mode, seed, None, key[2], label))
            cells.append(Cell(name, req, mode, seed, trained, controls[key]))
    return cells, tasks


@dataclass
class Evaluation:
    results: dict[str, list[SeedResult]]  # owner -> one per evaluated cell, in plan order
    failures: dict[str, list[EvaluationFailure]]  # owner -> cells that could not be evaluated

    @property
    def failed_cells(self) -> int:
        return sum(len(f) for f in self.failures.values())

    def measured(self) -> dict[str, list[dict[str, Any]]]:
        """The results without their training wall time: what must not depend on the backend
        or worker count the tasks ran on."""
        return {
            owner: [
                {k: v for k, v in dataclasses.asdict(r).items() if k != "train_seconds"} for r in rs
            ]
            for owner, rs in self.results.items()
        }


def _failure(cell: Cell, trained: object, control: object) -> EvaluationFailure | None:
    if isinstance(trained, TaskFailure):
        error = trained.describe()
    elif isinstance(control, TaskFailure):
        error = f"control run failed: {control.describe()}"
    else:
        return None
    req = cell.request
    return EvaluationFailure(req.method, req.budget, cell.mode, cell.seed, error)


def evaluate_owners(
    outcomes: list[OwnerOutcome],
    base: Baseline,
    data: TrainerData,
    settings: TrainingSettings,
    progress: ProgressFn | None = None,
    compute: ComputeSettings | None = None,
) -> Evaluation:
    """Owner name -> one SeedResult per (successful request, training mode, seed), with the
    cells whose training failed on every attempt listed instead. The training runs (cells and
    their distinct controls) run as independent tasks on `compute` (default: one after another
    in this process); results do not depend on where they ran."""
    compute = compute or ComputeSettings()
    cells, tasks = plan(outcomes, data, settings)
    done = 0

    def report(message: str) -> None:
        # One count across all owners (owner None): "k of N" is the whole stage's.
        if progress is not None:
            progress(ProgressEvent("evaluate", message, None, done, len(tasks)))

    def finished(index: int, outcome: TrainedEval | TaskFailure) -> None:
        nonlocal done
        done += 1
        failed = f" failed: {outcome.error}" if isinstance(outcome, TaskFailure) else ""
        report(tasks[index].label + failed)

    report(f"{len(tasks)} training runs for {len(cells)} cells ({compute.describe()})")
    inputs = EvalInputs(base, data, settings)
    outputs = run_tasks(compute, run_train_task, inputs, tasks, finished)

    evaluation = Evaluation({o.endpoint.name: [] for o in outcomes}, {})
    for cell in cells:
        trained = None if cell.trained is None else outputs[cell.trained]
        control = None if cell.control is None else outputs[cell.control]
        failure = _failure(cell, trained, control)
        if failure is not None:
            log.warning(
                "owner=%s request_id=%s %s seed=%d: evaluation failed: %s",
                cell.owner,
                cell.request.request_id,
                cell.mode,
                cell.seed,
                failure.error,
            )
            evaluation.failures.setdefault(cell.owner, []).append(failure)
            continue
        result = _seed_result(
            cell.request, cell.mode, cell.seed, base, data.class_names, trained, control
        )
        log.info(
            "owner=%s request_id=%s %s seed=%d: D_hard-eval %.3f (%+.3f vs control), "
            "test %.3f (%+.3f)",
            *(cell.owner, cell.request.request_id, cell.mode, cell.seed),
            *(result.dhard_accuracy, result.dhard_gain, result.test_accuracy, result.test_gain),
        )
        evaluation.results[cell.owner].append(result)
    failed = f", {evaluation.failed_cells} cells failed" if evaluation.failed_cells else ""
    report("done" + failed)
    return evaluation
