"""Budget contract and input validation, for every registered strategy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import selection
from selection import Candidates, HardSet, Head, allocate, available, get_strategy

C, D, F = 4, 8, 5


@pytest.fixture(scope="module")
def data() -> tuple[Candidates, HardSet, Head]:
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 3, n)  # the owner lacks class 3
    cand = Candidates(
        row_ids=rng.permutation(10_000)[:n].astype(np.int64),
        labels=labels.astype(np.int64),
        embeddings=rng.normal(size=(n, D)).astype(np.float32),
        features=rng.normal(size=(n, F)).astype(np.float32),
    )
    hl = np.array([0] * 8 + [1] * 6 + [2] * 4 + [3] * 2, dtype=np.int64)
    hard = HardSet(
        labels=hl,
        embeddings=rng.normal(size=(len(hl), D)).astype(np.float32),
        features=rng.normal(size=(len(hl), F)).astype(np.float32),
    )
    head = Head(rng.normal(size=(C, D)).astype(np.float32), rng.normal(size=C).astype(np.float32))
    return cand, hard, head


BUDGETED = [
    n for n in available() if not getattr(selection.base._REGISTRY[n], "ignores_budget", False)
]


def test_builtins_registered() -> None:
    assert {"random", "feature", "gradient", "funcfeat", "binning", "full"} <= set(available())
    with pytest.raises(KeyError, match="known"):
        get_strategy("no-such-method")


@pytest.mark.parametrize("name", BUDGETED)
@pytest.mark.parametrize("budget", [1, 7, 50, 299, 10_000])
def test_budget_contract(data, name: str, budget: int) -> None:
    cand, hard, head = data
    res = get_strategy(name).select(cand, hard, budget, head=head, seed=1)
    ids = res.row_ids
    assert len(ids) <= budget
    assert len(np.unique(ids)) == len(ids)
    assert len(res.scores) == len(ids)
    assert np.isin(ids, cand.row_ids).all()
    by_id = dict(zip(cand.row_ids.tolist(), cand.labels.tolist(), strict=True))
    labels = np.array([by_id[i] for i in ids.tolist()])
    assert np.isin(labels, hard.labels).all()
    assert res.missing_classes == [3]
    n_avail = len(cand)  # every owner row has a D_hard label (0..2)
    if budget <= n_avail:
        assert len(ids) == budget
        assert res.shortfall_reason is None
    else:
        assert len(ids) == n_avail
        assert res.shortfall_reason and "only" in res.shortfall_reason


@pytest.mark.parametrize("name", available())
@pytest.mark.parametrize("budget", [0, -3])
def test_nonpositive_budget_rejected(data, name: str, budget: int) -> None:
    cand, hard, head = data
    with pytest.raises(ValueError, match="budget"):
        get_strategy(name).select(cand, hard, budget, head=head)


def test_owner_without_any_dhard_class(data) -> None:
    cand, hard, head = data
    only3 = HardSet(hard.labels[-2:], hard.embeddings[-2:], None, hard.features[-2:])
    for name in BUDGETED:
        res = get_strategy(name).select(cand, only3, 5, head=head)
        assert len(res.row_ids) == 0
        assert res.missing_classes == [3]
        assert res.shortfall_reason


def test_full_returns_every_row(data) -> None:
    cand, hard, head = data
    res = get_strategy("full").select(cand, hard, 3, head=head)
    assert sorted(res.row_ids.tolist()) == sorted(cand.row_ids.tolist())


@pytest.mark.parametrize("name", ["gradient", "funcfeat"])
def test_head_shape_mismatch(data, name: str) -> None:
    cand, hard, head = data
    bad = Head(np.zeros((C, D + 1), np.float32), np.zeros(C, np.float32))
    with pytest.raises(ValueError, match="dim"):
        get_strategy(name).select(cand, hard, 5, head=bad)
    with pytest.raises(ValueError, match="head"):
        get_strategy(name).select(cand, hard, 5, head=None)


@pytest.mark.parametrize("name", ["feature", "gradient", "funcfeat"])
def test_nan_embeddings_rejected(data, name: str) -> None:
    cand, hard, head = data
    emb = cand.embeddings.copy()
    emb[3, 2] = np.nan
    bad = Candidates(cand.row_ids, cand.labels, emb, cand.features)
    with pytest.raises(ValueError, match="NaN"):
        get_strategy(name).select(bad, hard, 5, head=head)


def test_shape_mismatch_and_missing_fields(data) -> None:
    cand, hard, head = data
    short = Candidates(cand.row_ids, cand.labels, cand.embeddings[:-1], cand.features)
    with pytest.raises(ValueError, match="rows"):
        get_strategy("feature").select(short, hard, 5)
    feat_nan = cand.features.copy()
    feat_nan[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        get_strategy("binning").select(
            Candidates(cand.row_ids, cand.labels, cand.embeddings, feat_nan), hard, 5
        )
    with pytest.raises(ValueError, match="needs"):
        get_strategy("binning").select(Candidates(cand.row_ids, cand.labels), hard, 5)
    with pytest.raises(ValueError, match="distinct"):
        ids = cand.row_ids.copy()
        ids[1] = ids[0]
        get_strategy("random").select(Candidates(ids, cand.labels), hard, 5)


def test_allocate_proportional_with_redistribution() -> None:
    assert allocate({0: 6, 1: 3, 2: 1}, {0: 100, 1: 100, 2: 100}, 10) == {0: 6, 1: 3, 2: 1}
    # class 0 can give only 2 rows: its share goes to the others, in proportion
    got = allocate({0: 6, 1: 3, 2: 1}, {0: 2, 1: 100, 2: 100}, 10)
    assert got[0] == 2 and sum(got.values()) == 10 and got[1] > got[2]
    assert allocate({0: 1, 1: 1}, {0: 3, 1: 2}, 10) == {0: 3, 1: 2}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 50), st.integers(0, 40)), min_size=1, max_size=6),
    st.integers(1, 200),
)
def test_allocate_properties(spec: list[tuple[int, int]], budget: int) -> None:
    weights = {i: w for i, (w, _) in enumerate(spec)}
    cap = {i: c for i, (_, c) in enumerate(spec)}
    got = allocate(weights, cap, budget)
    assert sum(got.values()) == min(budget, sum(cap.values()))
    assert all(0 <= got[i] <= cap[i] for i in got)


# validate's fast paths (ascending ids skip the sort; NaN/inf checked block by block) must
# refuse exactly what the plain checks refused.
def _plain_candidates(ids: np.ndarray, emb: np.ndarray) -> Candidates:
    return Candidates(row_ids=ids, labels=np.zeros(len(ids), np.int64), embeddings=emb)


@pytest.mark.parametrize(
    "ids",
    [
        np.array([0, 1, 2, 2, 3]),  # ascending but for one repeat
        np.array([5, 3, 9, 3]),  # unsorted with a repeat
        np.array([7, 7]),
        np.array([1, 2, 3, 4, 1]),  # ascending run, then the first id again
    ],
)
def test_repeated_row_ids_refused(ids: np.ndarray) -> None:
    from selection._contract import validate

    emb = np.zeros((len(ids), 2), np.float32)
    hard = HardSet(labels=np.zeros(1, np.int64), embeddings=np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="distinct"):
        validate(_plain_candidates(ids.astype(np.int64), emb), hard, 1)


@pytest.mark.parametrize("ids", [np.arange(5), np.array([9, 2, 7, 0]), np.array([3])])
def test_distinct_row_ids_accepted(ids: np.ndarray) -> None:
    from selection._contract import validate

    emb = np.zeros((len(ids), 2), np.float32)
    hard = HardSet(labels=np.zeros(1, np.int64), embeddings=np.zeros((1, 2), np.float32))
    assert validate(_plain_candidates(ids.astype(np.int64), emb), hard, 3) == 3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 5])
def test_non_finite_value_refused_in_any_block(bad: float, where: int) -> None:
    """One bad value anywhere (first element, block edges, the last partial block)."""
    from selection._contract import validate

    n, d = 3 * (1 << 20) // 8 + 1, 8  # just over three 2**20-element blocks
    emb = np.zeros((n, d), np.float32)
    emb.reshape(-1)[where] = bad
    hard = HardSet(labels=np.zeros(1, np.int64), embeddings=np.zeros((1, d), np.float32))
    with pytest.raises(ValueError, match="candidates.embeddings contains NaN"):
        validate(_plain_candidates(np.arange(n, dtype=np.int64), emb), hard, 1)
    emb.reshape(-1)[where] = 0.0
    assert validate(_plain_candidates(np.arange(n, dtype=np.int64), emb), hard, 1) == 1


def test_non_finite_features_refused_in_non_contiguous_arrays() -> None:
    from selection._contract import validate

    feats = np.zeros((6, 8), np.float32)[:, ::2]  # a strided view
    feats[4, 3] = np.nan
    cand = Candidates(
        row_ids=np.arange(6, dtype=np.int64), labels=np.zeros(6, np.int64), features=feats
    )
    hard = HardSet(labels=np.zeros(1, np.int64), features=np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="candidates.features contains NaN"):
        validate(cand, hard, 1, needs_features=True)
