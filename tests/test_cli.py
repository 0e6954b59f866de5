"""The `mycroft` command line: flags anywhere, readable failures."""

import subprocess
import sys

import pytest

from mycroft.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "trainer", "run", "--config", "t.toml"],
        ["trainer", "run", "--config", "t.toml", "--quiet"],
        ["owner", "serve", "-q", "--config", "o.toml"],
    ],
)
def test_quiet_works_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert args.quiet is True and args.verbose is False


def test_quiet_and_verbose_exclude_each_other():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "r.json", "-q", "-v"])


def test_health_of_a_dead_address_is_a_clear_nonzero_exit():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mycroft",
            "owner",
            "health",
            "--address",
            "127.0.0.1:1",
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "127.0.0.1:1: not serving" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "mycroft", "owner", "health", "--config"],
        ["-m", "mycroft", "owner", "inspect", "--config"],
        ["-m", "mycroft", "trainer", "run", "--config"],
        ["-m", "owner_node", "--config"],
    ],
    ids=["owner-health", "owner-inspect", "trainer-run", "python-m-owner_node"],
)
def test_a_malformed_config_is_one_error_line(tmp_path, command):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 100000 + "]" * 100000)
    result = subprocess.run(
        [sys.executable, *command, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mycroft: error:"), result.stderr
    assert "deep.toml" in lines[0] and "Traceback" not in result.stderr
