"""D_hard: only misclassified rows of the chosen classes, disjoint, reproducible, stratified."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers_moe import digits, tiny_config

from moe.model import build_model
from moe.train import TrainConfig, predict, train
from mycroft.data.base import LabeledData
from trainer_node import dhard as dhard_mod
from trainer_node.dhard import build_dhard, systematic


@pytest.fixture(scope="module")
def setup():
    base = digits()
    # ids offset from positions, so a mix-up between the two shows
    data = dataclasses.replace(base, row_ids=base.row_ids + 1000)
    tr, val = data.subset(np.arange(0, 1797, 2)), data.subset(np.arange(1, 1797, 2))
    cfg = tiny_config(stem_dim=16, conv_channels=4, expert_hidden=8, embed_dim=8)
    m = build_model(cfg, seed=0)
    # Deliberately under-trained, so there are misclassified rows in several classes.
    train(m, tr, TrainConfig(epochs=1, batch_size=64, seed=0, max_steps=8))
    wrong = predict(m, val.features) != val.labels
    assert wrong.sum() > 40
    return m, val, wrong


def ids(d: LabeledData) -> set[int]:
    return set(d.row_ids.tolist())


def test_only_misclassified_rows_of_chosen_classes(setup) -> None:
    m, val, wrong = setup
    classes = [1, 3, 8, 9]
    dh = build_dhard(m, val, classes=classes, seed=0)
    assert dh.classes == classes
    for part in (dh.shared, dh.eval):
        assert set(part.labels.tolist()) <= set(classes)
        assert (predict(m, part.features) != part.labels).all()
    expected = val.row_ids[wrong & np.isin(val.labels, classes)]
    assert ids(dh.shared) | ids(dh.eval) == set(expected.tolist())


def test_split_is_disjoint_reproducible_and_stratified(setup) -> None:
    m, val, wrong = setup
    a = build_dhard(m, val, seed=3)
    b = build_dhard(m, val, seed=3)
    c = build_dhard(m, val, seed=4)
    assert not ids(a.shared) & ids(a.eval)
    assert np.array_equal(a.shared.row_ids, b.shared.row_ids)
    assert np.array_equal(a.eval.row_ids, b.eval.row_ids)
    assert not np.array_equal(a.shared.row_ids, c.shared.row_ids)
    assert ids(a.shared) | ids(a.eval) == ids(c.shared) | ids(c.eval)
    assert a.classes == list(range(10))
    for cls in range(10):
        n = int((wrong & (val.labels == cls)).sum())
        n_shared = int((a.shared.labels == cls).sum())
        n_eval = int((a.eval.labels == cls).sum())
        assert n_shared + n_eval == n
        if n >= 2:
            assert n_shared >= 1 and n_eval >= 1
            assert abs(n_shared - n / 2) <= 1


def test_fraction_and_bad_arguments(setup) -> None:
    m, val, _ = setup
    dh = build_dhard(m, val, shared_fraction=0.25, seed=0)
    assert len(dh.shared) < len(dh.eval)
    with pytest.raises(ValueError):
        build_dhard(m, val, classes=[10])
    with pytest.raises(ValueError):
        build_dhard(m, val, shared_fraction=1.0)
    empty = build_dhard(m, val, classes=[], seed=0)
    assert len(empty.shared) == 0 and len(empty.eval) == 0


def test_only_systematic_failures_are_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    """A region where the model fails on everything (a sub-population it never saw) keeps its
    failures; mistakes scattered among correct rows are not sent; the held-out part is kept."""
    rng = np.random.default_rng(0)
    n = 200
    region = np.zeros(n, dtype=bool)
    region[:40] = True  # 40 rows near one point, all misclassified
    emb = rng.normal(0, 1, (n, 8)).astype(np.float32)
    emb[region] = rng.normal(0, 0.05, (40, 8)) + 5.0
    labels = rng.integers(0, 3, n)
    pred = labels.copy()
    pred[region] = (labels[region] + 1) % 3
    scattered = rng.choice(np.flatnonzero(~region), 20, replace=False)
    pred[scattered] = (labels[scattered] + 1) % 3
    val = LabeledData(emb, labels, ("a", "b", "c"), np.arange(n) * 10 + 7, "val")
    monkeypatch.setattr(dhard_mod, "predict", lambda model, x, *a, **kw: pred[_rows(x, emb)])
    monkeypatch.setattr(dhard_mod, "embed_numpy", lambda model, x, *a, **kw: x.copy())
    whole = build_dhard(None, val, None, 0.5, seed=0)
    cut = systematic(None, val, whole, neighbours=10, min_error=0.5)
    shared_pos = (cut.shared.row_ids - 7) // 10
    assert set(shared_pos) <= set(np.flatnonzero(region))  # no scattered mistake is sent
    assert len(cut.shared) == int(region[(whole.shared.row_ids - 7) // 10].sum())
    assert cut.shared_failures == len(whole.shared) and cut.eval is whole.eval
    # 0 neighbours (or nothing systematic) sends every failure
    assert systematic(None, val, whole, neighbours=0, min_error=0.5) is whole
    assert systematic(None, val, whole, neighbours=10, min_error=1.01) is whole


def _rows(x: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """Positions of `x`'s rows in `emb` (the stub model predicts by position)."""
    return np.array([int(np.flatnonzero((emb == r).all(axis=1))[0]) for r in x])
