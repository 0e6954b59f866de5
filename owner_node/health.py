"""Health probes for an owner node (`mycroft owner health`, compose healthchecks, simulate).

A plaintext node is probed on its listen address. A TLS node is probed on its loopback-only
plaintext health port (`owner.health_listen`): under mutual TLS a probe would otherwise need a
trainer's client certificate just to ask whether the node is up.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mycroft.addresses import split_address
from mycroft.config_base import load
from mycroft.errors import ConfigError
from owner_node import rpc
from owner_node.config import OwnerConfig, ProbeConfig
from owner_node.watchdog import Watchdog

HEALTH_THREADS = 4
# A probe sends its tiny request with the call: one that has not within 2 s (0.25 s while
# another is already waiting) is cancelled, so stalled calls cannot keep the health threads.
HEALTH_REQUEST_SECONDS = 2.0
NO_ANSWER_HINT = "is the owner running? is it TLS? then pass --config"


def add_health(
    server: grpc.Server, servicer: health.HealthServicer, watchdog: Watchdog
) -> ThreadPoolExecutor:
    """Serve the standard health Check on `server`, on threads of its own, so a probe is
    answered whatever the service's handler threads are doing. Returns the pool (shut it down
    with the server). Watch is not offered: each watcher would hold a thread."""
    pool = ThreadPoolExecutor(max_workers=HEALTH_THREADS, thread_name_prefix="health")

    def check(request: object, context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        if isinstance(request, rpc.Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
        return servicer.Check(request, context)

    check.experimental_thread_pool = pool  # type: ignore[attr-defined]
    handler = grpc.stream_unary_rpc_method_handler(
        rpc.first_request(
            check, watchdog, rpc.RequestWaits(HEALTH_REQUEST_SECONDS, patient=1), "health Check"
        ),
        request_deserializer=rpc.tolerant(health_pb2.HealthCheckRequest),
        response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(health.SERVICE_NAME, {"Check": handler}),)
    )
    return pool


@dataclass(frozen=True)
class ProbeTarget:
    """What a probe needs from an owner config: where the node listens, and whether it is TLS."""

    listen: str
    health_listen: str | None
    tls: bool

    def address(self) -> str:
        """Where a local probe reaches the node's health service."""
        if self.health_listen:  # its own server and threads: answers whatever the load
            where, address = "owner.health_listen", self.health_listen
        elif self.tls:
            raise ConfigError(
                'owner.health_listen: needed to probe a TLS node (e.g. "127.0.0.1:50052")'
            )
        else:
            where, address = "owner.listen", self.listen
        host, port = split_address(address, where)
        if port == 0:
            raise ConfigError(
                f"{where}: port 0 is picked at start-up; probe with --address HOST:PORT"
            )
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"  # a wildcard listen address is reachable on loopback
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def load_probe_target(path: str | os.PathLike[str]) -> ProbeTarget:
    """Only [owner].listen/health_listen and [tls] of an owner config: a probe needs no
    trainer secrets, data or state, so their env vars and files need not exist where it runs."""
    cfg = load(ProbeConfig, path)
    return ProbeTarget(cfg.owner.listen, cfg.owner.health_listen, tls=cfg.tls is not None)


def probe_address(config: OwnerConfig) -> str:
    """Where a local probe reaches the health service of the node `config` describes."""
    owner = config.owner
    return ProbeTarget(owner.listen, owner.health_listen, config.tls is not None).address()


def probe(address: str, timeout: float, hint: str = NO_ANSWER_HINT) -> str | None:
    """None when the node at `address` answers SERVING within `timeout` seconds, else why not.

    `hint` follows the no-answer reason: what the user may have got wrong."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            if code in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return f"no answer from {address} within {timeout} s ({hint})"
            return f"the health check failed with {code.name}: {e.details()}"
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return f"the node reports {status} (starting up or shutting down?)"


def serving(address: str, timeout: float) -> bool:
    """True when the node at `address` answers SERVING within `timeout` seconds."""
    return probe(address, timeout) is None


def check_health(config: str | None, address: str | None = None, timeout: float = 3.0) -> int:
    """CLI: exit 0 when SERVING, 1 when not (saying why), with one line saying which."""
    if not timeout > 0:
        raise ConfigError(f"--timeout: must be a positive number of seconds, got {timeout}")
    hint = NO_ANSWER_HINT
    if address is not None:
        split_address(address, "--address", lowest_port=1)
    elif config is not None:
        address = load_probe_target(config).address()
        hint = "is the owner running?"  # the config already said whether it is TLS
    else:
        raise ConfigError("--config: give an owner config or --address")
    reason = probe(address, timeout, hint)
    print(f"{address}: SERVING" if reason is None else f"{address}: not serving: {reason}")
    return 0 if reason is None else 1
