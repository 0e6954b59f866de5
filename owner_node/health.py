"""Health probes for an owner node (`mycroft owner health`, compose healthchecks, simulate).

A plaintext node is probed on its listen address. A TLS node is probed on its loopback-only
plaintext health port (`owner.health_listen`): under mutual TLS a probe would otherwise need a
trainer's client certificate just to ask whether the node is up.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mycroft.errors import ConfigError
from owner_node.config import OwnerConfig, load_config


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
