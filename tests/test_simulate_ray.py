"""`mycroft simulate --backend ray`: the owners as Ray actors, the evaluation on the same instance.

Each run is a `mycroft` process, as a user runs it, on a local Ray instance of 2 CPUs; the owners
reserve a quarter CPU each so the evaluation's tasks fit beside them. The scenario is the
smallest that still ranks owners: two of them (starting a Ray worker costs seconds each).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_cli_simulation import mycroft

from mycroft.cli import main
from mycroft.ray_owners import RaySettings, owner_share, ray_owners
from mycroft.scenario import load_scenario
from mycroft.simulate import prepare
from owner_node.health import serving

pytest.importorskip("ray")

RAY = ("--backend", "ray", "--ray-cpus", "2", "--ray-owner-cpus", "0.25")
TWO_OWNERS = """
name = "tiny-ray"
[data]
source = "digits"
[trainer]
size = 200
scarce_classes = ["3", "8"]
scarce_fraction = 0.1
val_size = 150
[[owners]]
name = "relevant"
classes = ["3", "8"]
size = 80
seed = 1
[[owners]]
name = "irrelevant"
classes = ["0", "1", "2"]
size = 60
seed = 3
[run]
methods = ["random", "feature"]
budgets = [16]
seeds = 1
epochs = 3
"""
TIMING_KEYS = {"created_at", "address", "timings"}  # where a run differs from another run


def deterministic(value: Any) -> Any:
    """A report without what differs between two runs of the same seed: times, addresses."""
    if isinstance(value, dict):
        return {
            k: deterministic(v)
            for k, v in value.items()
            if k not in TIMING_KEYS and not k.endswith("_seconds")
        }
    if isinstance(value, list):
        return [deterministic(v) for v in value]
    return value


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TWO_OWNERS)
    return path


def simulate(scenario: Path, out: Path, *flags: str) -> Any:
    result = mycroft("-q", "simulate", "--scenario", str(scenario), "--out", str(out), *flags)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "report.json").read_text())


def test_ray_gives_the_local_report_and_leaves_the_ledgers_closed(scenario, tmp_path):
    on_ray = simulate(scenario, tmp_path / "ray", *RAY)
    local = simulate(scenario, tmp_path / "local")
    assert [e["owner"] for e in on_ray["ranking"]] == ["relevant", "irrelevant"]
    # The report says where the evaluation ran; all else is the same: ranking, gains, rows.
    assert on_ray["settings"].pop("compute") == "ray (local instance), 1 CPU per task"
    assert local["settings"].pop("compute") == "local, 1 worker"
    assert deterministic(on_ray) == deterministic(local)

    run = tmp_path / "ray"
    for report in on_ray["owners"]:
        name = report["name"]
        # Each actor's server stopped gracefully: the ledger closed before this line was logged.
        assert "owner stopped" in (run / "logs" / f"{name}.log").read_text()
        assert not list((run / "state" / name).glob("ledger.db-*")), "no open journal left"
        config = str(run / "owners" / f"{name}.toml")
        inspect = mycroft("owner", "inspect", "--config", config, "--json")  # reads the ledger
        assert inspect.returncode == 0, inspect.stderr
        (grant,) = json.loads(inspect.stdout)
        charged = [r for r in report["requests"] if r["status"] == "ok"]
        assert [r["request_id"] for r in grant["requests"]] == [r["request_id"] for r in charged]
        assert grant["budget"]["used"] == sum(r["new_rows_charged"] for r in charged)


def test_an_owner_that_cannot_start_is_named_and_the_others_are_stopped(scenario, tmp_path):
    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    (run / "state" / "irrelevant").write_text("")  # where the owner's state directory goes
    # In JSON logs, as a log collector would run it: the actors log in the driver's format.
    command = ("-q", "--log-format", "json", "simulate", "--scenario", str(scenario))
    result = mycroft(*command, "--out", str(run), *RAY)
    assert result.returncode == 2
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (error,) = [r["message"] for r in records if r["message"].startswith("mycroft: error:")]
    assert error.startswith("mycroft: error: owner irrelevant: owner.state_dir:")
    assert "Traceback" not in result.stderr
    assert not (run / "report.json").exists()
    # The other owner started beside it, then was stopped: its ledger closed.
    lines = (run / "logs" / "relevant.log").read_text().splitlines()
    owner_records = [json.loads(line) for line in lines]
    assert any(r["message"] == "owner stopped" for r in owner_records), lines
    assert {r.get("owner") for r in owner_records if r["logger"].startswith("owner_node")} == {
        "relevant"
    }


def test_a_ray_instance_already_running_is_reused_with_owners_on_the_node_address(
    scenario, tmp_path
):
    import ray

    # As on a cluster: an instance this process did not start may span nodes, so the owners
    # listen on their node's IP, on ports they pick, and the trainer is pointed there.
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        plan = prepare(load_scenario(scenario), tmp_path / "run", write_trainer=False)
        with ray_owners(plan, RaySettings(owner_cpus=0.25)) as trainer:
            dialled = [owner.address for owner in trainer.owners]
            assert all(not a.startswith("127.") for a in dialled), dialled
            assert dialled != [owner.address for owner in plan.owners]
            assert all(serving(address, timeout=2.0) for address in dialled)
        assert ray.is_initialized(), "an instance we did not start is left running"
        assert not any(serving(address, timeout=1.0) for address in dialled)
    finally:
        ray.shutdown()


def test_owners_that_would_leave_no_cpu_for_the_evaluation_are_refused(scenario, tmp_path):
    result = mycroft(
        "-q", "simulate", "--scenario", str(scenario), "--out", str(tmp_path / "run"),
        "--backend", "ray", "--ray-cpus", "2", "--ray-owner-cpus", "1",
    )  # fmt: skip
    assert result.returncode == 2
    assert "mycroft: error: --ray-owner-cpus: 2 owners x 1 CPU" in result.stderr
    assert "the Ray instance has 2" in result.stderr


@pytest.mark.parametrize(
    ("total", "owners", "share"),
    [(2, 5, 0.1), (2, 2, 0.25), (64, 5, 1.0), (1, 3, 0.01), (4, 3, 0.5)],
)
def test_owners_share_what_the_evaluation_leaves_by_default(total, owners, share):
    assert owner_share(total, owners, task_cpus=1.0) == share
    if total > 1:  # a default that the capacity check then refuses would be a trap
        assert owners * share + 1.0 <= total


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--ray-cpus", "2"), "--ray-cpus: only with --backend ray"),
        (("--backend", "ray", "--ray-owner-cpus", "1.5"), "--ray-owner-cpus: must be a fraction"),
        (("--backend", "ray", "--ray-owner-cpus", "0"), "--ray-owner-cpus: must be a fraction"),
        (("--backend", "ray", "--ray-cpus", "0"), "--ray-cpus: must be at least 1"),
        (("--backend", "ray", "--ray-address", "auto", "--ray-cpus", "2"), "--ray-cpus: sets"),
        (("--backend", "ray", "--prepare-only"), "--backend: ray starts the owners"),
        (("--backend", "ray", "--ray-address", "auto", "--tls", "on"), "--tls: on a Ray cluster"),
    ],
)
def test_ray_flags_are_checked_before_any_data_is_built(flags, named, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["simulate", "--scenario", "no_such_scenario", "--out", str(run), *flags]) == 2
    assert f"mycroft: error: {named}" in capsys.readouterr().err
    assert not run.exists()
