"""The owner's TOML config: the example loads, every mistake names its field."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
    (tmp_path / ".secrets").mkdir()
    (tmp_path / ".secrets" / "owner-a_trainer-1.token").write_text(TOKEN + "\n")
    return path


def test_example_config_loads(tmp_path, monkeypatch):
    config = load_config(_example(tmp_path, monkeypatch))
    assert config.owner.name == "owner-a"
    assert config.owner.state_dir == tmp_path / "owner-a-state"
    assert config.data == {"source": "digits"} and config.split == "train"
    assert [(t.id, t.token, t.cap) for t in config.trainers] == [("trainer-1", TOKEN, 200)]
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
        ({"compute": {"device": "gpu"}}, "compute.device"),
        ({"compute": {"device": "cuda:one"}}, "compute.device"),
        ({"compute": {"device": 0}}, "compute.device"),
        ({"compute": {"threads": -1}}, "compute.threads"),
        ({"compute": {"threads": "all"}}, "compute.threads"),
        ({"compute": {"cores": 2}}, "compute.cores"),
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


# --- every number finite and bounded, paths sane, tokens printable, files one clear line ---


def _with(section: str, key: str, value) -> dict:
    """`_raw()` with `[section].key = value` (section "trainers" sets it on trainers[0])."""
    raw = _raw()
    if section == "trainers":
        raw["trainers"][0][key] = value
    else:
        raw.setdefault(section, {"name": "o"} if section == "owner" else {})[key] = value
    return raw


BAD_NUMBERS = [
    ("owner", "grace_seconds", float("nan"), "must be a finite number"),
    ("owner", "grace_seconds", float("inf"), "must be a finite number"),
    ("owner", "stream_idle_seconds", float("-inf"), "must be a finite number"),
    ("owner", "upload_seconds", float("nan"), "must be a finite number"),
    ("owner", "grace_seconds", 3601, "must be at most 3600"),
    ("owner", "stream_idle_seconds", 1e9, "must be at most 3600"),
    ("owner", "upload_seconds", 86401.0, "must be at most 86400"),
    ("owner", "max_workers", 10**9, "must be at most 1024, got 1000000000"),
    ("owner", "max_workers", 2**70, "must be at most 1024"),
    ("owner", "max_workers", 10**4000, "must be at most 1024"),
    ("owner", "max_workers", 1e9, "must be an integer"),
    ("owner", "selection_workers", 257, "must be at most 256"),
    ("owner", "selection_queue", 4097, "must be at most 4096"),
    ("owner", "selections_per_trainer", 10**6, "must be at most 4096"),
    ("owner", "max_uploads", 257, "must be at most 256"),
    ("owner", "max_uploads_per_trainer", 257, "must be at most 256"),
    ("owner", "max_reflection_streams", 65, "must be at most 64"),
    ("owner", "disk_quota_mib", 2**40, "must be at most 16777216"),
    ("owner", "disk_quota_per_trainer_mib", 2**40, "must be at most 16777216"),
    ("limits", "max_request_bytes", 2**40, "must be at most 1073741824"),
    ("limits", "max_request_bytes", 2.0**30, "must be an integer"),
    ("limits", "max_model_bytes", 2**32, "must be at most 2147483648"),
    ("limits", "max_hard_rows", 10**7, "must be at most 1000000"),
    ("limits", "max_embed_dim", 65537, "must be at most 65536"),
    ("limits", "max_budget", 10**8, "must be at most 10000000"),
    ("limits", "max_request_id_chars", 4097, "must be at most 4096"),
    ("limits", "max_params", 257, "must be at most 256"),
    ("limits", "max_abs_hard_value", 10**31, "must be at most"),
    ("budget", "default_cap", 10**10, "must be at most 1000000000"),
    ("budget", "default_queries", 10**10, "must be at most 1000000000"),
    ("budget", "max_rows_per_request", 10**8, "must be at most 10000000"),
    ("trainers", "cap", 10**12, "must be at most 1000000000"),
    ("trainers", "queries", 10**12, "must be at most 1000000000"),
    ("trainers", "cap", 1e3, "must be an integer"),
    ("selection", "embed_batch_size", 65537, "must be at most 65536"),
    ("selection", "cache_mib", 2**21, "must be at most 1048576"),
    ("models", "max_abs_weight", float("nan"), "finite"),
    ("models", "input_bound", float("inf"), "finite"),
    ("models", "max_parameters", 10**12, "at most"),
    ("models", "probes", 1e9, "integer"),
]


@pytest.mark.parametrize(
    "section, key, value, problem",
    BAD_NUMBERS,
    ids=[f"{b[0]}.{b[1]}={b[2]!r:.12}" for b in BAD_NUMBERS],
)
def test_numbers_must_be_finite_and_bounded(tmp_path, section, key, value, problem):
    with pytest.raises(ConfigError) as e:
        parse_config(_with(section, key, value), base_dir=tmp_path)
    field = f"trainers[0].{key}" if section == "trainers" else f"{section}.{key}"
    assert str(e.value).startswith(f"{field}: "), str(e.value)
    assert problem in str(e.value) and len(str(e.value)) < 200, str(e.value)


def test_upper_bounds_themselves_are_accepted(tmp_path):
    owner = {"name": "o", "max_workers": 1024, "grace_seconds": 3600, "upload_seconds": 86400}
    limits = {"max_request_bytes": 2**30, "max_budget": 10**7, "max_abs_hard_value": 10**30}
    config = parse_config(_raw(owner=owner, limits=limits), base_dir=tmp_path)
    assert config.owner.max_workers == 1024 and config.owner.grace_seconds == 3600.0
    assert config.limits.max_request_bytes == 2**30


@pytest.mark.parametrize("state_dir", ["/", "/etc", "/usr/", "/var", "/proc/self", "/dev/shm"])
def test_state_dir_refuses_system_directories(tmp_path, state_dir):
    with pytest.raises(ConfigError, match=r"^owner\.state_dir: "):
        parse_config(_raw(owner={"name": "o", "state_dir": state_dir}), base_dir=tmp_path)


@pytest.mark.parametrize("given", ["~", "{home}", "{home}/.", "../home"])
def test_state_dir_refuses_the_home_directory(tmp_path, monkeypatch, given):
    home = tmp_path / "home"
    (tmp_path / "cfg").mkdir()
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    owner = {"name": "o", "state_dir": given.format(home=home)}
    with pytest.raises(ConfigError, match=r"^owner\.state_dir: .* home directory"):
        parse_config(_raw(owner=owner), base_dir=tmp_path / "cfg")


def test_state_dir_refuses_an_existing_file_and_keeps_relative_paths(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ConfigError, match=r"^owner\.state_dir: .* not a directory"):
        parse_config(_raw(owner={"name": "o", "state_dir": "taken"}), base_dir=tmp_path)
    config = parse_config(_raw(owner={"name": "o", "state_dir": "sub/state"}), base_dir=tmp_path)
    assert config.owner.state_dir == tmp_path / "sub" / "state"


BAD_TOKENS = [
    TOKEN + "\x07",
    "secret token 0123456789",
    TOKEN + "é",
    TOKEN + "\x7f",
    TOKEN[:6] + "\t" + TOKEN[6:],
]


@pytest.mark.parametrize("token", BAD_TOKENS, ids=["bell", "space", "e-acute", "del", "tab"])
@pytest.mark.parametrize("key", ["token", "token_env", "token_file"])
def test_tokens_must_be_printable_ascii(tmp_path, monkeypatch, token, key):
    if key == "token_env":
        monkeypatch.setenv("MYCROFT_TEST_BAD_TOKEN", token)
        value = "MYCROFT_TEST_BAD_TOKEN"
    elif key == "token_file":
        (tmp_path / "t.token").write_text(token, encoding="utf-8")
        value = "t.token"
    else:
        value = token
    trainers = [{"id": "a", key: value}]
    with pytest.raises(ConfigError) as e:
        parse_config(_raw(trainers=trainers), base_dir=tmp_path)
    message = str(e.value)
    assert message.startswith(f"trainers[0].{key}: "), message
    assert token.strip() not in message and TOKEN not in message  # never echoed
    assert "\n" not in message


def test_token_file_must_be_small_utf8(tmp_path):
    (tmp_path / "big.token").write_bytes(b"a" * 100_000)
    (tmp_path / "latin.token").write_bytes(TOKEN.encode() + b"\xe9")
    for name, problem in (("big.token", "too large"), ("latin.token", "not UTF-8")):
        trainers = [{"id": "a", "token_file": name}]
        with pytest.raises(ConfigError, match=rf"^trainers\[0\]\.token_file: .*{problem}"):
            parse_config(_raw(trainers=trainers), base_dir=tmp_path)


@pytest.mark.parametrize("tid", ["a\x07b", "a\nb", "a\u2028b", "x" * 129])
def test_trainer_ids_are_printable_and_short(tmp_path, tid):
    with pytest.raises(ConfigError, match=r"^trainers\[0\]\.id: "):
        parse_config(_raw(trainers=[{"id": tid, "token": TOKEN}]), base_dir=tmp_path)
    assert parse_config(_raw(trainers=[{"id": "x" * 128, "token": TOKEN}]), base_dir=tmp_path)


def test_unreadable_file_is_a_config_error(tmp_path, monkeypatch):
    path = tmp_path / "owner.toml"
    path.write_text("[owner]\n")

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", refuse)  # chmod 0 does not stop root
    with pytest.raises(ConfigError, match=r"owner\.toml: cannot read the config file: Perm"):
        load_config(path)


def test_owner_serve_on_a_deeply_nested_file_prints_one_line(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 100000 + "]" * 100000)
    result = subprocess.run(
        [sys.executable, "-m", "mycroft", "owner", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mycroft: error:"), result.stderr
    assert str(path) in lines[0] and "Traceback" not in result.stderr
