"""Sub-population scenarios: the [subpop] format, exact shares, transforms, clusters, truth."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mycroft.data import Digits, FashionMNIST
from mycroft.errors import ConfigError
from mycroft.scenario import ScenarioData, build, load_scenario, parse_scenario
from mycroft.subpop import SubpopSpec, Subpopulation, transform_images

TRANSFORM: dict[str, Any] = {
    "name": "t",
    "data": {"source": "digits"},
    "subpop": {"kind": "transform", "transform": "invert"},
    "trainer": {"size": 200, "val_size": 100, "val_subpop_share": 0.2, "test_subpop_share": 0.1},
    "owners": [
        {"name": "a", "size": 120, "subpop_share": 0.25, "seed": 1},
        {"name": "b", "size": 80, "subpop_share": 0.1, "label_noise": 0.25, "seed": 2},
        {"name": "c", "size": 60, "feature_noise": 1.0, "corrupt_share": 0.5},
        {"name": "d", "classes": ["0", "1"], "size": 40},
    ],
    "run": {"methods": ["random"], "budgets": [5]},
}
CLUSTER = copy.deepcopy(TRANSFORM) | {"subpop": {"kind": "cluster"}}
CLUSTER["trainer"] |= {"subpop_share": 0.1, "test_size": 50, "test_subpop_share": 0.2}


def changed(path: str, value: Any, base: dict[str, Any] = TRANSFORM) -> dict[str, Any]:
    """`base` with one field set (value=... deletes it); path like "owners.2.subpop_share"."""
    raw = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = raw
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return raw


def without_subpop(**trainer: Any) -> dict[str, Any]:
    """TRANSFORM without its [subpop] table and every share of it; `trainer` fields added."""
    raw = changed("subpop", ...)
    for name in ("val_subpop_share", "test_subpop_share"):
        del raw["trainer"][name]
    raw["trainer"] |= trainer
    for owner in raw["owners"]:
        owner.pop("subpop_share", None)
    return raw


def parts(data: ScenarioData) -> dict[str, tuple[Any, np.ndarray]]:
    """Every drawn part with its sub-population mask."""
    out = {
        "train": (data.trainer_train, data.subpop_train),
        "val": (data.trainer_val, data.subpop_val),
        "test": (data.test, data.subpop_test),
    }
    return out | {n: (o, data.subpop[n]) for n, o in data.owners.items()}


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("subpop.kind", "blur", r"^subpop\.kind: must be one of 'transform', 'cluster'"),
        ("subpop.transform", ..., r"^subpop\.transform: required with kind = \"transform\""),
        ("subpop.transform", "blur", r"^subpop\.transform: must be one of"),
        ("subpop.clusters", 4, r"^subpop\.clusters: only with kind = \"cluster\""),
        ("subpop.classes", [], r"^subpop\.classes: must be a non-empty list"),
        ("subpop.colour", 1, r"^subpop\.colour: unknown field"),
        ("owners.0.subpop_share", 1.5, r"^owners\[0\]\.subpop_share: must be at most 1, got 1\.5"),
        ("trainer.val_subpop_share", -0.1, r"^trainer\.val_subpop_share: must be >= 0"),
        ("trainer.subpop_share", "0.1", r"^trainer\.subpop_share: must be a number"),
        ("subpop", ..., r"^trainer\.val_subpop_share: 0\.2 needs a \[subpop\] table"),
    ],
)  # fmt: skip
def test_format_errors_name_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_scenario(changed(path, value))


def test_shares_without_subpop_table_are_named() -> None:
    raw = without_subpop(scarce_classes=[3])
    parse_scenario(raw)  # no shares: fine
    raw["owners"][1]["subpop_share"] = 0.1
    with pytest.raises(ConfigError, match=r"^owners\[1\]\.subpop_share: 0\.1 needs a \[subpop\]"):
        parse_scenario(raw)


def test_cluster_kind_refuses_a_transform() -> None:
    cluster = changed("subpop.transform", "invert", CLUSTER)
    with pytest.raises(ConfigError, match=r"^subpop\.transform: only with kind = \"transform\""):
        parse_scenario(cluster)


def test_empty_scarce_classes_needs_subpop_or_dhard_classes() -> None:
    data = build(parse_scenario(changed("trainer.scarce_classes", [])), seed=0)
    assert data.dhard_classes == tuple(range(10)) and data.scarce_classes == ()
    counts = np.bincount(data.trainer_train.labels, minlength=10)
    assert counts.tolist() == [20] * 10  # a natural (even) class mix
    with pytest.raises(ConfigError, match=r"^run\.dhard_classes: required when"):
        parse_scenario(without_subpop())
    dhard = build(parse_scenario(changed("run.dhard_classes", ["3"])), seed=0)
    assert dhard.dhard_classes == (3,)
    a = dhard.owners["a"]
    assert np.array_equal(dhard.needles("a"), dhard.subpop["a"] & (a.labels == 3))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("subpop.classes", ["3", "x"], r"^subpop\.classes\[1\]: 'x' is not a class"),
        # Owner d holds digits 0 and 1 only; these have no sub-population.
        ("subpop.classes", [str(d) for d in range(2, 10)], r"^owners\[3\] \(d\)\.subpop_share: "
         r"needs 20 rows of the sub-population's classes to transform, the part has 0"),
    ],
)  # fmt: skip
def test_build_errors_name_the_field(path: str, value: Any, message: str) -> None:
    raw = changed(path, value)
    raw["owners"][3]["subpop_share"] = 0.5
    with pytest.raises(ConfigError, match=message):
        build(parse_scenario(raw), 0)


def test_cluster_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^owners\[0\] \(a\)\.subpop_share: needs 108 sub-pop"):
        build(parse_scenario(changed("owners.0.subpop_share", 0.9, CLUSTER)), 0)
    raw = changed("trainer.val_subpop_share", 1.0, CLUSTER)
    raw["trainer"]["val_size"] = 400  # more rows than all chosen clusters hold
    with pytest.raises(ConfigError, match=r"^trainer\.val_subpop_share: needs 400 sub-populati"):
        build(parse_scenario(raw), 0)
    with pytest.raises(ConfigError, match=r"^trainer\.test_subpop_share: needs trainer\.test_s"):
        build(parse_scenario(changed("trainer.test_size", ..., CLUSTER)), 0)
    with pytest.raises(ConfigError, match=r"^subpop\.clusters: class '0' of digits has 1"):
        build(parse_scenario(changed("subpop.clusters", 100, CLUSTER)), 0)


def test_transform_needs_images(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(40)))
    raw = changed("data", {"source": "csv", "path": str(path), "label_column": "y"})
    with pytest.raises(ConfigError, match=r"^subpop\.transform: needs image rows \(C, H, W\), "):
        build(parse_scenario(raw), 0)


@pytest.mark.parametrize("base", [TRANSFORM, CLUSTER], ids=["transform", "cluster"])
def test_shares_are_exact_and_parts_disjoint(base: dict[str, Any]) -> None:
    scenario = parse_scenario(base)
    spec = {
        "train": (200, base["trainer"].get("subpop_share", 0.0)),
        "val": (100, 0.2),
        "test": (base["trainer"].get("test_size", 359), base["trainer"]["test_subpop_share"]),
        **{o["name"]: (o["size"], o.get("subpop_share", 0.0)) for o in base["owners"]},
    }
    for seed in range(3):
        data = build(scenario, seed)
        for name, (part, mask) in parts(data).items():
            size, share = spec[name]
            assert len(part) == len(mask) == size, name
            assert mask.sum() == round(share * size), name
        drawn = [p.row_ids for n, (p, _) in parts(data).items() if n != "test"]
        ids = np.concatenate(drawn)
        assert len(ids) == len(np.unique(ids))
        assert not np.isin(data.test.row_ids, ids).any()


def test_cluster_masks_are_the_chosen_clusters() -> None:
    scenario = parse_scenario(CLUSTER)
    data = build(scenario, 0)
    train = Digits().load("train")
    sub = Subpopulation.prepare(scenario.subpop, train, "digits")
    member = dict(zip(train.row_ids.tolist(), sub.train_member.tolist(), strict=True))
    for name in ("train", "val", "a", "b", "c", "d"):
        part, mask = parts(data)[name]
        assert mask.tolist() == [member[i] for i in part.row_ids.tolist()], name
        clean = train.features[np.searchsorted(train.row_ids, part.row_ids)]
        untouched = ~data.corrupted[name] if name in data.corrupted else np.ones_like(mask)
        assert np.array_equal(part.features[untouched], clean[untouched])  # clusters: no change
    test = Digits().load("test")
    in_test = sub.member_of(test)[np.searchsorted(test.row_ids, data.test.row_ids)]
    assert np.array_equal(in_test, data.subpop_test) and 0 < in_test.mean() < 1
    # Every class has its cluster: about a tenth of its rows, never a handful of outliers.
    sizes = np.bincount(train.labels[sub.train_member], minlength=10)
    per_class = np.bincount(train.labels, minlength=10)
    assert (sizes >= per_class / 16).all() and (sizes < per_class / 2).all()


def test_transform_changes_exactly_the_marked_rows() -> None:
    for transform in ("invert", "rotate", "texture"):
        data = build(parse_scenario(changed("subpop.transform", transform)), 4)
        train = Digits().load("train")
        for name in ("val", "a", "b", "d"):
            part, mask = parts(data)[name]
            clean = train.features[np.searchsorted(train.row_ids, part.row_ids)]
            diff = (part.features != clean).reshape(len(part), -1).any(axis=1)
            assert np.array_equal(diff, mask), (transform, name)
            assert part.features.min() >= 0.0 and part.features.max() <= 1.0
        part, mask = parts(data)["a"]
        clean = train.features[np.searchsorted(train.row_ids, part.row_ids)]
        expected = transform_images(clean[mask], transform, (0.0, 1.0))
        assert np.array_equal(part.features[mask], expected)


def test_transforms_are_what_they_say() -> None:
    x = Digits().load("test").features[:20]
    inverted = transform_images(x, "invert", (0.0, 1.0))
    assert np.allclose(inverted, 1.0 - x) and np.array_equal(
        transform_images(inverted, "invert", (0.0, 1.0)), x
    )
    shifted = transform_images(x * 2 - 1, "invert", (-1.0, 1.0))
    assert np.allclose(shifted, 1 - 2 * x)  # lo + hi - x for another value range
    turned = transform_images(x, "rotate", (0.0, 1.0))
    assert np.array_equal(turned[:, 0, :, 0], x[:, 0, 0, ::-1])  # first column = first row
    for _ in range(3):
        turned = transform_images(turned, "rotate", (0.0, 1.0))
    assert np.array_equal(turned, x)
    one, two = (transform_images(x, "texture", (0.0, 1.0)) for _ in range(2))
    assert np.array_equal(one, two) and one.min() >= 0 and one.max() <= 1
    pattern = one - x  # +-0.25 per pixel, less where clipping cut it
    assert np.abs(pattern).max() == pytest.approx(0.25) and (pattern != 0).mean() > 0.5


def test_transform_draws_the_rows_of_the_same_scenario_without_subpop() -> None:
    raw = changed("owners.0.subpop_share", 0.3)
    plain = without_subpop()
    plain["run"]["dhard_classes"] = list(range(10))
    with_subpop, without = build(parse_scenario(raw), 2), build(parse_scenario(plain), 2)
    for name, (part, _) in parts(with_subpop).items():
        other = parts(without)[name][0]
        assert np.array_equal(part.row_ids, other.row_ids), name
        assert np.array_equal(part.labels, other.labels), name
    assert not without.subpop["a"].any() and not without.subpop_val.any()


@pytest.mark.parametrize("base", [TRANSFORM, CLUSTER], ids=["transform", "cluster"])
def test_build_is_deterministic_per_seed(base: dict[str, Any]) -> None:
    scenario = parse_scenario(base)
    one, two, other = build(scenario, 5), build(scenario, 5), build(scenario, 6)
    for name, (part, mask) in parts(one).items():
        same, same_mask = parts(two)[name]
        assert np.array_equal(part.row_ids, same.row_ids) and np.array_equal(mask, same_mask)
        assert np.array_equal(part.features, same.features), name
    assert not np.array_equal(one.owners["a"].row_ids, other.owners["a"].row_ids)


def test_cluster_kind_on_a_table(tmp_path: Path) -> None:
    # Two classes, each a big blob and a small far one: the small blob is the sub-population.
    rng = np.random.default_rng(0)
    rows, small = [], []
    for label, centre in ((0, 0.0), (1, 40.0)):
        for n, offset in ((260, 0.0), (40, 20.0)):
            points = rng.normal(centre + offset, 1.0, size=(n, 2))
            rows += [f"{x:.5f},{y:.5f},{label}" for x, y in points]
            small += [offset > 0] * n
    path = tmp_path / "blobs.csv"
    path.write_text("x,y,label\n" + "\n".join(rows) + "\n")
    raw = changed("data", {"source": "csv", "path": str(path), "label_column": "label"}, CLUSTER)
    raw["subpop"]["clusters"] = 4
    raw["trainer"] = {"size": 200, "val_size": 100, "val_subpop_share": 0.2, "test_size": 60,
                      "test_subpop_share": 0.25}  # fmt: skip
    raw["owners"] = [
        {"name": "a", "size": 100, "subpop_share": 0.1},
        {"name": "b", "size": 40, "classes": ["1"]},
    ]
    data = build(parse_scenario(raw), 0)
    truly_small = np.array(small)
    for name, (part, mask) in parts(data).items():
        assert np.array_equal(mask, truly_small[part.row_ids]), name
    assert [data.subpop_val.sum(), data.subpop_test.sum(), data.subpop["a"].sum()] == [20, 15, 10]
    assert not data.subpop_train.any() and not data.subpop["b"].any()


def test_truth_and_truth_shares() -> None:
    data = build(parse_scenario(TRANSFORM), 1)
    ids = data.owners["b"].row_ids
    truth = data.truth("b")
    assert set(truth) == {"needle", "wrong_label", "noisy_features"}
    needles, wrong = truth["needle"], truth["wrong_label"]
    assert np.array_equal(needles, data.subpop["b"]) and wrong.sum() == 20
    # A selection of 4 needles (one wrong-labelled if possible) and 4 other rows, shuffled.
    pick = np.concatenate([np.flatnonzero(needles)[:4], np.flatnonzero(~needles)[:4]])
    shares = data.truth_shares("b", ids[pick[::-1]])
    assert shares["needle"] == 0.5
    assert shares["wrong_label"] == pytest.approx(wrong[pick].mean())
    assert shares["noisy_features"] == 0.0  # owner c has noise, b none
    assert data.truth_shares("b", ids[:0]) == dict.fromkeys(shares)
    with pytest.raises(ValueError, match=r"not held by 'b'"):
        data.truth_shares("b", data.owners["a"].row_ids[:3])
    plain = without_subpop(scarce_classes=[3])
    del plain["owners"][2]["feature_noise"]
    bare = build(parse_scenario(plain), 1)
    some = bare.owners["b"].row_ids[:10]
    assert bare.truth_shares("b", some) == {
        "needle": None,
        "wrong_label": pytest.approx(bare.noisy_label["b"][:10].mean()),
        "noisy_features": None,
    }
    assert not bare.needles("b").any() and not bare.subpop_test.any()


def test_builtin_subpop_scenarios() -> None:
    for name in ("digits_subpop", "fashion_subpop", "fashion_cluster"):
        scenario = load_scenario(name)
        assert isinstance(scenario.subpop, SubpopSpec) and not scenario.trainer.scarce_classes
        assert [o.name[0] for o in scenario.owners] == list("abcde")
    expected = {"a_needles": 20, "b_needles_noisy_labels": 15, "c_clean": 0,
                "d_irrelevant": 0, "e_small_needles": 6}  # fmt: skip
    for seed in range(5):
        data = build(load_scenario("digits_subpop"), seed)
        assert {n: int(data.needles(n).sum()) for n in data.owners} == expected
        assert data.subpop_val.sum() == 50 and data.subpop_test.sum() == 72
        assert not data.subpop_train.any()


@pytest.mark.skipif(not FashionMNIST.available(), reason="Fashion-MNIST files not present")
def test_fashion_subpop_builds() -> None:
    data = build(load_scenario("fashion_subpop"), 0)
    assert {n: int(data.needles(n).sum()) for n in data.owners} == {
        "a_needles": 100,
        "b_needles_noisy_labels": 75,
        "c_clean": 0,
        "d_irrelevant": 0,
        "e_small_needles": 12,
    }
    assert data.subpop_val.sum() == data.subpop_test.sum() == 400
