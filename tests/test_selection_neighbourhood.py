"""Gradient matching's D_hard clusters and feature neighbourhoods: the pool OMP picks from, the
fill when OMP stops early, and robustness to mislabelled rows."""

from __future__ import annotations

import numpy as np
import pytest

from selection import Candidates, HardSet, Head, get_strategy, last_layer_gradients
from selection.feature import FeatureIndexCache, l2_normalise
from selection.last_layer_grads import embeddings_from_gradients
from selection.neighbourhood import Neighbours, cluster_hard

C, D = 3, 6


def _head() -> Head:
    w = np.zeros((C, D), np.float32)
    w[np.arange(C), np.arange(C)] = 2.0  # class k's logit reads embedding dimension k
    return Head(w, np.zeros(C, np.float32))


def _blob(rng: np.random.Generator, centre: np.ndarray, n: int, noise: float = 0.3) -> np.ndarray:
    return (centre + noise * rng.standard_normal((n, D))).astype(np.float32)


def _axis(*pairs: tuple[int, float]) -> np.ndarray:
    v = np.zeros(D, np.float32)
    for dim, value in pairs:
        v[dim] = value
    return v


def test_embeddings_recovered_from_gradients() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, D)).astype(np.float32)
    y = rng.integers(0, C, 50)
    g = last_layer_gradients(e, y, _head())
    np.testing.assert_allclose(embeddings_from_gradients(g, C), e, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="do not fit C=4"):
        embeddings_from_gradients(g, 4)


def test_clusters_follow_separated_modes() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([_blob(rng, _axis((3, 5)), 6), _blob(rng, _axis((4, 5)), 4)])
    groups = cluster_hard(l2_normalise(x), 2, seed=0)
    assert [sorted(g.tolist()) for g in groups] == [list(range(6)), list(range(6, 10))]
    assert len(cluster_hard(l2_normalise(x), 50, seed=0)) <= 10  # never more groups than points


def test_neighbours_round_robin_and_exclusion() -> None:
    emb = np.array([[1, 0.1], [1, 0.3], [0.1, 1], [0.3, 1], [1, 1]], np.float32)
    index = FeatureIndexCache().get(emb, np.zeros(5, np.int64), 0, np.arange(5))
    near = Neighbours(index, np.array([[1, 0], [0, 1]], np.float32))
    none = np.zeros(5, bool)
    got, sims = near.nearest(np.array([0, 1]), 4, none)
    assert got.tolist() == [0, 2, 1, 3]  # every point's nearest before any point's second
    assert np.all(np.diff(sims[::2]) <= 0)
    taken = none.copy()
    taken[[0, 2]] = True
    assert near.nearest(np.array([0, 1]), 5, taken)[0].tolist() == [1, 3, 4]  # rows run out


def _noisy_owner(seed: int) -> tuple[Candidates, HardSet, np.ndarray, np.ndarray]:
    """Class 0 of the owner: 200 ordinary rows; 20 of a sub-population the head gets wrong
    (dimension 3, leaning to class 1); 20 hard rows near the class-2 boundary; 60 varied class-2
    rows mislabelled 0 (confidently wrong, long embeddings: large gradients). D_hard mixes two
    failure modes: 15 sub-population rows and 10 boundary rows. Returns the candidates, D_hard,
    and masks of the rows like D_hard's and of the mislabelled ones."""
    rng = np.random.default_rng(seed)
    sub_population, boundary = _axis((3, 4), (1, 0.5)), _axis((0, 1), (2, 1.5), (5, 3))
    parts = [
        _blob(rng, _axis((0, 3)), 200),
        _blob(rng, sub_population, 20),
        _blob(rng, boundary, 20),
        _blob(rng, _axis((2, 4), (3, 3)), 60, noise=2.0),
        _blob(rng, _axis((1, 3)), 100),  # an unrelated class
    ]
    emb = np.concatenate(parts)
    labels = np.array([0] * 300 + [1] * 100, np.int64)
    kind = np.array([0] * 200 + [1] * 40 + [2] * 60 + [0] * 100)
    hard_emb = np.concatenate([_blob(rng, sub_population, 15), _blob(rng, boundary, 10)])
    hard_labels = np.zeros(len(hard_emb), np.int64)
    hard = HardSet(hard_labels, hard_emb, last_layer_gradients(hard_emb, hard_labels, _head()))
    cand = Candidates(np.arange(len(labels), dtype=np.int64) + 1000, labels, emb)
    return cand, hard, kind == 1, kind == 2


