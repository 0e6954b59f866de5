"""Building and running the owner's gRPC server.

`build_server(config)` returns a started-ready server (health, optional reflection, TLS) and its port;
port 0 in `owner.listen` picks an ephemeral port, which is what the tests use. `serve` starts
it; `run_owner(path)` is the whole process: config, signals, graceful shutdown, exit code.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from mycroft.data.base import LabeledData
from mycroft.errors import MycroftError
from mycroft.v1 import owner_pb2 as pb
from owner_node.auth import Authenticator
from owner_node.config import OwnerConfig, load_config
from owner_node.engine import Engine
from owner_node.health import add_health
from owner_node.ledger import Ledger
from owner_node.reflection import add_reflection
from owner_node.rpc import RequestWaits, add_servicer
from owner_node.service import OwnerServicer
from owner_node.watchdog import Watchdog

log = logging.getLogger("owner_node.server")
# A client sends a unary request with the call; one that has not within this is cancelled.
UNARY_REQUEST_SECONDS = 10.0
PATIENT_WAITS = 8  # beyond this many waiting at once, a new one gets 0.25 s (rpc.RequestWaits)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DataOwner"].full_name  # "mycroft.v1.DataOwner"


class OwnerServer(grpc.Server):
    """A grpc.Server that also owns the engine and ledger and closes them when it stops.

    It delegates every gRPC call to the real server; `stop(grace)` marks health NOT_SERVING,
    lets in-flight calls finish within `grace`, then shuts the worker pool and the ledger.
    """

    def __init__(
        self,
        server: grpc.Server,
        engine: Engine,
        ledger: Ledger,
        health_servicer: health.HealthServicer,
        port: int,
        health_server: grpc.Server | None,
        closers: list[Callable[[], object]],
    ):
        self._server = server
        self._health_server = health_server  # plaintext loopback probes (own threads)
        self._closers = closers  # watchdog, health pools: closed after the last call ends
        self.engine = engine
        self.ledger = ledger
        self.health = health_servicer
        self.port = port
        self._closed = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False

    # --- grpc.Server interface, delegated ---
    def add_generic_rpc_handlers(self, generic_rpc_handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self._server.add_registered_method_handlers(service_name, method_handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def start(self) -> None:
        self._server.start()
        if self._health_server is not None:
            self._health_server.start()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout) is False

    def stop(self, grace: float | None) -> threading.Event:
        with self._stop_lock:
            if self._stopping:
                return self._closed
            self._stopping = True
        self.health.enter_graceful_shutdown()  # health checks now say NOT_SERVING
        done = self._server.stop(grace)
        if self._health_server is not None:
            self._health_server.stop(grace)

        def close() -> None:
            done.wait()
            try:
                for close_one in self._closers:
                    close_one()
                self.engine.close()
                self.ledger.close()
            finally:
                log.info("owner stopped")
                self._closed.set()

        threading.Thread(target=close, name="owner-close", daemon=True).start()
        return self._closed


def build_server(config: OwnerConfig, data: LabeledData | None = None) -> tuple[OwnerServer, int]:
    """The server for `config`, not yet started, and the port it is bound to.

    `data` overrides the config's [data] source (tests pass rows directly).
    """
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    engine = Engine(config, data)  # loads the data: slow part, done before SERVING
    watchdog = Watchdog()  # cancels calls that stop making progress
    closers: list[Callable[[], object]] = [watchdog.close]
    ledger = Ledger(
        config.owner.state_dir / "ledger.db",
        {t.id: t.cap for t in config.trainers},
        {t.id: t.queries for t in config.trainers},
    )
    try:
        mutual = config.tls is not None and config.tls.mutual
        auth = Authenticator(config.trainers, mutual)
        servicer = OwnerServicer(engine, ledger, auth, watchdog)
        limits = config.limits
        server = grpc.server(
            ThreadPoolExecutor(max_workers=config.owner.max_workers, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", limits.max_request_bytes),
                ("grpc.max_send_message_length", limits.max_request_bytes),
            ],
            maximum_concurrent_rpcs=config.owner.max_workers * 4,
        )
        # Unary requests are awaited under the watchdog: a caller that never sends one is cut.
        idle = min(config.owner.stream_idle_seconds, UNARY_REQUEST_SECONDS)
        add_servicer(servicer, server, watchdog, RequestWaits(idle, patient=PATIENT_WAITS))
        closers.append(add_health(server, health_servicer, watchdog).shutdown)
        add_reflection(server, SERVICE_NAME, auth, watchdog, config.owner)
        port = _bind(server, config)
        health_server = _health_only_server(health_servicer, config, watchdog, closers)
    except BaseException:
        for close_one in closers:
            close_one()
        engine.close()
        ledger.close()
        raise
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server_obj = OwnerServer(server, engine, ledger, health_servicer, port, health_server, closers)
    return server_obj, port


def _health_only_server(
    health_servicer: health.HealthServicer,
    config: OwnerConfig,
    watchdog: Watchdog,
    closers: list[Callable[[], object]],
) -> grpc.Server | None:
    """A plaintext server with only the health check, on `owner.health_listen`."""
    address = config.owner.health_listen
    if address is None:
        return None
    # The health pool serves the calls; this one only accepts them (gRPC needs one).
    server = grpc.server(ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-accept"))
    closers.append(add_health(server, health_servicer, watchdog).shutdown)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise MycroftError(f"owner.health_listen: cannot listen on {address}: {e}") from None
    if port == 0:
        raise MycroftError(f"owner.health_listen: cannot listen on {address}")
    return server


def _bind(server: grpc.Server, config: OwnerConfig) -> int:
    address = config.owner.listen
    try:
        if config.tls is None:
            port = server.add_insecure_port(address)
        else:
            tls = config.tls
            credentials = grpc.ssl_server_credentials(
                [(tls.key.read_bytes(), tls.cert.read_bytes())],
                root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
                require_client_auth=tls.mutual,
            )
            port = server.add_secure_port(address, credentials)
    except RuntimeError as e:
        raise MycroftError(f"owner.listen: cannot listen on {address}: {e}") from None
    if port == 0:
        raise MycroftError(f"owner.listen: cannot listen on {address}")
    return port


def serve(config: OwnerConfig, data: LabeledData | None = None) -> OwnerServer:
    """Build and start the server; returns it running (call .stop(grace) to end it)."""
    server, port = build_server(config, data)
    server.start()
    owner = config.owner
    if owner.disk_quota_mib < len(config.trainers) * owner.disk_quota_per_trainer_mib:
        log.warning(
            "owner.disk_quota_mib (%d) is below %d trainers x disk_quota_per_trainer_mib (%d): "
            "one trainer's uploads may evict other trainers' least recently used models",
            owner.disk_quota_mib,
            len(config.trainers),
            owner.disk_quota_per_trainer_mib,
        )
    info = server.engine.info()
    log.info(
        "owner %r serving %d rows (%d classes) on port %d%s; methods: %s; trainers: %s",
        info.name,
        info.row_count,
        len(info.class_names),
        port,
        " with mutual TLS"
        if config.tls and config.tls.mutual
        else " with TLS"
        if config.tls
        else " without TLS",
        ", ".join(info.methods),
        ", ".join(t.id for t in config.trainers) or "none",
    )
    return server


def run_owner(config_path: str) -> int:
    """Run an owner until SIGTERM/SIGINT. Returns the process exit code."""
    if not logging.getLogger().handlers:  # e.g. called from the CLI without logging set up
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        config = load_config(config_path)
        server = serve(config)
    except MycroftError as e:
        print(f"mycroft: error: {e}", file=sys.stderr)
        return 2
    grace = config.owner.grace_seconds

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: finishing in-flight calls (grace %.0fs)", signum, grace)
        server.stop(grace)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    # Waiting in short slices keeps the main thread able to run signal handlers.
    while server.wait_for_termination(timeout=0.5):  # True while it timed out
        pass
    return 0
