"""Building and running the owner's gRPC server.

`build_server(config)` returns a started-ready server (health, optional reflection, TLS) and its port;
port 0 in `owner.listen` picks an ephemeral port, which is what the tests use. `serve` starts
it; `run_owner(path)` is the whole process: config, signals, graceful shutdown, exit code.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2

from mycroft import logs
from mycroft.addresses import split_address
from mycroft.data.base import LabeledData
from mycroft.errors import MycroftError
from mycroft.protocol import MAX_ANSWER_MESSAGE_BYTES, MAX_REQUEST_MESSAGE_BYTES
from mycroft.v1 import owner_pb2 as pb
from owner_node.auth import Authenticator
from owner_node.config import OwnerConfig, TlsConfig, load_config
from owner_node.engine import Engine
from owner_node.health import add_health
from owner_node.ledger import Ledger
from owner_node.metrics import MetricsEndpoint, OwnerMetrics
from owner_node.reflection import add_reflection
from owner_node.rpc import CallObserver, RequestWaits, add_servicer
from owner_node.service import OwnerServicer
from owner_node.watchdog import Watchdog

log = logging.getLogger("owner_node.server")
# A client sends a unary request with the call; one that has not within this is cancelled.
UNARY_REQUEST_SECONDS = 10.0
PATIENT_WAITS = 8  # beyond this many waiting at once, a new one gets 0.25 s (rpc.RequestWaits)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DataOwner"].full_name  # "mycroft.v1.DataOwner"
# gRPC sets SO_REUSEPORT on Linux, so a second owner on a taken port would bind and share
# (or steal) the first one's connections; without it the bind fails and we can say so.
NO_PORT_SHARING = ("grpc.so_reuseport", 0)


class OwnerServer:
    """A running owner: the gRPC server(s) it holds, with the engine and ledger it closes.

    `stop(grace)` marks health NOT_SERVING, lets in-flight calls finish within `grace`, then
    shuts the worker pool and the ledger. Handlers and ports are added in `build_server`.
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
        metrics_port: int | None = None,
    ):
        self._server = server
        self._health_server = health_server  # plaintext loopback probes (own threads)
        self._closers = closers  # watchdog, health pools: closed after the last call ends
        self.engine = engine
        self.ledger = ledger
        self.health = health_servicer
        self.port = port
        self.metrics_port = metrics_port  # where /metrics is served; None when off
        self._closed = threading.Event()
        self._stop_lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        self._server.start()
        if self._health_server is not None:
            self._health_server.start()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Like grpc.Server's: True when `timeout` passed before the owner closed."""
        return self._closed.wait(timeout) is False

    def stop(self, grace: float | None) -> threading.Event:
        """Begin a graceful stop (once); the event is set when everything is closed."""
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
    credentials = _check_before_loading(config)
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    engine = Engine(config, data)  # loads the data: slow part, done before SERVING
    watchdog = Watchdog()  # cancels calls that stop making progress
    closers: list[Callable[[], object]] = [watchdog.close]
    metrics = OwnerMetrics(engine.methods) if config.metrics.enabled else None
    ledger = Ledger(
        config.owner.state_dir / "ledger.db",
        {t.id: t.cap for t in config.trainers},
        {t.id: t.queries for t in config.trainers},
        metrics,
    )
    try:
        mutual = config.tls is not None and config.tls.mutual
        auth = Authenticator(config.trainers, mutual)
        servicer = OwnerServicer(engine, ledger, auth, watchdog)
        server = grpc.server(
            ThreadPoolExecutor(max_workers=config.owner.max_workers, thread_name_prefix="grpc"),
            options=[
                # Large payloads come in chunks: one message never needs more, and a caller
                # not yet authenticated can make the owner hold no more than this.
                ("grpc.max_receive_message_length", MAX_REQUEST_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_ANSWER_MESSAGE_BYTES),
                NO_PORT_SHARING,
            ],
            maximum_concurrent_rpcs=config.owner.max_workers * 4,
            interceptors=[CallObserver(config.owner.name, metrics)],
        )
        # Unary requests are awaited under the watchdog: a caller that never sends one is cut.
        idle = min(config.owner.stream_idle_seconds, UNARY_REQUEST_SECONDS)
        add_servicer(servicer, server, watchdog, RequestWaits(idle, patient=PATIENT_WAITS))
        closers.append(add_health(server, health_servicer, watchdog).shutdown)
        add_reflection(server, SERVICE_NAME, auth, watchdog, config.owner)
        port = _add_port(server, config.owner.listen, "owner.listen", credentials)
        health_server = _health_only_server(health_servicer, config, watchdog, closers)
        metrics_port = _serve_metrics(config, metrics, engine, ledger, closers)
    except BaseException:
        for close_one in closers:
            close_one()
        engine.close()
        ledger.close()
        raise
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server_obj = OwnerServer(
        server, engine, ledger, health_servicer, port, health_server, closers, metrics_port
    )
    return server_obj, port


