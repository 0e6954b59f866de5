"""Owners as Ray actors, for `mycroft simulate --backend ray`.

Each owner is one actor that runs the real owner server (owner_node.server.serve) in its Ray
worker process, on the actor's node: loopback and the port of the owner's config when the Ray
instance is the local one this process starts, the node's IP and a free port on a cluster. The
actors report where they listen, and the trainer's config is pointed there; the evaluation then
runs as Ray tasks on the same instance ([compute] backend = "ray" reuses an initialised Ray).

Owners read their config, data and state (the ledger) from the run directory, and write their
log to run_dir/logs/<owner>.log: on a multi-node cluster that directory must be on a
filesystem every node shares.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mycroft import logs
from mycroft.addresses import split_address
from mycroft.errors import ConfigError, MycroftError

if TYPE_CHECKING:
    from mycroft.simulate import OwnerPlan, SimulationPlan
    from owner_node.config import OwnerConfig
    from owner_node.server import OwnerServer
    from trainer_node.config import TrainerConfig

log = logging.getLogger("mycroft.ray_owners")
LOOPBACK = "127.0.0.1"
CLOSE_SECONDS = 30.0  # beyond the owner's grace: closing the engine and the ledger


@dataclass(frozen=True)
class RaySettings:
    """Where the owners run. `address` None: a local instance started in this process."""

    address: str | None = None
    cpus: int | None = None  # the local instance's CPUs; None: os.cpu_count()
    # Reserved by each owner actor; Ray takes fractions up to 1. None: `owner_share`.
    owner_cpus: float | None = None

    @property
    def local(self) -> bool:
        return self.address is None

    def check(self) -> None:
        if self.cpus is not None and self.cpus < 1:
            raise ConfigError(f"--ray-cpus: must be at least 1, got {self.cpus}")
        if self.cpus is not None and not self.local:
            raise ConfigError("--ray-cpus: sets a local instance's CPUs; not with --ray-address")
        cpus = self.owner_cpus
        if cpus is not None and not (cpus > 0 and (cpus <= 1 or float(cpus).is_integer())):
            raise ConfigError(
                f"--ray-owner-cpus: must be a fraction up to 1 or a whole number, got {cpus:g}"
            )


def settings_from_args(args: argparse.Namespace) -> RaySettings | None:
    """The --ray-* flags, checked before any data is built; None with --backend local."""
    given = {
        "--ray-address": args.ray_address,
        "--ray-cpus": args.ray_cpus,
        "--ray-owner-cpus": args.ray_owner_cpus,
    }
    if args.backend != "ray":
        for flag, value in given.items():
            if value is not None:
                raise ConfigError(f"{flag}: only with --backend ray")
        return None
    if args.prepare_only:
        raise ConfigError("--backend: ray starts the owners; --prepare-only starts nothing")
    settings = RaySettings(
        address=args.ray_address,
        cpus=args.ray_cpus,
        owner_cpus=args.ray_owner_cpus,
    )
    settings.check()
    if args.tls == "on" and not settings.local:
        raise ConfigError(
            "--tls: on a Ray cluster owners listen on their nodes' IPs, which the dev "
            "certificates (localhost) do not name; use --tls off, or a local Ray instance"
        )
    return settings


@dataclass(frozen=True)
class OwnerAddresses:
    dial: str  # where the trainer connects
    probe: str  # where the health check answers (TLS: the plaintext health port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listening_on(config: OwnerConfig, listen: str) -> OwnerConfig:
    return config.model_copy(update={"owner": config.owner.model_copy(update={"listen": listen})})


class OwnerActor:
    """One owner node in a Ray worker process (wrapped by ray.remote when started)."""

    def __init__(self, log_path: str, log_format: str = "text") -> None:
        self._server: OwnerServer | None = None
        self._grace = 0.0
        handler = logs.formatted(logging.FileHandler(log_path), log_format)  # as the driver's
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.getLogger("faiss").setLevel(logging.WARNING)  # as `mycroft owner serve` does

    def start(self, config_path: str, loopback: bool) -> OwnerAddresses:
        """Start the owner's server without blocking; where it listens. `loopback`: on the
        config's loopback port (a local instance). Else on the node's IP and a port the server
        picks: the driver cannot know which ports are free on another node."""
        import ray

        from owner_node.config import load_config
        from owner_node.health import probe_address
        from owner_node.server import serve

        config = load_config(config_path)
        logs.set_process_fields(owner=config.owner.name)  # this worker serves one owner
        if loopback:
            host, port = LOOPBACK, split_address(config.owner.listen, "owner.listen")[1]
        else:
            host, port = ray.util.get_node_ip_address(), 0
        config = _listening_on(config, join_address(host, port))
        self._server = serve(config)
        self._grace = config.owner.grace_seconds
        dial = join_address(host, self._server.port)
        return OwnerAddresses(dial=dial, probe=probe_address(_listening_on(config, dial)))

    def stop(self) -> bool:
        """Stop as SIGTERM stops an owner process: in-flight calls finish within the grace,
        then the ledger is closed. True when everything closed in time."""
        if self._server is None:
            return True
        return self._server.stop(self._grace).wait(self._grace + CLOSE_SECONDS)


def _connect(ray: Any, settings: RaySettings) -> bool:
    """Initialise Ray in this process; True when this call did (so we shut it down)."""
    if ray.is_initialized():  # e.g. a caller that set up its own instance: reuse, keep it
        return False
    # Owners write their logs to the run dir, as owner processes do: not onto this console.
    if settings.local:
        cpus = _local_cpus(settings)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        return True
    try:
        ray.init(address=settings.address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MycroftError(f"--ray-address: cannot connect to {settings.address}: {e}") from None
    return True


def _local_cpus(settings: RaySettings) -> int:
    return settings.cpus or os.cpu_count() or 1


def owner_share(total: float, owners: int, task_cpus: float) -> float:
    """CPUs each owner reserves when --ray-owner-cpus is not given: owners mostly wait on the
    network, so together they take at most half of what one evaluation task leaves, and never
    more than 1 each (5 owners on 2 CPUs: 0.1 each; on a 64-CPU cluster: 1 each)."""
    share = min(1.0, max(0.0, total - task_cpus) / 2 / max(1, owners))
    return max(0.01, math.floor(share * 100) / 100)  # Ray's fractions: 0.01 steps are plenty


def _sized(
    settings: RaySettings, total: float, owners: int, task_cpus: float, *, sized_here: bool
) -> RaySettings:
    """`settings` with each owner's CPUs decided, checked against the instance's `total`."""
    if settings.owner_cpus is None:
        settings = replace(settings, owner_cpus=owner_share(total, owners, task_cpus))
    _check_capacity(total, owners, settings, task_cpus, sized_here=sized_here)
    return settings


def _check_capacity(
    total: float, owners: int, settings: RaySettings, task_cpus: float, *, sized_here: bool
) -> None:
    """Owners hold their CPUs for the whole run: one evaluation task must still fit beside
    them, or it would wait forever. Refused on an instance sized here; on another one, only
    a warning: a cluster's autoscaler may still add nodes."""
    assert settings.owner_cpus is not None
    needed = owners * settings.owner_cpus + task_cpus
    if needed <= total:
        return
    problem = (
        f"--ray-owner-cpus: {owners} owners x {settings.owner_cpus:g} CPU, plus {task_cpus:g} "
        f"for an evaluation task (compute.cpus_per_task), need {needed:g} CPUs; the Ray "
        f"instance has {total:g}"
    )
    if sized_here:
        raise ConfigError(f"{problem} (--ray-cpus; owners mostly wait: fractions such as 0.25 do)")
    log.warning("%s: waiting for the cluster to grow (autoscaling)", problem)


