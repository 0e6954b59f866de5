"""`mycroft simulate`: a scenario run as real processes on this machine.

`prepare` builds the scenario's data, writes one NPZ file per node and one config per owner
(owners run as separate processes, or as the containers `docker compose` starts), and
validates the trainer's config in memory; with `write_trainer` (--prepare-only, which compose
uses) it writes trainer.toml too, for a trainer started on its own. `run_local` starts one
`mycroft owner serve` process per owner on a loopback port, waits for each to report SERVING,
runs the trainer in this process on the in-memory config, and stops the owners with SIGTERM.
With `--backend ray` the owners are Ray actors instead (mycroft.ray_owners) and the trainer's
evaluation runs as Ray tasks on the same instance. Nothing here is simulation-only: the
processes are the production nodes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from mycroft.errors import ConfigError, MycroftError
from mycroft.files import toml_ready
from mycroft.logs import child_environment
from mycroft.scenario import Scenario, ScenarioData, build, load_scenario

if TYPE_CHECKING:
    from trainer_node.config import TrainerConfig

log = logging.getLogger("mycroft.simulate")
TRAINER_ID = "trainer-1"
COMPOSE_PORT = 50051


@dataclass
class OwnerPlan:
    name: str  # the scenario's owner name, shown in reports
    host: str  # compose service name or 127.0.0.1
    port: int
    config: Path
    rows: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class SimulationPlan:
    run_dir: Path
    trainer: TrainerConfig  # validated; run_local runs it without a file
    trainer_config: Path | None = None  # trainer.toml, when written for a separate trainer
    owners: list[OwnerPlan] = field(default_factory=list)
    # The drawn scenario: it knows which rows are needles or wrong-labelled, and the report
    # shows each request's share of them (a real trainer cannot know this).
    truth: ScenarioData | None = None
    # The trainer's config as TOML-ready values: re-validated with the owners' real addresses
    # when they are known only once the owners run (Ray actors on a cluster).
    trainer_raw: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)  # configs hold tokens


def _budgets(scenario: Scenario, data: ScenarioData) -> list[int]:
    """Row budgets for the trainer. Fractions are taken of the median owner's rows, so every
    owner is asked for the same number of rows and gains compare fairly."""
    sizes = sorted(len(d) for d in data.owners.values())
    median = sizes[len(sizes) // 2]
    rows = [scenario.run.budget_rows(b, median) for b in scenario.run.budgets]
    return sorted(set(rows))


# Rank owners by Mycroft's own selection, not random: the first of these the scenario runs.
RANK_PREFERENCE = ("funcfeat", "gradient", "feature")


def _rank_by(methods: list[str], budgets: list[int]) -> dict[str, Any] | None:
    """The ranking setting: the preferred method at the largest budget (least noisy gain);
    None leaves the trainer's default, the first listed method."""
    method = next((m for m in RANK_PREFERENCE if m in methods), None)
    return None if method is None else {"method": method, "budget": max(budgets)}


