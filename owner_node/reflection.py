"""gRPC server reflection (for grpcurl and grpc_cli), behind the service's own credentials.

Off unless `owner.reflection = true`. When on, a reflection stream authenticates like any call
to the service, at most `owner.max_reflection_streams` are open at once (one per trainer), and
an idle one is cancelled by the watchdog, so reflection cannot be used to hold handler threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from owner_node import rpc
from owner_node.auth import Authenticator
from owner_node.limits import Limiter
from owner_node.watchdog import Watchdog


class GuardedReflection(reflection.ReflectionServicer):
    def __init__(
        self, service: str, auth: Authenticator, streams: Limiter, dog: Watchdog, idle: float
    ):
        super().__init__((service, health.SERVICE_NAME, reflection.SERVICE_NAME))
        self._auth = auth
        self._streams = streams
        self._dog = dog
        self._idle = idle

    def ServerReflectionInfo(self, request_iterator: Iterator[Any], context) -> Iterator[Any]:
        try:
            trainer = self._auth.identify(context).trainer_id
            place = self._streams.take(trainer)
        except Exception as e:  # noqa: BLE001 - a status, not a traceback
            rpc.abort(context, e, "ServerReflectionInfo", "-")
        with place, self._dog.watch(context, f"reflection of {trainer!r}", self._idle) as w:
            try:
                yield from super().ServerReflectionInfo(w.iterate(request_iterator), context)
            except grpc.RpcError:
                if not w.expired and context.is_active():
                    raise
                # cancelled (idle, or the client left): nothing more to send


def add_reflection(
    server: grpc.Server, service: str, auth: Authenticator, dog: Watchdog, owner: Any
) -> None:
    """Register reflection on `server` when the owner's config turns it on."""
    if not owner.reflection:
        return
    streams = Limiter("reflection streams", owner.max_reflection_streams, 1)
    servicer = GuardedReflection(service, auth, streams, dog, owner.stream_idle_seconds)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