def _start_error(ray: Any, owner: OwnerPlan, error: Exception, log_path: Path) -> MycroftError:
    cause = (
        getattr(error, "cause", None) if isinstance(error, ray.exceptions.RayTaskError) else None
    )
    if isinstance(cause, MycroftError):  # the owner's own one-line error naming the field
        return MycroftError(f"owner {owner.name}: {cause}")
    why = f"{type(cause).__name__}: {cause}" if cause is not None else str(error).splitlines()[0]
    return MycroftError(f"owner {owner.name} failed to start: {why} (log: {log_path})")


def _await_started(
    ray: Any, started: dict[Any, OwnerPlan], log_dir: Path, settings: RaySettings, timeout: float
) -> dict[str, OwnerAddresses]:
    """Each owner's addresses, as its actor reports them; the first failure raises."""
    pending = dict(started)
    addresses: dict[str, OwnerAddresses] = {}
    deadline = time.monotonic() + timeout
    while pending:
        left = max(0.0, deadline - time.monotonic())
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
        if not ready:
            names = ", ".join(o.name for o in pending.values())
            raise MycroftError(
                f"owners {names} did not start within {timeout:.0f} s (each asks Ray for "
                f"{settings.owner_cpus:g} CPU, --ray-owner-cpus: is the cluster short of CPUs?)"
            )
        owner = pending.pop(ready[0])
        try:
            addresses[owner.name] = ray.get(ready[0])
        except ray.exceptions.RayError as e:
            raise _start_error(ray, owner, e, log_dir / f"{owner.name}.log") from None
    return addresses


