"""Random stratification and seeding, binning on a constructed table, gradient strategies."""

from __future__ import annotations

import numpy as np
import pytest

from selection import Candidates, HardSet, Head, get_strategy, last_layer_gradients


def _labels_of(cand: Candidates, ids: np.ndarray) -> np.ndarray:
    lut = dict(zip(cand.row_ids.tolist(), cand.labels.tolist(), strict=True))
    return np.array([lut[i] for i in ids.tolist()])


def test_random_is_stratified_by_dhard_counts() -> None:
    rng = np.random.default_rng(0)
    cand = Candidates(np.arange(5000, dtype=np.int64), rng.integers(0, 5, 5000).astype(np.int64))
    hard = HardSet(np.array([0] * 60 + [1] * 30 + [4] * 10, dtype=np.int64))
    res = get_strategy("random").select(cand, hard, 100, seed=1)
    counts = np.bincount(_labels_of(cand, res.row_ids), minlength=5)
    assert counts.tolist() == [60, 30, 0, 0, 10]
    res = get_strategy("random").select(cand, hard, 37, seed=1)  # largest-remainder rounding
    assert np.bincount(_labels_of(cand, res.row_ids), minlength=5).tolist() == [22, 11, 0, 0, 4]


def test_random_redistributes_what_a_class_lacks() -> None:
    labels = np.array([0] * 5 + [1] * 500 + [2] * 500, dtype=np.int64)
    cand = Candidates(np.arange(len(labels), dtype=np.int64), labels)
    hard = HardSet(np.array([0] * 50 + [1] * 25 + [2] * 25, dtype=np.int64))
    res = get_strategy("random").select(cand, hard, 100)
    counts = np.bincount(_labels_of(cand, res.row_ids), minlength=3)
    assert counts.tolist() == [5, 48, 47] or counts.tolist() == [5, 47, 48]


def test_random_is_seeded() -> None:
    rng = np.random.default_rng(0)
    cand = Candidates(np.arange(1000, dtype=np.int64), rng.integers(0, 3, 1000).astype(np.int64))
    hard = HardSet(np.array([0, 1, 1, 2], dtype=np.int64))
    a = get_strategy("random").select(cand, hard, 50, seed=5).row_ids
    b = get_strategy("random").select(cand, hard, 50, seed=5).row_ids
    c = get_strategy("random").select(cand, hard, 50, seed=6).row_ids
    np.testing.assert_array_equal(a, b)
    assert set(a.tolist()) != set(c.tolist())


def test_binning_picks_the_nearest_rows() -> None:
    # D_hard spans [0, 10] on both features: 5 bins of width 2
    hard = HardSet(np.zeros(2, np.int64), features=np.array([[0.0, 0.0], [10.0, 10.0]], np.float32))
    feats = np.array(
        [
            [0.5, 0.5],  # bins (0,0): distance 0 to the first D_hard row
            [9.9, 9.1],  # bins (4,4): distance 0 to the second
            [2.5, 0.5],  # (1,0): 1
            [5.0, 5.0],  # (2,2): 4 to either
            [30.0, 30.0],  # (15,15): far outside D_hard's range
            [-9.0, 0.0],  # (-5,0): 5
            [4.5, 1.0],  # (2,0): 2
        ],
        np.float32,
    )
    cand = Candidates(np.arange(7, dtype=np.int64) + 100, np.zeros(7, np.int64), features=feats)
    res = get_strategy("binning").select(cand, hard, 4)
    assert res.row_ids.tolist() == [100, 101, 102, 106]
    np.testing.assert_array_equal(res.scores, [0, 0, -1, -2])
    res = get_strategy("binning", diverse_share=0.5).select(cand, hard, 4, seed=0)
    assert res.row_ids[:2].tolist() == [100, 101]
    assert len(set(res.row_ids.tolist())) == 4
    assert set(res.row_ids[2:].tolist()) <= {103, 104, 105, 102, 106}


def test_binning_uses_same_label_dhard_rows() -> None:
    hard = HardSet(np.array([0, 1], np.int64), features=np.array([[0.0], [10.0]], np.float32))
    cand = Candidates(
        np.arange(4, dtype=np.int64),
        np.array([0, 0, 1, 1], np.int64),
        features=np.array([[10.0], [0.0], [0.0], [10.0]], np.float32),
    )
    res = get_strategy("binning").select(cand, hard, 2)
    assert sorted(res.row_ids.tolist()) == [1, 3]


def _grad_data(seed: int = 0, n: int = 2000, d: int = 12, c: int = 4):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(c, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    e = (means[y] + rng.normal(size=(n, d))).astype(np.float32)
    yh = np.array([0] * 30 + [1] * 20 + [2] * 10, np.int64)
    eh = (0.3 * means[yh] + rng.normal(size=(len(yh), d))).astype(np.float32)
    head = Head(means.copy(), np.zeros(c, np.float32))
    return Candidates(np.arange(n, dtype=np.int64), y.astype(np.int64), e), HardSet(yh, eh), head


@pytest.mark.parametrize("name", ["gradient", "funcfeat"])
def test_gradient_strategies_split_budget_by_dhard_counts(name: str) -> None:
    cand, hard, head = _grad_data()
    res = get_strategy(name).select(cand, hard, 60, head=head)
    counts = np.bincount(_labels_of(cand, res.row_ids), minlength=4)
    assert counts.tolist() == [30, 20, 10, 0]
    assert res.shortfall_reason is None and res.missing_classes == []
    assert {"gradients", "omp"} <= set(res.timings)


def test_privacy_mode_gradients_give_the_same_selection() -> None:
    cand, hard, head = _grad_data(seed=1)
    raw = get_strategy("gradient").select(cand, hard, 40, head=head)
    grads = last_layer_gradients(hard.embeddings, hard.labels, head)
    private = HardSet(hard.labels, None, grads)
    got = get_strategy("gradient").select(cand, private, 40, head=head)
    np.testing.assert_array_equal(raw.row_ids, got.row_ids)
    with pytest.raises(ValueError, match="embeddings"):
        get_strategy("funcfeat").select(cand, private, 40, head=head)


def test_prefilter_keeps_selection_close() -> None:
    cand, hard, head = _grad_data(seed=2, n=6000)
    full = get_strategy("funcfeat", prefilter_min=None).select(cand, hard, 60, head=head)
    pre = get_strategy("funcfeat", prefilter_min=200, prefilter_factor=4).select(
        cand, hard, 60, head=head
    )
    assert len(np.intersect1d(full.row_ids, pre.row_ids)) >= 0.7 * 60


def test_funcfeat_penalty_moves_weight_towards_dhard() -> None:
    cand, hard, head = _grad_data(seed=3)
    from selection.funcfeat import geometric_median

    def mean_dist(ids: np.ndarray) -> float:
        lab = _labels_of(cand, ids)
        out = []
        for c in (0, 1, 2):
            med = geometric_median(hard.embeddings[hard.labels == c])
            rows = cand.embeddings[ids[lab == c]]
            out.append(np.linalg.norm(rows - med, axis=1).mean())
        return float(np.mean(out))

    plain = get_strategy("gradient").select(cand, hard, 60, head=head)
    ff = get_strategy("funcfeat", lam2=20.0, psi_in_pick=True).select(cand, hard, 60, head=head)
    assert mean_dist(ff.row_ids) < mean_dist(plain.row_ids)