def prepare(
    scenario: Scenario,
    run_dir: Path,
    *,
    seed: int = 0,
    hosts: str = "loopback",
    tls: bool = False,
    certs: Path | None = None,
    state_root: Path | None = None,
    write_trainer: bool = True,
    compute_backend: str | None = None,
) -> SimulationPlan:
    """Write every node's data and the owners' configs under `run_dir` (and trainer.toml when
    `write_trainer`); validate the trainer's config; start nothing. `compute_backend` ("local"
    or "ray") sets the trainer's [compute] backend; None leaves the trainer's default."""
    from mycroft.data import save_npz
    from trainer_node.config import parse_config

    if tls and (certs is None or not (certs / "ca.pem").is_file()):
        raise ConfigError(
            f"--certs: {certs}/ca.pem not found; make one with scripts/make_dev_certs.sh"
        )
    run_dir = run_dir.resolve()
    data = build(scenario, seed)
    owner_files = data.save_owners(run_dir / "data" / "owners")
    trainer_dir = run_dir / "data" / "trainer"
    splits = {"train": data.trainer_train, "val": data.trainer_val, "test": data.test}
    paths = {split: save_npz(part, trainer_dir / f"{split}.npz") for split, part in splits.items()}
    methods = list(scenario.run.methods)
    budgets = _budgets(scenario, data)
    plans: list[OwnerPlan] = []
    trainer_owners: list[dict[str, Any]] = []
    for i, (name, path) in enumerate(owner_files.items()):
        rows = len(data.owners[name])
        per_request = max(rows, *budgets, 1)
        if hosts == "compose":
            # compose services are owner-a, owner-b, ... in scenario order
            host, port, listen = f"owner-{chr(ord('a') + i)}", COMPOSE_PORT, "0.0.0.0"
            config = run_dir / "owners" / f"{host}.toml"
        else:
            host, port, listen = "127.0.0.1", _free_port(), "127.0.0.1"
            config = run_dir / "owners" / f"{name}.toml"
        token = secrets.token_urlsafe(24)
        owner: dict[str, Any] = {
            "name": name,
            "listen": f"{listen}:{port}",
            "state_dir": (state_root or run_dir / "state") / name,
        }
        if tls:  # probes (compose healthcheck, simulate) use a plaintext loopback health port
            health_port = COMPOSE_PORT + 1 if hosts == "compose" else _free_port()
            owner["health_listen"] = f"127.0.0.1:{health_port}"
        tables: dict[str, Any] = {
            "owner": owner,
            "data": {"source": "npz", "path": path},
            # Evaluation run: the cap lets every method and budget (and "full") be answered; a
            # budget above the owner's size is answered with all it has and a stated shortfall.
            "budget": {"default_cap": rows, "max_rows_per_request": per_request},
            "trainers": [{"id": TRAINER_ID, "token": token, "cap": rows}],
            "limits": {"max_budget": per_request},
            "selection": {"allow_full": "full" in methods},
        }
        entry: dict[str, Any] = {
            "name": name,
            "address": f"{host}:{port}",
            "token": token,
            "deadline_seconds": 600.0,
        }
        if tls:
            assert certs is not None
            cert = host if hosts == "compose" else "localhost"
            tables["tls"] = {
                "cert": certs / f"{cert}.pem",
                "key": certs / f"{cert}.key",
                "client_ca": certs / "ca.pem",
            }
            entry["tls"] = {
                "ca_cert": certs / "ca.pem",
                "client_cert": certs / f"{TRAINER_ID}.pem",
                "client_key": certs / f"{TRAINER_ID}.key",
            }
        _write_private(config, tomli_w.dumps(toml_ready(tables)))
        plans.append(OwnerPlan(name=name, host=host, port=port, config=config, rows=rows))
        trainer_owners.append(entry)

    run = scenario.run
    trainer = {
        "trainer": {"id": TRAINER_ID, "run_dir": run_dir, "run_id": f"{scenario.name}-seed{seed}"},
        "data": paths,
        "model": {
            "gate": run.model.gate,
            "num_experts": run.model.experts,
            "top_k": run.model.top_k,
        },
        "training": {
            "epochs": run.epochs,
            "seeds": run.seeds,
            "mode": run.training,
            "finetune_epochs": run.finetune_epochs,
            "finetune_lr": run.finetune_lr,
            "oversample_to": run.oversample_to,
        },
        "dhard": {
            "classes": [data.class_names[c] for c in data.dhard_classes],
            "shared_fraction": run.shared_fraction,
        },
        "selection": {
            "methods": methods,
            "budgets": budgets,
            "mode": run.mode,
            "mode_by_method": dict(run.mode_by_method),
            "score_epoch": run.score_epoch,
            "rank_by": _rank_by(methods, budgets),
        },
        "owners": trainer_owners,
    }
    if compute_backend is not None:
        trainer["compute"] = {"backend": compute_backend}
    # What a trainer.toml holds, validated as the trainer validates its file.
    raw = toml_ready(trainer)
    trainer_path = run_dir / "trainer.toml" if write_trainer else None
    config = parse_config(raw, base_dir=run_dir, config_path=trainer_path)
    if trainer_path is not None:
        _write_private(trainer_path, tomli_w.dumps(raw))
    return SimulationPlan(run_dir, config, trainer_path, plans, truth=data, trainer_raw=raw)


def trainer_with_addresses(plan: SimulationPlan, addresses: dict[str, str]) -> TrainerConfig:
    """The plan's trainer config with each named owner dialled at its given address."""
    from trainer_node.config import parse_config

    raw = dict(plan.trainer_raw)
    raw["owners"] = [
        {**o, "address": addresses.get(o["name"], o["address"])} for o in raw["owners"]
    ]
    return parse_config(raw, base_dir=plan.run_dir, config_path=plan.trainer_config)