def _stop_all(ray: Any, actors: dict[str, Any]) -> None:
    """Stop every owner gracefully (a stop queued behind a start still running waits for it),
    then end the actors; one that does not answer in time is ended as it is."""
    stops = {actor.stop.remote(): name for name, actor in actors.items()}
    ready, late = ray.wait(list(stops), num_returns=len(stops), timeout=CLOSE_SECONDS * 2)
    for ref in ready:
        try:
            if not ray.get(ref):
                log.warning("owner %s did not close its ledger in time", stops[ref])
        except ray.exceptions.RayError as e:
            log.warning("owner %s could not be stopped: %s", stops[ref], str(e).splitlines()[0])
    for ref in late:
        log.warning("owner %s did not answer the stop; ending its actor", stops[ref])
    for actor in actors.values():
        ray.kill(actor)


@contextmanager
def ray_owners(
    plan: SimulationPlan, settings: RaySettings, startup_timeout: float = 120.0
) -> Iterator[TrainerConfig]:
    """Run the plan's owners as Ray actors; yields the trainer's config pointed at them.

    Ray is initialised here unless it already is, and shut down on exit only if it was
    initialised here; the owners are stopped on every exit (ledgers closed)."""
    from mycroft.simulate import trainer_with_addresses, wait_serving

    settings.check()
    from trainer_node.compute_ray import import_ray

    ray = import_ray("--backend")
    owners, task_cpus = len(plan.owners), plan.trainer.compute.cpus_per_task
    sized_here = settings.local and not ray.is_initialized()
    if sized_here:  # refused before the seconds Ray takes to start
        settings = _sized(settings, _local_cpus(settings), owners, task_cpus, sized_here=True)
    initialised = _connect(ray, settings)
    actors: dict[str, Any] = {}
    try:
        if not sized_here:
            total = float(ray.cluster_resources().get("CPU", 0.0))
            settings = _sized(settings, total, owners, task_cpus, sized_here=False)
        log_dir = plan.run_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        actor_class = ray.remote(max_restarts=0)(OwnerActor)
        started: dict[Any, OwnerPlan] = {}
        for owner in plan.owners:
            actor = actor_class.options(num_cpus=settings.owner_cpus).remote(
                str(log_dir / f"{owner.name}.log"), logs.current_format()
            )
            actors[owner.name] = actor
            # loopback only on the instance started here: one we were given may span nodes
            started[actor.start.remote(str(owner.config), sized_here)] = owner
        deadline = time.monotonic() + startup_timeout
        addresses = _await_started(ray, started, log_dir, settings, startup_timeout)
        for owner in plan.owners:  # reachable from here, where the trainer dials them
            where = addresses[owner.name]
            wait_serving(owner.name, where.probe, max(1.0, deadline - time.monotonic()))
            log.info("owner %s serving on %s (Ray actor)", owner.name, where.dial)
        yield trainer_with_addresses(plan, {name: a.dial for name, a in addresses.items()})
    finally:
        try:
            if actors:
                _stop_all(ray, actors)
        finally:
            if initialised:
                ray.shutdown()
