"""Trainer config: a valid file parses; each bad field raises ConfigError naming that field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mycroft.errors import ConfigError
from trainer_node.config import load_config, parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "trainer.toml"


def base() -> dict:
    return {
        "trainer": {"id": "t1", "run_dir": "runs/t1"},
        "data": {"source": "digits", "val_fraction": 0.25},
        "model": {"gate": "topk", "num_experts": 4, "top_k": 2, "embed_dim": 16, "stem_dim": 32},
        "training": {"epochs": 2, "seeds": [0, 3], "mode": "both", "num_threads": 1},
        "dhard": {"classes": ["3", "8"], "shared_fraction": 0.5},
        "selection": {"methods": ["feature", "random", "full"], "budgets": [8, 16]},
        "owners": [
            {"name": "a", "address": "127.0.0.1:5001", "token": "tok-a"},
            {"name": "b", "address": "127.0.0.1:5002", "token_env": "TRAINER_TEST_TOKEN"},
        ],
        "client": {"retries": 2, "backoff": 0.1, "concurrency": 2},
    }


@pytest.fixture(autouse=True)
def _token(monkeypatch):
    monkeypatch.setenv("TRAINER_TEST_TOKEN", "tok-b")


def test_valid_config(tmp_path):
    cfg = parse_config(base(), tmp_path)
    assert cfg.id == "t1"
    assert cfg.run_dir == (tmp_path / "runs" / "t1").resolve()
    assert cfg.data.source == {"source": "digits"}
    assert cfg.model.extra == {"stem_dim": 32}
    assert cfg.training.seeds == (0, 3)
    assert cfg.training.modes == ("finetune", "retrain")
    assert cfg.training.extra == {"num_threads": 1}
    assert cfg.selection.primary == ("feature", 8)  # first non-full method, first budget
    assert cfg.owners[1].token == "tok-b"
    assert "tok-a" not in repr(cfg.owners[0])  # tokens never reach logs via repr


def test_seed_count_and_rank_by(tmp_path):
    raw = base()
    raw["training"]["seeds"] = 3
    raw["selection"]["rank_by"] = {"method": "random", "budget": 16}
    cfg = parse_config(raw, tmp_path)
    assert cfg.training.seeds == (0, 1, 2)
    assert cfg.selection.primary == ("random", 16)


def test_example_config_loads(monkeypatch):
    monkeypatch.setenv("MYCROFT_TOKEN_OWNER_A", "x" * 20)
    cfg = load_config(EXAMPLE)
    assert [o.name for o in cfg.owners] == ["owner-a"] and cfg.id == "trainer-1"
    assert cfg.selection.mode == "embedded"


def _set(raw: dict, path: str, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    last = keys[-1]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()

BAD = [
    ("trainer.id", "", "trainer.id"),
    ("trainer.colour", "blue", "trainer.colour"),
    ("data.val_fraction", 2.0, "data.val_fraction"),
    ("data.source", "no-such-source", "data.source"),
    ("data.train", "missing.npz", "data.source"),  # both a source and NPZ paths
    ("model.top_k", 8, "model.top_k"),
    ("model.num_experts", "four", "model.num_experts"),
    ("model.wings", 2, "model.wings"),
    ("training.mode", "sometimes", "training.mode"),
    ("training.seeds", [1, 1], "training.seeds"),
    ("training.epochs", 0, "training.epochs"),
    ("training.replay_fraction", 1.0, "training.replay_fraction"),
    ("training.not_a_field", 1, "training.not_a_field"),
    ("dhard.shared_fraction", 1.0, "dhard.shared_fraction"),
    ("dhard.classes", [], "dhard.classes"),
    ("selection.mode", "plain", "selection.mode"),
    ("selection.budgets", [0], "selection.budgets"),
    ("selection.methods", ["full"], "selection.methods"),
    ("selection.rank_by", {"method": "gradient", "budget": 8}, "selection.rank_by.method"),
    ("selection.rank_by", {"method": "feature", "budget": 99}, "selection.rank_by.budget"),
    ("selection.params", {"gradient": {"lambda": 0.5}}, "selection.params.gradient"),
    ("owners.0.address", "nohostport", "owners[0].address"),
    ("owners.1.name", "a", "owners[1].name"),
    ("owners.1.token_env", "TRAINER_TEST_UNSET_VAR", "owners[1].token_env"),
    ("owners.0.token_env", "TRAINER_TEST_TOKEN", "owners[0].token"),  # both token and env
    ("owners.0.deadline_seconds", -1, "owners[0].deadline_seconds"),
    ("owners.0.tls", {"ca_cert": "nope.pem"}, "owners[0].tls.ca_cert"),
    ("owners.0.tls", {"client_cert": "c.pem"}, "owners[0].tls.client_key"),
    ("client.retries", -1, "client.retries"),
    ("client.concurrency", True, "client.concurrency"),
    ("owners", [], "owners"),
]


@pytest.mark.parametrize(("path", "value", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_field_names_it(tmp_path, path, value, field):
    with pytest.raises(ConfigError) as info:
        parse_config(_set(base(), path, value), tmp_path)
    assert str(info.value).startswith(field), str(info.value)


def test_missing_sections(tmp_path):
    with pytest.raises(ConfigError, match=r"^data"):
        parse_config(_set(base(), "data", _DELETE), tmp_path)
    with pytest.raises(ConfigError, match=r"^colour: unknown field"):
        parse_config({**base(), "colour": {}}, tmp_path)


def test_npz_paths_resolved_against_config_dir(tmp_path):
    (tmp_path / "tr.npz").write_bytes(b"x")
    raw = base()
    raw["data"] = {"train": "tr.npz", "test": "te.npz"}
    with pytest.raises(ConfigError, match=r"^data.test: file not found"):
        parse_config(raw, tmp_path)
    (tmp_path / "te.npz").write_bytes(b"x")
    cfg = parse_config(raw, tmp_path)
    assert cfg.data.train == tmp_path / "tr.npz" and cfg.data.source is None


def test_score_epoch_must_fall_within_training(tmp_path):
    from trainer_node.config import parse_config

    raw = {
        "trainer": {"id": "t"},
        "data": {"source": "digits"},
        "training": {"epochs": 3},
        "selection": {"score_epoch": 4},
        "owners": [{"name": "a", "address": "127.0.0.1:1", "token": "x" * 20}],
    }
    with pytest.raises(ConfigError, match="selection.score_epoch"):
        parse_config(raw, tmp_path)
    raw["selection"]["score_epoch"] = 2
    assert parse_config(raw, tmp_path).selection.score_epoch == 2


NON_FINITE = [
    ("data.val_fraction", float("nan")),
    ("training.lr", float("nan")),
    ("owners.0.deadline_seconds", float("inf")),
    ("client.backoff", float("nan")),
    ("client.backoff_max", 10**400),  # too large even to become a float
]


@pytest.mark.parametrize(("path", "value"), NON_FINITE, ids=[b[0] for b in NON_FINITE])
def test_numbers_must_be_finite(tmp_path, path, value):
    with pytest.raises(ConfigError) as info:
        parse_config(_set(base(), path, value), tmp_path)
    field = path.replace("owners.0", "owners[0]")
    assert str(info.value).startswith(f"{field}: "), str(info.value)


@pytest.mark.parametrize("token", ["tok\x07en", "tok en", "tokén"], ids=["bell", "space", "é"])
@pytest.mark.parametrize("key", ["token", "token_env"])
def test_owner_tokens_must_be_printable_ascii(tmp_path, monkeypatch, token, key):
    monkeypatch.setenv("TRAINER_TEST_TOKEN", token)
    raw = _set(base(), "owners.0.token", token if key == "token" else _DELETE)
    if key == "token_env":
        raw["owners"][0]["token_env"] = "TRAINER_TEST_TOKEN"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path)
    assert str(info.value).startswith(f"owners[0].{key}: "), str(info.value)
    assert token not in str(info.value)
