"""The product as a user runs it: `mycroft` commands as plain processes, and the compose file.

No Docker engine runs here, so the compose test checks that every service's command is a valid
`mycroft` command whose config files `prepare` writes, and then runs those same commands as
processes on loopback: owner serve, owner health, trainer run, owner inspect, report.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mycroft.cli import build_parser
from mycroft.scenario import parse_scenario
from mycroft.simulate import prepare

ROOT = Path(__file__).resolve().parent.parent

# Small enough to run in seconds: digits, three owners of different utility, one budget.
TINY_SCENARIO = """
name = "tiny"
[data]
source = "digits"
[trainer]
size = 300
scarce_classes = ["3", "8"]
scarce_fraction = 0.1
val_size = 250
[[owners]]
name = "relevant"
classes = ["3", "8"]
size = 120
seed = 1
[[owners]]
name = "noisy"
classes = ["3", "8"]
size = 100
label_noise = 0.3
seed = 2
[[owners]]
name = "irrelevant"
classes = ["0", "1", "2"]
size = 100
seed = 3
[run]
methods = ["random", "feature"]
budgets = [16]
seeds = 1
epochs = 4
"""


def interpolate(arg: str, env: dict[str, str]) -> str:
    """Compose's `${VAR:-default}` substitution, for the variables our compose file uses."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), arg)


def mycroft(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mycroft", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_every_compose_service_runs_a_valid_command_with_existing_configs(tmp_path):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prepare", "trainer"} <= set(services)
    assert len([s for s in services if s.startswith("owner-")]) == 4
    certs = tmp_path / "certs"
    owners = [s for s in services if s.startswith("owner-")]
    made = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "make_dev_certs.sh"),
            str(certs),
            *owners,
            "--",
            "trainer-1",
        ],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    shared = tmp_path / "shared"
    parser = build_parser()
    for tls in ("off", "on"):
        # The prepare service's own command, with compose's paths mapped into tmp_path.
        env = {"MYCROFT_TLS": tls}
        command = [
            interpolate(arg, env).replace("/shared", str(shared))
            for arg in services["prepare"]["command"]
        ]
        command = [str(certs) if arg == "/certs" else arg for arg in command]
        result = mycroft(*command)
        assert result.returncode == 0, result.stderr
        for name, service in services.items():
            args = parser.parse_args(
                [interpolate(a, env) for a in service["command"]]
            )  # a real subcommand, real flags
            assert callable(args.func), name
            if getattr(args, "config", None):
                config = Path(args.config.replace("/shared", str(shared)))
                assert config.is_file(), f"{name}: {config} not written by prepare"
                text = config.read_text()
                if tls == "on" and name.startswith("owner-"):
                    assert "[tls]" in text and "health_listen" in text
            health = service.get("healthcheck", {}).get("test")
            if health:
                assert health[:2] == ["CMD", "mycroft"]
                assert callable(parser.parse_args(health[2:]).func)


@pytest.fixture
def prepared(tmp_path):
    scenario = parse_scenario(__import__("tomllib").loads(TINY_SCENARIO), name="tiny")
    return prepare(scenario, tmp_path / "run", seed=0)


def test_a_local_run_validates_the_trainer_config_without_a_file(tmp_path):
    scenario = parse_scenario(__import__("tomllib").loads(TINY_SCENARIO), name="tiny")
    plan = prepare(scenario, tmp_path / "run", seed=0, write_trainer=False)
    assert plan.trainer_config is None and not (plan.run_dir / "trainer.toml").exists()
    assert [o.name for o in plan.trainer.owners] == ["relevant", "noisy", "irrelevant"]
    assert plan.trainer.run_id == "tiny-seed0"
    assert all(o.config.stat().st_mode & 0o777 == 0o600 for o in plan.owners)  # tokens


def test_the_same_commands_run_as_plain_processes(prepared):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    owners = [
        subprocess.Popen(
            [sys.executable, "-m", "mycroft", "owner", "serve", "--config", str(o.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for o in prepared.owners
    ]
    try:
        for owner in prepared.owners:
            deadline = time.monotonic() + 120
            while mycroft("owner", "health", "--config", str(owner.config)).returncode != 0:
                assert time.monotonic() < deadline, f"{owner.name} never became healthy"
                time.sleep(0.5)
        run = mycroft("--quiet", "trainer", "run", "--config", str(prepared.trainer_config))
        assert run.returncode == 0, run.stderr
        report = json.loads((prepared.run_dir / "report.json").read_text())
        ranked = [entry["owner"] for entry in report["ranking"]]
        assert set(ranked) == {"relevant", "noisy", "irrelevant"}
        # The owner with only irrelevant classes has nothing that fixes D_hard: it ranks last.
        assert ranked[-1] == "irrelevant"

        inspect = mycroft("owner", "inspect", "--config", str(prepared.owners[0].config), "--json")
        assert inspect.returncode == 0, inspect.stderr
        (ledger,) = json.loads(inspect.stdout)
        assert ledger["trainer"] == "trainer-1"
        assert ledger["budget"]["used"] > 0
        assert all(r["request_id"].startswith("tiny-seed0.") for r in ledger["requests"])
    finally:
        for proc in owners:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=60) for proc in owners]
    assert codes == [0] * len(owners), "owners must exit cleanly on SIGTERM"


def test_bad_config_gives_one_line_naming_the_field(tmp_path):
    bad = tmp_path / "owner.toml"
    bad.write_text('[owner]\nname = "x"\n[data]\nsource = "digits"\n[budget]\ndefault_cap = -3\n')
    result = mycroft("owner", "serve", "--config", str(bad))
    assert result.returncode == 2
    assert "budget.default_cap" in result.stderr
    assert "Traceback" not in result.stderr
    missing = mycroft("trainer", "run", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = mycroft("simulate", "--scenario", "no_such_scenario", "--prepare-only")
    assert unknown.returncode == 2 and "no_such_scenario" in unknown.stderr