@pytest.mark.parametrize("method", ["gradient", "funcfeat"])
def test_picks_rows_like_dhard_not_mislabelled_rows(method: str) -> None:
    like_share, flip_share, old_flip = [], [], []
    for seed in range(3):
        cand, hard, like_hard, flipped = _noisy_owner(seed)
        pos = np.searchsorted(
            cand.row_ids, get_strategy(method).select(cand, hard, 10, head=_head()).row_ids
        )
        like_share.append(like_hard[pos].mean())
        flip_share.append(flipped[pos].mean())
        old = get_strategy(method, cluster_size=0, pool_factor=0)
        old_pos = np.searchsorted(cand.row_ids, old.select(cand, hard, 10, head=_head()).row_ids)
        old_flip.append(flipped[old_pos].mean())
    assert np.mean(like_share) >= 0.9
    assert np.mean(flip_share) <= 0.05
    assert np.mean(old_flip) >= 0.3  # what one summed target over the whole class picked


def test_gradients_only_hard_set_selects_as_with_embeddings() -> None:
    cand, hard, _, _ = _noisy_owner(0)
    with_emb = get_strategy("gradient").select(cand, hard, 12, head=_head())
    grads_only = HardSet(hard.labels, None, hard.gradients)
    without = get_strategy("gradient").select(cand, grads_only, 12, head=_head())
    assert without.row_ids.tolist() == with_emb.row_ids.tolist()


def test_fill_after_early_stop_ranks_last_and_is_counted() -> None:
    """Rows whose embeddings point away from D_hard correlate negatively with its gradient:
    OMP can take only the 3 rows near D_hard; the rest of the budget comes from the fill,
    nearest D_hard first, every fill row scored below every OMP pick."""
    rng = np.random.default_rng(3)
    toward, away = _axis((1, 3)), _axis((1, -3), (4, 0.5))
    emb = np.concatenate([_blob(rng, toward, 3, 0.1), _blob(rng, away, 40)])
    labels = np.zeros(len(emb), np.int64)
    hard_emb = _blob(rng, toward, 4, 0.1)
    hard = HardSet(np.zeros(4, np.int64), hard_emb)
    cand = Candidates(np.arange(len(emb), dtype=np.int64), labels, emb)
    for method in ("gradient", "funcfeat"):
        res = get_strategy(method).select(cand, hard, 10, head=_head())
        assert len(res.row_ids) == 10 and res.fallback_rows == 7
        omp_part, fill = res.scores[:3], res.scores[3:]
        assert set(res.row_ids[:3].tolist()) == {0, 1, 2}
        assert omp_part.min() >= 0 > fill.max()
        assert np.all(np.diff(fill) <= 0)  # nearest D_hard first
        # each fill row's score is its cosine similarity to the D_hard point that found it
        sims = l2_normalise(emb[res.row_ids[3:]]) @ l2_normalise(hard_emb).T - 2.0
        assert np.all(np.isclose(sims, fill[:, None], atol=1e-5).any(axis=1))


@pytest.mark.parametrize("name", ["cluster_size", "pool_factor"])
def test_neighbourhood_params_are_checked(name: str) -> None:
    from selection import ParamError, wire_params

    assert wire_params("gradient", {name: 3.0}) == {name: 3}
    with pytest.raises(ParamError, match=f"{name}: must be an integer in"):
        wire_params("funcfeat", {name: -1.0})
