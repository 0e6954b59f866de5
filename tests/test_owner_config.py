"""The owner's TOML config: the example loads, every mistake names its field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers_grpc import digits_data, owner_config

from mycroft.errors import ConfigError
from owner_node.config import load_config, parse_config
from owner_node.engine import Engine

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "owner.toml"
TOKEN = "secret-token-0123456789"


def _example(tmp_path, monkeypatch):
    path = tmp_path / "owner.toml"
    shutil.copy(EXAMPLE, path)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "trainer-2.token").write_text(TOKEN + "2\n")
    monkeypatch.setenv("MYCROFT_TRAINER1_TOKEN", TOKEN + "1")
    return path


def test_example_config_loads(tmp_path, monkeypatch):
    config = load_config(_example(tmp_path, monkeypatch))
    assert config.owner.name == "owner-a"
    assert config.owner.state_dir == tmp_path / "owner-a-state"
    assert config.data == {"source": "digits"} and config.split == "train"
    assert [(t.id, t.token, t.cap) for t in config.trainers] == [
        ("trainer-1", TOKEN + "1", 200),
        ("trainer-2", TOKEN + "2", 256),
    ]
    assert config.tls is None and not config.selection.allow_full
    assert config.limits.max_hard_rows == 4096


def test_default_methods_exclude_full_unless_allowed(tmp_path):
    data = digits_data()
    engine = Engine(owner_config(tmp_path, selection={"allow_full": False}), data)
    assert "full" not in engine.methods and {"random", "feature", "gradient"} <= set(engine.methods)
    engine.close()
    engine = Engine(owner_config(tmp_path, selection={"hide_class_counts": True}), data)
    assert "full" in engine.methods and engine.info().class_counts == ()
    engine.close()
    with pytest.raises(ConfigError, match=r"selection\.methods\[1\]"):
        Engine(owner_config(tmp_path, selection={"methods": ["random", "nope"]}), data)


def _raw(**overrides):
    raw = {
        "owner": {"name": "o"},
        "data": {"source": "digits"},
        "trainers": [{"id": "a", "token": TOKEN}, {"id": "b", "token": TOKEN + "b"}],
    }
    raw.update(overrides)
    return raw


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"owner": {}}, "owner.name"),
        ({"owner": {"name": "o", "max_workers": 0}}, "owner.max_workers"),
        ({"owner": {"name": "o", "colour": 1}}, "owner.colour"),
        ({"data": {}}, "data.source"),
        ({"trainers": [{"id": "a"}]}, "trainers[0].token"),
        ({"trainers": [{"id": "a", "token": "short"}]}, "trainers[0].token"),
        (
            {"trainers": [{"id": "a", "token": TOKEN}, {"id": "a", "token": TOKEN + "x"}]},
            "trainers[1].id",
        ),
        (
            {"trainers": [{"id": "a", "token": TOKEN}, {"id": "b", "token": TOKEN}]},
            "trainers[1].token",
        ),
        ({"trainers": [{"id": "a", "token": TOKEN, "token_env": "X"}]}, "trainers[0].token_env"),
        (
            {"trainers": [{"id": "a", "token_env": "MYCROFT_SURELY_UNSET_VAR"}]},
            "trainers[0].token_env",
        ),
        ({"trainers": [{"id": "a", "token_file": "missing.token"}]}, "trainers[0].token_file"),
        ({"trainers": [{"id": "a", "token": TOKEN, "cap": -1}]}, "trainers[0].cap"),
        ({"budget": {"default_cap": "many"}}, "budget.default_cap"),
        ({"limits": {"max_budget": 0}}, "limits.max_budget"),
        (
            {"budget": {"max_rows_per_request": 50}, "limits": {"max_budget": 10}},
            "budget.max_rows_per_request",
        ),
        ({"selection": {"methods": ["full"]}}, "selection.methods[0]"),
        ({"selection": {"hide_class_counts": "yes"}}, "selection.hide_class_counts"),
        ({"tls": {"cert": "missing.crt", "key": "missing.key"}}, "tls.cert"),
        ({"surprise": {}}, "surprise"),
    ],
)
def test_errors_name_the_field(tmp_path, overrides, field):
    with pytest.raises(ConfigError) as e:
        parse_config(_raw(**overrides), base_dir=tmp_path)
    assert str(e.value).startswith(field), str(e.value)


def test_mutual_tls_makes_tokens_optional(tmp_path):
    for name in ("c.crt", "c.key", "ca.crt"):
        (tmp_path / name).write_text("x")
    config = parse_config(
        _raw(
            tls={"cert": "c.crt", "key": "c.key", "client_ca": "ca.crt"},
            trainers=[{"id": "a"}, {"id": "b", "cert_cn": "b.example"}],
        ),
        base_dir=tmp_path,
    )
    assert config.tls.mutual
    assert [(t.token, t.cert_cn) for t in config.trainers] == [(None, "a"), (None, "b.example")]


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[owner\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