def wait_serving(
    name: str, address: str, timeout: float, gone: Callable[[], str | None] = lambda: None
) -> None:
    """Return once owner `name` answers SERVING on its health `address`; raise MycroftError
    when `gone` says why it no longer can (e.g. its process exited), or after `timeout` s."""
    from owner_node.health import serving

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = gone()
        if reason is not None:
            raise MycroftError(f"owner {name} {reason}")
        if serving(address, timeout=1.0):
            return
        time.sleep(0.3)
    raise MycroftError(f"owner {name} did not report SERVING within {timeout:.0f} s")


def _wait_process_serving(
    owner: OwnerPlan, proc: subprocess.Popen, log_path: Path, timeout: float
) -> None:
    from owner_node.config import load_config
    from owner_node.health import probe_address

    def exited() -> str | None:
        if proc.poll() is None:
            return None
        tail = log_path.read_text()[-2000:] if log_path.exists() else ""
        return f"exited with {proc.returncode}:\n{tail}"

    address = probe_address(load_config(owner.config))  # read the config once, not per poll
    wait_serving(owner.name, address, timeout, exited)


def _stop(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: the owner drains in-flight calls and closes its ledger
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def process_owners(plan: SimulationPlan, startup_timeout: float = 120.0) -> Iterator[TrainerConfig]:
    """Run the plan's owners as `mycroft owner serve` processes; yields the trainer's config."""
    logs = plan.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    try:
        for owner in plan.owners:
            log_path = logs / f"{owner.name}.log"
            with open(log_path, "wb") as out:
                cmd = [sys.executable, "-m", "mycroft", "owner", "serve", "--config"]
                procs.append(
                    subprocess.Popen(
                        [*cmd, str(owner.config)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=child_environment(),  # owners log in this process's format
                    )
                )
        for owner, proc in zip(plan.owners, procs, strict=True):
            _wait_process_serving(owner, proc, logs / f"{owner.name}.log", startup_timeout)
            log.info("owner %s serving on %s (pid %d)", owner.name, owner.address, proc.pid)
        yield plan.trainer
    finally:
        _stop(procs)


def run_simulation(plan: SimulationPlan, owners: AbstractContextManager[TrainerConfig]) -> int:
    """Run the trainer against the owners `owners` runs; returns an exit code."""
    from trainer_node.pipeline import run_trainer_cli

    with owners as trainer:
        status = run_trainer_cli(trainer, truth=plan.truth)  # as `mycroft trainer run`
    if status != 0:  # the trainer has said where this run's report is; report.json is older
        return status
    print(f"\nreport: {plan.run_dir / 'report.json'}")
    html = plan.run_dir / "report.html"
    if html.exists():
        print(f"html:   {html}")
    return status


def run_local(plan: SimulationPlan, *, startup_timeout: float = 120.0) -> int:
    """Start the owners as processes, run the trainer, stop the owners. Returns an exit code."""
    return run_simulation(plan, process_owners(plan, startup_timeout))


def simulate_from_args(args: argparse.Namespace) -> int:
    from mycroft.ray_owners import settings_from_args

    ray_settings = settings_from_args(args)
    scenario = load_scenario(args.scenario)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.out) if args.out else Path("runs") / f"{scenario.name}-{stamp}"
    tls = args.tls == "on"
    plan = prepare(
        scenario,
        run_dir,
        seed=args.seed,
        hosts=args.hosts,
        tls=tls,
        certs=Path(args.certs).resolve() if args.certs else None,
        write_trainer=args.prepare_only,  # a trainer started on its own (compose) reads it
        # the evaluation runs on the Ray instance the owners run on
        compute_backend=None if ray_settings is None else "ray",
    )
    if args.prepare_only:
        print(f"prepared {len(plan.owners)} owners and the trainer in {plan.run_dir}")
        return 0
    if args.hosts != "loopback":
        raise ConfigError("--hosts: only loopback can be run here; compose runs the containers")
    print(f"scenario {scenario.name}: {len(plan.owners)} owners, run dir {plan.run_dir}")
    if ray_settings is None:
        return run_local(plan)
    from mycroft.ray_owners import ray_owners

    return run_simulation(plan, ray_owners(plan, ray_settings))
