"""Every config file the product reads (owner, trainer, scenario) goes through one reader:
whatever is wrong with the file, the user gets one line naming it, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mycroft.errors import ConfigError
from mycroft.files import MAX_TOML_BYTES
from mycroft.scenario import load_scenario
from owner_node.config import load_config as load_owner
from trainer_node.config import load_config as load_trainer

LOADERS: dict[str, Callable[[Path], object]] = {
    "owner": load_owner,
    "trainer": load_trainer,
    "scenario": load_scenario,
}
MALFORMED = [
    ("deep", "a = " + "[" * 100000 + "]" * 100000, "nested too deeply"),
    ("deep-tables", "a = " + "{b = " * 100000 + "}" * 100000, "nested too deeply"),
    ("latin-1", b'[owner]\nname = "caf\xe9"\n', "not UTF-8"),
    ("long-int", "a = " + "9" * 5000, "not valid TOML"),
    ("syntax", "name = [", "not valid TOML"),
    ("huge", "# " + "x" * MAX_TOML_BYTES, "not a config file"),
    ("directory", None, "is a directory"),
    ("missing", ..., "not found"),
]


@pytest.mark.parametrize("loader", LOADERS, ids=list(LOADERS))
@pytest.mark.parametrize(("name", "content", "problem"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_are_one_config_error(tmp_path, loader, name, content, problem):
    path = tmp_path / f"{name}.toml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    with pytest.raises(ConfigError) as e:
        LOADERS[loader](path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and problem in message, message
    assert "\n" not in message and len(message) < 300
