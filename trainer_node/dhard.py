"""D_hard: the trainer's misclassified validation rows, split into a shared and a held-out part,
and the shared part cut to the failures that are systematic."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moe.model import MoEClassifier
from moe.train import embed_numpy, predict
from mycroft.data.base import LabeledData


@dataclass
class DHard:
    """shared: sent to data owners. eval: never shared; measures the gain. classes: chosen."""

    shared: LabeledData
    eval: LabeledData
    classes: list[int]
    shared_failures: int | None = None  # the shared part's size before `systematic` cut it


def build_dhard(
    model: MoEClassifier,
    val: LabeledData,
    classes: list[int] | None = None,
    shared_fraction: float = 0.5,
    seed: int = 0,
    batch_size: int = 512,
    device: str = "cpu",
) -> DHard:
    """Misclassified rows of `val` whose true label is in `classes` (default: all classes).

    Split per class (stratified): a class with n >= 2 hard rows puts round(n * shared_fraction)
    of them, clamped to [1, n - 1], into `shared` and the rest into `eval`, so both parts see
    the class. A class with a single hard row sends it to `shared` if shared_fraction >= 0.5,
    else to `eval`. The split depends only on (val rows, predictions, classes, fraction, seed).
    Rows keep their original order within each part. The model predicts on `device`.
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

    pred = predict(model, val.features, batch_size, device=device)
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


def neighbourhood_error(
    model: MoEClassifier,
    val: LabeledData,
    rows: LabeledData,
    k: int,
    batch_size: int = 512,
    device: str = "cpu",
) -> np.ndarray:
    """For each row of `rows` (rows of `val`), the share of its `k` nearest other validation
    rows (cosine, in the model's embedding) that the model gets wrong; the model runs on
    `device`."""
    wrong = predict(model, val.features, batch_size, device=device) != val.labels
    emb = embed_numpy(model, val.features, batch_size, device=device)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    where = {int(r): i for i, r in enumerate(val.row_ids)}
    pos = np.array([where[int(r)] for r in rows.row_ids], dtype=np.int64)
    k = min(k, len(val) - 1)
    out = np.zeros(len(pos))
    for start in range(0, len(pos), 1024):  # bounded memory on a large validation split
        p = pos[start : start + 1024]
        sims = emb[p] @ emb.T
        sims[np.arange(len(p)), p] = -np.inf  # a row is not its own neighbour
        near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + len(p)] = wrong[near].mean(axis=1)
    return out


def systematic(
    model: MoEClassifier,
    val: LabeledData,
    dhard: DHard,
    neighbours: int,
    min_error: float,
    device: str = "cpu",
) -> DHard:
    """`dhard` with its shared part cut to systematic failures: rows whose `neighbours` nearest
    validation rows are failures too, in a share of at least `min_error`.

    A model that fails on a kind of example (a sub-population its training data lacked) fails
    on most of that kind, so those failures sit in neighbourhoods of failures; its other
    mistakes are scattered over class boundaries, and asking owners to match them buys rows
    like the trainer's own. Measured on Fashion-MNIST with 20% inverted validation images:
    the shared part went from 55% to 77-84% inverted rows and selections at 1% from 55-60% to
    77-84% needles (docs/BENCHMARKS.md, quality). The held-out part is not cut: gains are
    measured on every failure. `neighbours = 0`, or no failure qualifying, leaves D_hard as is.
    """
    shared = dhard.shared
    if neighbours == 0 or len(shared) == 0 or len(val) < 2:
        return dhard
    errors = neighbourhood_error(model, val, shared, neighbours, device=device)
    keep = np.flatnonzero(errors >= min_error)
    if len(keep) == 0:
        return dhard
    return DHard(shared.subset(keep, "dhard-shared"), dhard.eval, dhard.classes, len(shared))
