"""Health probes for an owner node (`mycroft owner health`, compose healthchecks, simulate).

A plaintext node is probed on its listen address. A TLS node is probed on its loopback-only
plaintext health port (`owner.health_listen`): under mutual TLS a probe would otherwise need a
trainer's client certificate just to ask whether the node is up.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mycroft.errors import ConfigError
from owner_node import rpc
from owner_node.config import OwnerConfig, load_config
from owner_node.watchdog import Watchdog

HEALTH_THREADS = 4
# A probe sends its tiny request with the call: one that has not within 2 s (0.25 s while
# another is already waiting) is cancelled, so stalled calls cannot keep the health threads.
HEALTH_REQUEST_SECONDS = 2.0


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


def probe_address(config: OwnerConfig) -> str:
    """Where a local probe reaches the node's health service."""
    if config.owner.health_listen:  # its own server and threads: answers whatever the load
        address = config.owner.health_listen
    elif config.tls is not None:
        raise ConfigError(
            'owner.health_listen: needed to probe a TLS node (e.g. "127.0.0.1:50052")'
        )
    else:
        address = config.owner.listen
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        host = "127.0.0.1"  # a wildcard listen address is reachable on loopback
    return f"{host}:{port}"


def serving(address: str, timeout: float) -> bool:
    """True when the node at `address` answers SERVING within `timeout` seconds."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def check_health(config: str | None, address: str | None = None, timeout: float = 3.0) -> int:
    """CLI: exit 0 when SERVING, 1 otherwise, with one line saying which."""
    if address is None:
        if config is None:
            raise ConfigError("--config: give an owner config or --address")
        address = probe_address(load_config(config))
    ok = serving(address, timeout)
    print(f"{address}: {'SERVING' if ok else 'not serving'}")
    return 0 if ok else 1
