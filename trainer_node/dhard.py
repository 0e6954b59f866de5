"""D_hard: the trainer's misclassified validation rows, split into a shared and a held-out part."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.model import MoEClassifier
from moe.train import predict
from mycroft.data.base import LabeledData


@dataclass
class DHard:
    """shared: sent to data owners. eval: never shared; measures the gain. classes: chosen."""

    shared: LabeledData
    eval: LabeledData
    classes: list[int]


def build_dhard(
    model: MoEClassifier,
    val: LabeledData,
    classes: list[int] | None = None,
    shared_fraction: float = 0.5,
    seed: int = 0,
    batch_size: int = 512,
) -> DHard:
    """Misclassified rows of `val` whose true label is in `classes` (default: all classes).

    Split per class (stratified): a class with n >= 2 hard rows puts round(n * shared_fraction)
    of them, clamped to [1, n - 1], into `shared` and the rest into `eval`, so both parts see
    the class. A class with a single hard row sends it to `shared` if shared_fraction >= 0.5,
    else to `eval`. The split depends only on (val rows, predictions, classes, fraction, seed).
    Rows keep their original order within each part.
    """
    if not 0.0 < shared_fraction < 1.0:
        raise ValueError("shared_fraction must be in (0, 1)")
    n_classes = val.num_classes
    chosen = sorted(set(range(n_classes) if classes is None else (int(c) for c in classes)))
    bad = [c for c in chosen if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"classes {bad} outside [0, {n_classes})")
    if len(val) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return DHard(val.subset(empty, "dhard-shared"), val.subset(empty, "dhard-eval"), chosen)

    pred = predict(model, val.features, batch_size)
    wrong = (pred != val.labels) & np.isin(val.labels, chosen)
    rng = np.random.default_rng(seed)
    shared_idx: list[np.ndarray] = []
    eval_idx: list[np.ndarray] = []
    for c in chosen:
        idx = np.flatnonzero(wrong & (val.labels == c))
        n = len(idx)
        if n == 0:
            continue
        idx = rng.permutation(idx)
        if n == 1:
            k = 1 if shared_fraction >= 0.5 else 0
        else:
            k = min(n - 1, max(1, round(n * shared_fraction)))
        shared_idx.append(idx[:k])
        eval_idx.append(idx[k:])

    def part(chunks: list[np.ndarray], name: str) -> LabeledData:
        rows = np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.int64)
        return val.subset(rows.astype(np.int64), name)

    return DHard(part(shared_idx, "dhard-shared"), part(eval_idx, "dhard-eval"), chosen)
