"""Acquisition in rounds: a row budget B spent in R requests instead of one.

Round 1 asks for about B/R rows with the baseline's D_hard. Before each later round the trainer
fine-tunes the baseline on its own rows + everything received so far (one seed, the run's
fine-tuning recipe), takes as the new D_hard-shared that model's mistakes among the validation
rows outside D_hard-eval (D_hard-eval never changes: it is what the gain is measured on), and
asks for the next share scored with that model, excluding the rows it already holds. The union
(B distinct rows when the owner has them) is then evaluated exactly like a one-shot subset, so
R = 1, 2, 4 compare at equal total budget.

The loop knows nothing of the network: `ask` fetches one round's rows. The pipeline's `ask`
uploads the model and sends a Select (trainer_node.acquire); the quality bench's runs a strategy
locally (bench.quality_rounds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from moe.io import model_sha256, model_to_bytes
from moe.model import MoEClassifier
from moe.train import predict
from mycroft.data.base import LabeledData
from mycroft.messages import EmbeddedHard, RawHard
from trainer_node.baseline import Baseline, TrainerData, hard_payload
from trainer_node.config import DHardSettings, TrainingSettings
from trainer_node.dhard import neighbourhood_error
from trainer_node.evaluate import trained_model

log = logging.getLogger("mycroft.trainer.rounds")


class Rows(Protocol):
    """What one round returns: an OwnerSubset (pipeline) or LabeledData (bench)."""

    features: np.ndarray
    labels: np.ndarray
    row_ids: np.ndarray


# (scoring model, D_hard payload, rows wanted, owner row ids already held) -> rows, or None
# when the request failed (the chain stops; the caller keeps its error).
AskFn = Callable[[MoEClassifier, RawHard | EmbeddedHard, int, np.ndarray], Rows | None]


def split_budget(budget: int, rounds: int) -> list[int]:
    """`budget` rows over `rounds` requests, evenly, the remainder to the first ones; never a
    round of 0 rows (rounds are capped at the budget)."""
    if budget < 1 or rounds < 1:
        raise ValueError(f"budget and rounds must be >= 1, got {budget} and {rounds}")
    rounds = min(rounds, budget)
    share, extra = divmod(budget, rounds)
    return [share + (i < extra) for i in range(rounds)]


@dataclass(frozen=True)
class RoundInfo:
    rows_wanted: int  # this round's share plus what earlier rounds fell short of
    rows_received: int  # new rows (any the trainer held already are dropped)
    dhard_shared: int  # size of the D_hard-shared this round's request described
    seconds: float  # fine-tuning and D_hard before the request, and the request


@dataclass
class RoundsResult:
    """The union of the rounds' rows (distinct, in the order received) and how each went."""

    features: np.ndarray
    labels: np.ndarray
    row_ids: np.ndarray
    rounds: list[RoundInfo] = field(default_factory=list)
    stopped: str | None = None  # why the chain ended before its last planned round
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.row_ids)


def remaining_failures(
    model: MoEClassifier,
    val: LabeledData,
    held_out: LabeledData,
    classes: list[int],
    neighbours: int = 0,
    min_error: float = 0.0,
    device: str = "cpu",
) -> LabeledData:
    """`model`'s mistakes on the rows of `val` outside `held_out` (D_hard-eval), among the
    D_hard classes, cut to the systematic ones as the first D_hard was (dhard.systematic with
    `neighbours`, `min_error`): the next round's D_hard-shared. The model runs on `device`."""
    pool = val.subset(np.flatnonzero(~np.isin(val.row_ids, held_out.row_ids)))
    if len(pool) == 0:
        return pool
    pred = predict(model, pool.features, device=device)
    wrong = (pred != pool.labels) & np.isin(pool.labels, classes)
    failures = pool.subset(np.flatnonzero(wrong), "dhard-shared")
    if neighbours == 0 or len(failures) == 0:
        return failures
    errors = neighbourhood_error(model, val, failures, neighbours, device=device)
    keep = np.flatnonzero(errors >= min_error)
    return failures.subset(keep, "dhard-shared") if len(keep) else failures


def _union(data: TrainerData, result: RoundsResult) -> LabeledData:
    return LabeledData(
        features=result.features,
        labels=result.labels,
        class_names=data.class_names,
        row_ids=np.arange(len(result), dtype=np.int64),  # owner ids may collide with ours
        name="rounds-so-far",
    )


