"""Scenario files: parsing with field-naming errors, and disjoint, deterministic builds."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mycroft.data import Digits, flip_labels, open_source, save_npz
from mycroft.data.fashion_mnist import ENV_VAR
from mycroft.data.partition import scarce_counts
from mycroft.errors import ConfigError
from mycroft.scenario import (
    GATES,
    build,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
)

BASE: dict[str, Any] = {
    "name": "t",
    "data": {"source": "digits"},
    "trainer": {"size": 200, "scarce_classes": ["3", "8"], "scarce_fraction": 0.1, "val_size": 100},
    "owners": [
        {"name": "a", "classes": ["3", "8"], "size": 80, "seed": 1},
        {"name": "b", "classes": [3, 8], "size": 60, "label_noise": 0.25, "seed": 2},
        {"name": "c", "classes": "all", "size": 100, "feature_noise": 1.0, "corrupt_share": 0.5},
        {"name": "d", "classes": ["0", "1"], "size": 50},
    ],
    "run": {"methods": ["random", "gradient"], "budgets": [5, 0.25]},
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """BASE with one field set (value=... deletes it); path like "owners.2.label_noise"."""
    raw = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = raw
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return raw


def test_builtin_scenarios_parse() -> None:
    names = builtin_scenarios()
    assert {"demo", "digits_four_owners", "fashion_five_owners"} <= set(names)
    for name in names:
        s = load_scenario(name)
        assert s.owners and s.run.methods
    fashion = load_scenario("fashion_five_owners")
    assert [o.name[0] for o in fashion.owners] == list("abcde")
    assert fashion.owners[1].label_noise == 0.3 and fashion.owners[2].feature_noise > 0


def test_demo_follows_fashion_availability(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path))  # empty: no Fashion-MNIST
    assert load_scenario("demo").name == "digits_subpop"


def test_build_is_disjoint_and_shaped() -> None:
    data = build(parse_scenario(BASE), seed=0)
    parts = [data.trainer_train, data.trainer_val, *data.owners.values()]
    ids = np.concatenate([p.row_ids for p in parts])
    assert len(ids) == len(np.unique(ids)) == 200 + 100 + 80 + 60 + 100 + 50
    assert not np.intersect1d(ids, data.test.row_ids).size
    train_ids = set(Digits().load("train").row_ids.tolist())
    assert set(ids.tolist()) <= train_ids  # owners keep the source's row ids
    counts = np.bincount(data.trainer_train.labels, minlength=10)
    assert counts.sum() == 200 and counts[3] < counts[0] // 5 and counts[8] < counts[0] // 5
    assert set(data.true_labels["a"].tolist()) <= {3, 8}
    assert set(data.true_labels["d"].tolist()) <= {0, 1}
    assert data.scarce_classes == data.dhard_classes == (3, 8)
    assert data.relevant("a").all() and not data.relevant("d").any()
    assert len(data.test) == 359 and data.test.name == "test"


def test_save_owners_round_trip(tmp_path: Path) -> None:
    data = build(parse_scenario(BASE), seed=2)
    paths = data.save_owners(tmp_path)
    for name, path in paths.items():
        back = open_source({"source": "npz", "path": str(path)}).load()
        assert np.array_equal(back.row_ids, data.owners[name].row_ids)
        assert np.array_equal(back.labels, data.owners[name].labels) and back.name == name


def test_build_is_deterministic_per_seed() -> None:
    scenario = parse_scenario(BASE)
    one, two, other = build(scenario, 7), build(scenario, 7), build(scenario, 8)
    for name in one.owners:
        a, b = one.owners[name], two.owners[name]
        assert np.array_equal(a.row_ids, b.row_ids) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.features, b.features)
        assert np.array_equal(one.noisy_label[name], two.noisy_label[name])
    assert np.array_equal(one.trainer_val.row_ids, two.trainer_val.row_ids)
    assert not np.array_equal(one.owners["a"].row_ids, other.owners["a"].row_ids)


def test_build_applies_noise_exactly() -> None:
    data = build(parse_scenario(BASE), seed=3)
    b = data.owners["b"]
    noisy = data.noisy_label["b"]
    assert noisy.sum() == round(0.25 * 60)
    assert (b.labels[noisy] != data.true_labels["b"][noisy]).all()
    assert (b.labels[~noisy] == data.true_labels["b"][~noisy]).all()
    assert not data.corrupted["b"].any() and not data.noisy_label["a"].any()
    c, corrupted = data.owners["c"], data.corrupted["c"]
    assert corrupted.sum() == 50
    clean = Digits().load("train")
    pos = np.searchsorted(clean.row_ids, c.row_ids)
    changed = (c.features != clean.features[pos]).reshape(len(c), -1).any(axis=1)
    assert np.array_equal(changed, corrupted)
    assert c.features.min() >= 0.0 and c.features.max() <= 1.0


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("owners.2.label_noise", 1.0, r"owners\[2\]\.label_noise: must be < 1, got 1\.0"),
        ("owners.0.size", ..., r"owners\[0\]\.size: required"),
        ("owners.1.size", 0, r"owners\[1\]\.size: must be >= 1"),
        ("owners.1.colour", "red", r"owners\[1\]\.colour: unknown field"),
        ("owners.3.name", "a", r"owners\[3\]\.name: 'a' already used by owners\[0\]"),
        ("owners.0.classes", [], r"owners\[0\]\.classes: must be a non-empty list"),
        ("owners.0.corrupt_share", "x", r"owners\[0\]\.corrupt_share: must be a number, got 'x'"),
        ("owners", [], r"owners: list at least one owner"),
        ("trainer.size", -3, r"trainer\.size: must be >= 1"),
        ("trainer.scarce_fraction", 2, r"trainer\.scarce_fraction: must be at most 1, got 2"),
        ("trainer.val_size", True, r"trainer\.val_size: must be an integer, got True"),
        ("run.budgets", [5, 0], r"run\.budgets\[1\]: must be a row count"),
        ("run.budgets", [1.5], r"run\.budgets\[0\]"),
        ("run.methods", [], r"run\.methods"),
        ("run.training", "online", r"run\.training: must be one of"),
        ("run.seeds", 0, r"run\.seeds: must be >= 1"),
        ("run.shared_fraction", 1.0, r"run\.shared_fraction"),
        ("run.model", {"experts": 2, "top_k": 3}, r"run\.model\.top_k: 3 exceeds experts"),
        ("run.model", {"gate": "magic"}, r"run\.model\.gate: must be one of"),
        ("run.epoch", 3, r"run\.epoch: unknown field"),
        ("data", {"source": "nope"}, r"data\.source: unknown data source"),
        ("data", {"source": "digits", "path": "x"}, r"data\.path: unknown field"),
        ("extra", 1, r"^extra: unknown field"),
    ],
)
def test_bad_fields_are_named(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_scenario(with_change(path, value))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("owners.1.classes", ["3", "eleven"], r"owners\[1\]\.classes\[1\]: 'eleven' is not a class"),
        ("trainer.scarce_classes", ["Shirt"], r"trainer\.scarce_classes\[0\]: 'Shirt'"),
        ("run.dhard_classes", ["x"], r"run\.dhard_classes\[0\]"),
        ("owners.0.size", 5000, r"owners\[0\] \(a\)\.size: needs 5000 rows of classes \['3', '8'\]"),
        ("trainer.val_size", 5000, r"trainer\.val_size: needs 5000 rows"),
    ],
)  # fmt: skip
def test_build_errors_name_the_field(path: str, value: Any, message: str) -> None:
    scenario = parse_scenario(with_change(path, value))
    with pytest.raises(ConfigError, match=message):
        build(scenario, 0)


def test_scenario_file_with_relative_npz_and_carved_test(tmp_path: Path) -> None:
    save_npz(Digits().load("train"), tmp_path / "digits.npz")
    text = """
