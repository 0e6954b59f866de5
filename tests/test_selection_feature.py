"""Feature matching: coverage of every D_hard sample, same-label neighbours, index reuse, IVF."""

from __future__ import annotations

import faiss
import numpy as np

from selection import Candidates, FeatureIndexCache, HardSet, IndexParams, get_strategy
from selection.feature import build_class_index, l2_normalise


def _data(n: int = 3000, m: int = 40, d: int = 16, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    cand = Candidates(
        row_ids=np.arange(n, dtype=np.int64) + 1000,
        labels=rng.integers(0, c, n).astype(np.int64),
        embeddings=rng.normal(size=(n, d)).astype(np.float32),
    )
    hard = HardSet(
        labels=rng.integers(0, c, m).astype(np.int64),
        embeddings=rng.normal(size=(m, d)).astype(np.float32),
    )
    return cand, hard


def _first_neighbours(cand: Candidates, hard: HardSet) -> np.ndarray:
    ce, he = l2_normalise(cand.embeddings), l2_normalise(hard.embeddings)
    sims = he @ ce.T
    sims[hard.labels[:, None] != cand.labels[None, :]] = -np.inf  # same label only
    return cand.row_ids[np.argmax(sims, axis=1)]


def test_every_dhard_sample_gets_its_nearest_same_label_row() -> None:
    cand, hard = _data()
    first = _first_neighbours(cand, hard)
    for budget in (len(hard), len(hard) + 7, 300):
        res = get_strategy("feature").select(cand, hard, budget)
        assert len(res.row_ids) == budget
        assert set(first.tolist()) <= set(res.row_ids.tolist())
    # round-robin: with B = |D_hard| distinct first neighbours come first, in D_hard order
    res = get_strategy("feature").select(cand, hard, len(hard))
    uniq = list(dict.fromkeys(first.tolist()))
    assert res.row_ids[: len(uniq)].tolist() == uniq


def test_only_same_label_rows_and_missing_class() -> None:
    cand, hard = _data()
    keep = cand.labels != 2
    cand2 = Candidates(cand.row_ids[keep], cand.labels[keep], cand.embeddings[keep])
    res = get_strategy("feature").select(cand2, hard, 200)
    labels = dict(zip(cand2.row_ids.tolist(), cand2.labels.tolist(), strict=True))
    assert {labels[i] for i in res.row_ids.tolist()} <= set(hard.labels.tolist()) - {2}
    assert res.missing_classes == ([2] if 2 in hard.labels else [])


def test_deepens_search_when_duplicates_exhaust_the_first_neighbours() -> None:
    cand, hard = _data(n=500, m=30, c=1)
    same = HardSet(hard.labels, np.repeat(hard.embeddings[:1], len(hard), axis=0))
    res = get_strategy("feature").select(cand, same, 250)  # all queries share neighbours
    assert len(res.row_ids) == 250
    assert res.shortfall_reason is None


def test_index_built_once_and_reused() -> None:
    cand, hard = _data()
    strat = get_strategy("feature")
    strat.select(cand, hard, 50)
    built = strat.cache.builds
    strat.select(cand, hard, 80, seed=3)
    assert strat.cache.builds == built  # same arrays: no rebuild
    other = Candidates(cand.row_ids, cand.labels, cand.embeddings.copy())
    strat.select(other, hard, 50)
    assert strat.cache.builds == 2 * built
    pre = FeatureIndexCache.build(cand)
    shared = get_strategy("feature", cache=pre)
    shared.select(cand, hard, 50)
    assert pre.builds == 3  # prebuilt for every class, nothing built at request time


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d)).astype(np.float32)
    return (centres[rng.integers(0, 50, n)] + 0.4 * rng.normal(size=(n, d))).astype(np.float32)


def test_ivf_recall_vs_exact() -> None:
    faiss.omp_set_num_threads(2)
    n, d = 20_000, 32
    emb = l2_normalise(_clustered(n, d, 0))
    queries = l2_normalise(_clustered(200, d, 1))
    pos = np.arange(n)
    ivf = build_class_index(emb, pos, IndexParams(flat_threshold=1000, nprobe=16))
    exact = build_class_index(emb, pos, IndexParams())
    assert not ivf.exact and exact.exact
    _, got = ivf.index.search(queries, 10)
    _, want = exact.index.search(queries, 10)
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert recall >= 0.9, recall
    # end to end: the IVF selection keeps most of the exact selection
    cand = Candidates(pos.astype(np.int64), np.zeros(n, np.int64), emb)
    hard = HardSet(np.zeros(len(queries), np.int64), queries)
    a = get_strategy("feature", flat_threshold=1000).select(cand, hard, 1000)
    b = get_strategy("feature").select(cand, hard, 1000)
    assert len(np.intersect1d(a.row_ids, b.row_ids)) >= 0.9 * 1000
    sq8 = get_strategy("feature", flat_threshold=1000, ivf_storage="sq8").select(cand, hard, 1000)
    assert len(np.intersect1d(sq8.row_ids, b.row_ids)) >= 0.85 * 1000
