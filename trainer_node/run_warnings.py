"""Warnings about a run whose ranking should not be trusted, computed from its own numbers.

Stored in the report (`warnings`) and printed with the summary, so "+100.0 [+100.0, +100.0]"
from three held-out rows is never shown without saying what it is worth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from moe.model import MoEClassifier
    from mycroft.data.base import LabeledData

Z95 = 1.96  # two-sided 95% normal quantile, as in the gains' confidence intervals
# The precision a ranking needs: owners whose gains differ by less than the CI's half-width
# cannot be told apart. ±10 points is a coarse but useful bar for "this owner helps more".
TARGET_HALF_WIDTH = 0.10
# Below this training accuracy the baseline has not fitted its own rows. Overfitting (high
# training, lower validation accuracy) is not this; a low *training* accuracy means more epochs
# (or a larger model) are needed, and D_hard is then mostly rows not learned yet rather than rows
# the trainer lacks data for, so owners are credited for generic training data.
MIN_TRAIN_ACCURACY = 0.80
# ... and only while the loss still fell by more than this share in the last epoch: a hard or
# noisy task can plateau below MIN_TRAIN_ACCURACY, and more epochs would not help there.
STILL_FALLING = 0.05


def ci_half_width(n: int, p: float = 0.5) -> float:
    """Half-width of the normal-approximation 95% CI of an accuracy `p` measured on `n` rows
    (p = 0.5 is the widest, the honest default before the result is known)."""
    return Z95 * math.sqrt(p * (1 - p) / n)


def rows_for_half_width(half_width: float, p: float = 0.5) -> int:
    """Smallest n whose 95% CI half-width is at most `half_width` (±10 points at p=0.5: 97)."""
    return math.ceil((Z95 / half_width) ** 2 * p * (1 - p))


MIN_DHARD_EVAL_ROWS = rows_for_half_width(TARGET_HALF_WIDTH)


def dhard_eval_warning(n_eval: int) -> str | None:
    """A gain on D_hard-eval moves in steps of 1/n and is uncertain to ±ci_half_width(n): below
    MIN_DHARD_EVAL_ROWS that is wider than ±10 points, so close owners are ranked by noise."""
    if n_eval >= MIN_DHARD_EVAL_ROWS or n_eval <= 0:
        return None
    return (
        f"D_hard-eval has {n_eval} rows: a gain is measured in steps of {100 / n_eval:.0f} points "
        f"with a 95% CI of about ±{100 * ci_half_width(n_eval):.0f} points, and owners whose "
        f"gains differ by less cannot be told apart; about {MIN_DHARD_EVAL_ROWS} held-out rows "
        f"are needed for ±{100 * TARGET_HALF_WIDTH:.0f} points (lower dhard.shared_fraction, widen "
        "dhard.classes, or use more validation data: data.val_fraction or data.val)"
    )


def loss_still_falling(epoch_losses: Sequence[float]) -> bool:
    """The last epoch lowered the mean training loss by more than STILL_FALLING (one epoch
    alone cannot show a plateau, so it counts as falling)."""
    if len(epoch_losses) < 2:
        return True
    before, last = epoch_losses[-2], epoch_losses[-1]
    return before > 0 and (before - last) / before > STILL_FALLING


def undertrained_warning(
    train_accuracy: float, epochs: int, epoch_losses: Sequence[float] = ()
) -> str | None:
    """The baseline did not fit its own training rows (MIN_TRAIN_ACCURACY) and was still
    learning when training stopped (STILL_FALLING)."""
    if train_accuracy >= MIN_TRAIN_ACCURACY or not loss_still_falling(epoch_losses):
        return None
    return (
        f"baseline training accuracy {train_accuracy:.2f} after {epochs} epoch"
        f"{'s' if epochs != 1 else ''} (below {MIN_TRAIN_ACCURACY:.2f}) with the loss still "
        "falling: the baseline is undertrained and D_hard holds rows it has not learned yet; "
        "raise training.epochs (or training.lr)"
    )


def run_warnings(
    n_dhard_eval: int, train_accuracy: float, epochs: int, epoch_losses: Sequence[float] = ()
) -> list[str]:
    found = (
        dhard_eval_warning(n_dhard_eval),
        undertrained_warning(train_accuracy, epochs, epoch_losses),
    )
    return [w for w in found if w is not None]


def train_accuracy(model: MoEClassifier, data: LabeledData, max_rows: int = 5000) -> float:
    """The baseline's accuracy on its own training rows; a fixed sample of at most `max_rows`
    (±1.4 points at 5000) keeps this a small fraction of the training time on large data."""
    from moe.train import evaluate  # lazily: the warning rules above need no torch

    if len(data) > max_rows:
        data = data.subset(np.random.default_rng(0).permutation(len(data))[:max_rows], data.name)
    return evaluate(model, data).accuracy
