"""Measure what each owner's subset is worth: train on own data + subset, per seed and mode.

"finetune" continues from the baseline with replay of the trainer's own rows; "retrain" trains a
fresh model (same architecture and normalisation) from scratch on own rows + subset. The gain is
accuracy on the never-shared D_hard-eval after minus the baseline's; the test-set change shows
forgetting (or general improvement).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np

from moe.model import MoEClassifier, build_model
from moe.train import Metrics, evaluate, finetune, train
from mycroft.data.base import LabeledData
from trainer_node.acquire import OwnerOutcome, ProgressEvent, ProgressFn, RequestOutcome
from trainer_node.baseline import Baseline, TrainerData, train_config
from trainer_node.config import TrainingSettings
from trainer_node.messages import OwnerSubset
from trainer_node.report import Routing, SeedResult

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


class Controls:
    """Control runs, one per (mode, seed, rows): the same schedule on the trainer's own rows.

    Fine-tuning on k owner rows is compared with fine-tuning on k rows drawn from the trainer's
    own data (same seed, same replay, same steps); retraining on own + subset with retraining
    on own data alone. Cached, so owners and methods with equal subset sizes share one run.
    """

    def __init__(self, base: Baseline, data: TrainerData, settings: TrainingSettings):
        self.base, self.data, self.settings = base, data, settings
        self._runs: dict[tuple[str, int, int], TrainedEval] = {}

    def has_run(self, mode: str, seed: int, rows: int) -> bool:
        """Whether the control for these settings has been trained already (it is cached)."""
        return self._key(mode, seed, rows) in self._runs

    def _key(self, mode: str, seed: int, rows: int) -> tuple[str, int, int]:
        if mode == "finetune":
            return (mode, seed, max(rows, self.settings.oversample_to))
        return (mode, seed, 0)  # retraining on own data alone does not depend on the size

    def get(self, mode: str, seed: int, rows: int) -> TrainedEval:
        key = self._key(mode, seed, rows)
        rows = key[2]
        if key not in self._runs:
            own = self.data.train
            # distinct rows while the trainer has enough of them, like a subset of distinct rows
            pick = np.random.default_rng([seed, rows]).choice(
                len(own), size=rows, replace=rows > len(own)
            )
            extra = own.subset(pick, name="control")
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
    """One (subset, mode, seed) cell: train, then evaluate on D_hard-eval and the test set."""
    start = time.perf_counter()
    model = trained_model(base, data, extra, mode, seed, settings)
    seconds = time.perf_counter() - start
    return TrainedEval(
        dhard_accuracy=evaluate(model, base.dhard.eval).accuracy,
        test=evaluate(model, data.test),
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


def evaluate_owners(
    outcomes: list[OwnerOutcome],
    base: Baseline,
    data: TrainerData,
    settings: TrainingSettings,
    progress: ProgressFn | None = None,
) -> dict[str, list[SeedResult]]:
    """Owner name -> one SeedResult per (successful request, training mode, seed)."""
    cells = [
        (o, req, mode, seed)
        for o in outcomes
        if o.ok
        for req in o.requests
        if req.subset is not None
        for mode in settings.modes
        for seed in settings.seeds
    ]
    results: dict[str, list[SeedResult]] = {o.endpoint.name: [] for o in outcomes}
    controls = Controls(base, data, settings)
    for i, (owner, req, mode, seed) in enumerate(cells):
        name = owner.endpoint.name
        if progress is not None:
            msg = f"{name}: {req.method}@{req.budget} {mode} seed {seed}"
            # One count across all owners (owner None): "k of N" is the whole stage's.
            progress(ProgressEvent("evaluate", msg, None, i, len(cells)))
        assert req.subset is not None
        trained = control = None
        if len(req.subset):
            extra = subset_data(req.subset, data.class_names, f"{name}-{req.method}-{req.budget}")
            trained = train_and_measure(base, data, extra, mode, seed, settings)
            control = controls.get(mode, seed, len(req.subset))
        result = _seed_result(req, mode, seed, base, data.class_names, trained, control)
        log.info(
            "owner=%s request_id=%s %s seed=%d: D_hard-eval %.3f (%+.3f vs control), "
            "test %.3f (%+.3f)",
            *(name, req.request_id, mode, seed, result.dhard_accuracy, result.dhard_gain),
            *(result.test_accuracy, result.test_gain),
        )
        results[name].append(result)
    if progress is not None:
        progress(ProgressEvent("evaluate", "done", None, len(cells), len(cells)))
    return results