def _add(result: RoundsResult, rows: Rows) -> int:
    """Append the rows of `rows` not held yet; how many were new."""
    ids = np.asarray(rows.row_ids, dtype=np.int64)
    _, first = np.unique(ids, return_index=True)
    fresh = np.sort(first[~np.isin(ids[first], result.row_ids)])
    result.features = np.concatenate([result.features, np.asarray(rows.features)[fresh]])
    result.labels = np.concatenate([result.labels, np.asarray(rows.labels, np.int64)[fresh]])
    result.row_ids = np.concatenate([result.row_ids, ids[fresh]])
    return len(fresh)


def acquire_in_rounds(
    base: Baseline,
    data: TrainerData,
    settings: TrainingSettings,
    budget: int,
    rounds: int,
    ask: AskFn,
    seed: int,
    mode: str = "embedded",
    on_round: Callable[[str], None] | None = None,
    neighbours: int = 0,
    min_error: float = 0.0,
) -> RoundsResult:
    """Spend `budget` rows in `rounds` calls of `ask`; `mode` is the D_hard payload's
    ("embedded" or "raw", as selection.mode). Stops early when a request fails, when the owner
    has no new rows, or when the fine-tuned model makes no mistakes left to describe."""
    start = time.perf_counter()
    plan = split_budget(budget, rounds)
    shape = data.train.input_shape
    result = RoundsResult(
        features=np.zeros((0, *shape), dtype=np.float32),
        labels=np.zeros(0, dtype=np.int64),
        row_ids=np.zeros(0, dtype=np.int64),
    )
    model, shared = base.scoring_model, base.dhard.shared
    for i in range(len(plan)):
        t = time.perf_counter()
        if i > 0:
            model = trained_model(base, data, _union(data, result), "finetune", seed, settings)
            shared = remaining_failures(
                model,
                data.val,
                base.dhard.eval,
                base.dhard.classes,
                neighbours,
                min_error,
                device=settings.device,
            )
            if len(shared) == 0:
                result.stopped = (
                    f"stopped before round {i + 1} of {len(plan)}: the model fine-tuned on "
                    f"{len(result)} rows makes no mistakes left outside D_hard-eval"
                )
                break
        wanted = sum(plan[: i + 1]) - len(result)  # this round's share + earlier shortfalls
        payload = hard_payload(model, shared, mode, device=settings.device)
        rows = ask(model, payload, wanted, result.row_ids.copy())
        if rows is None:
            result.stopped = f"stopped at round {i + 1} of {len(plan)}: the request failed"
            break
        new = _add(result, rows)
        result.rounds.append(RoundInfo(wanted, new, len(shared), time.perf_counter() - t))
        if on_round is not None:
            on_round(f"round {i + 1}/{len(plan)}: {new} new rows (D_hard-shared {len(shared)})")
        if new == 0:
            result.stopped = f"stopped at round {i + 1} of {len(plan)}: no new rows came back"
            break
    result.seconds = time.perf_counter() - start
    if result.stopped:
        log.info("%s", result.stopped)
    return result


@dataclass(frozen=True)
class RoundsPlan:
    """What a chain of rounds needs from the trainer's side, handed to the acquisition (which
    cannot import this module: the baseline imports it)."""

    base: Baseline
    data: TrainerData
    training: TrainingSettings
    rounds: int
    seed: int  # the fine-tuning seed between rounds
    dhard: DHardSettings  # how each round's D_hard is cut to systematic failures

    def acquire(self, budget: int, ask: AskFn, mode: str) -> RoundsResult:
        """`budget` rows in rounds; `mode` is the form of D_hard the method is sent."""
        return acquire_in_rounds(
            self.base,
            self.data,
            self.training,
            budget,
            self.rounds,
            ask,
            self.seed,
            mode,
            neighbours=self.dhard.neighbours,
            min_error=self.dhard.min_neighbour_error,
        )

    @staticmethod
    def model_file(model: MoEClassifier) -> tuple[bytes, str]:
        """The bytes owners receive for `model`, and their sha256."""
        blob = model_to_bytes(model)
        return blob, model_sha256(blob)