name = "npz_case"
[data]
source = "npz"
path = "digits.npz"
[trainer]
size = 200
scarce_classes = [3]
scarce_fraction = 0.2
val_size = 100
test_size = 150
[[owners]]
name = "only"
size = 300
label_noise = 0.1
[run]
methods = ["random"]
budgets = [10]
"""
    (tmp_path / "s.toml").write_text(text)
    data = build(load_scenario(tmp_path / "s.toml"), seed=1)
    ids = np.concatenate([data.trainer_train.row_ids, data.trainer_val.row_ids])
    ids = np.concatenate([ids, data.test.row_ids, data.owners["only"].row_ids])
    assert len(ids) == len(np.unique(ids)) == 200 + 100 + 150 + 300
    assert data.noisy_label["only"].sum() == 30
    (tmp_path / "s.toml").write_text(text.replace("test_size = 150\n", ""))
    with pytest.raises(ConfigError, match=r"trainer\.test_size: required"):
        build(load_scenario(tmp_path / "s.toml"), seed=1)


def test_load_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no built-in scenario 'nope'"):
        load_scenario("nope")
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_scenario(tmp_path / "bad.toml")
    (tmp_path / "deep.toml").write_text("a = " + "[" * 100000 + "]" * 100000)
    with pytest.raises(ConfigError, match=r"deep\.toml: not valid TOML: nested too deeply"):
        load_scenario(tmp_path / "deep.toml")
    (tmp_path / "field.toml").write_text('[data]\nsource = "digits"\n')
    with pytest.raises(ConfigError, match=r"field\.toml: trainer: required"):
        load_scenario(tmp_path / "field.toml")


def test_budget_rows() -> None:
    run = parse_scenario(BASE).run
    assert [run.budget_rows(b, 120) for b in run.budgets] == [5, 30]


def test_gates_match_the_model_package() -> None:
    pytest.importorskip("torch")
    from moe.config import GATES as MODEL_GATES

    assert GATES == MODEL_GATES


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    share=st.floats(0.0, 0.99),
    classes=st.integers(2, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_flip_labels_exact_share(n: int, share: float, classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    out, mask = flip_labels(labels, share, classes, rng)
    assert mask.sum() == round(share * n)
    assert (out[mask] != labels[mask]).all() and (out[~mask] == labels[~mask]).all()
    assert out.min() >= 0 and out.max() < classes


@given(
    size=st.integers(1, 5000),
    k=st.integers(1, 12),
    frac=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_scarce_counts_sum_exactly(size: int, k: int, frac: float, data: st.DataObject) -> None:
    scarce = data.draw(st.lists(st.integers(0, k - 1), unique=True, max_size=k - 1))
    counts = scarce_counts(size, k, scarce, frac)
    assert counts.sum() == size and (counts >= 0).all()