def _serve_metrics(
    config: OwnerConfig,
    metrics: OwnerMetrics | None,
    engine: Engine,
    ledger: Ledger,
    closers: list[Callable[[], object]],
) -> int | None:
    """Start `/metrics` on `metrics.listen` (closed with the owner); its port, or None."""
    if metrics is None:
        return None
    metrics.watch(engine.models, ledger)
    endpoint = MetricsEndpoint(metrics.registry, config.metrics.listen)
    closers.append(endpoint.close)
    return endpoint.port


def _check_before_loading(config: OwnerConfig) -> grpc.ServerCredentials | None:
    """Refuse, in one line naming the field, what would fail only after the data is loaded
    (slow), or fail as raw gRPC log lines or a traceback. Returns the TLS credentials."""
    for where, address in _bound_addresses(config):
        _check_can_listen(address, where)
    credentials = _tls_credentials(config.tls) if config.tls is not None else None
    try:  # the engine makes it too (same mode), but a failure there is a traceback
        config.owner.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise MycroftError(
            f"owner.state_dir: cannot create {config.owner.state_dir}: {e.strerror}"
        ) from None
    return credentials


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
    server = grpc.server(
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-accept"),
        options=[NO_PORT_SHARING],
    )
    closers.append(add_health(server, health_servicer, watchdog).shutdown)
    _add_port(server, address, "owner.health_listen")
    return server


def _tls_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """The server's TLS credentials, checked with Python's ssl first: gRPC refuses a bad
    certificate or key only with raw log lines and a bind failure that does not say why."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for where, path in (("tls.cert", tls.cert), ("tls.client_ca", tls.client_ca)):
        try:
            if path is not None:
                context.load_verify_locations(cafile=path)  # parses every certificate in it
        except (ssl.SSLError, OSError):
            raise MycroftError(f"{where}: {path} holds no valid PEM certificate") from None
    try:
        # An empty password: an encrypted key fails here instead of prompting on a terminal
        # (gRPC cannot use one either).
        context.load_cert_chain(tls.cert, tls.key, password=b"")
    except (ssl.SSLError, OSError):
        raise MycroftError(
            f"tls.key: {tls.key} is not the unencrypted PEM private key of tls.cert"
        ) from None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
        require_client_auth=tls.mutual,
    )


def _add_port(
    server: grpc.Server,
    address: str,
    where: str,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind `server` to `address`; the port, or MycroftError naming the field `where`."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:  # taken since _check_can_listen, or refused for a reason it cannot see
        raise MycroftError(f"{where}: cannot listen on {address}")
    return port


def _bound_addresses(config: OwnerConfig) -> list[tuple[str, str]]:
    """(field, address) of every address the node listens on."""
    addresses = [("owner.listen", config.owner.listen)]
    if config.owner.health_listen is not None:
        addresses.append(("owner.health_listen", config.owner.health_listen))
    if config.metrics.enabled:
        addresses.append(("metrics.listen", config.metrics.listen))
    return addresses


def _check_can_listen(address: str, where: str) -> None:
    """Raise MycroftError, naming `where`, unless a listening socket can take `address`.

    Binds and releases a plain socket on each address the host resolves to, as gRPC will
    (SO_REUSEADDR, so connections still closing from a previous run do not count)."""
    host, port = split_address(address, where)
    try:
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise MycroftError(f"{where}: cannot resolve {host!r}: {e.strerror}") from None
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in resolved:
        try:  # creating the socket fails too where the family is off (IPv6 disabled)
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
        except OSError as e:
            failures.append(e)
    if any(e.errno == errno.EADDRINUSE for e in failures):
        raise MycroftError(f"{where}: {address} is already in use (another owner node?)")
    if failures and len(failures) == len(resolved):  # gRPC needs one of them to bind
        raise MycroftError(f"{where}: cannot listen on {address}: {failures[0].strerror}")


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
        info.owner_name,
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
    if server.metrics_port is not None:
        host, _ = split_address(config.metrics.listen, "metrics.listen")
        host = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL writes it
        log.info("metrics on http://%s:%d/metrics", host, server.metrics_port)
    return server


def run_owner(config: OwnerConfig | str | Path) -> int:
    """Run an owner (a config, or its file) until SIGTERM/SIGINT. Returns the exit code."""
    try:
        if not logs.configured():  # called as a library, without logging set up
            logs.configure(logging.INFO)
        if not isinstance(config, OwnerConfig):
            config = load_config(config)
        logs.set_process_fields(owner=config.owner.name)  # one owner per process
        server = serve(config)
    except MycroftError as e:
        logs.report_error(str(e))
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
