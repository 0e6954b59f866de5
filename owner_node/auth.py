"""Who is calling: a bearer token, or (with mutual TLS) the client certificate's common name.

Each RPC calls `Authenticator.identify(context)` first; keeping it a plain call rather than an
interceptor makes the identity an ordinary value the RPC passes on to the ledger and the logs.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from mycroft import logs
from owner_node.config import TrainerGrant
from owner_node.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True)
class Caller:
    trainer_id: str
    via: str  # "token" or "certificate"


class Authenticator:
    def __init__(self, trainers: Iterable[TrainerGrant], mutual_tls: bool = False):
        self._mutual = mutual_tls
        # Digests have one length, so compare_digest's time does not leak token lengths.
        self._tokens = [
            (hashlib.sha256(t.token.encode()).digest(), t.id) for t in trainers if t.token
        ]
        self._by_cn = {t.cert_cn: t.id for t in trainers if t.cert_cn}

    def identify(self, context: grpc.ServicerContext) -> Caller:
        caller = self._identify(context)
        logs.bind(trainer_id=caller.trainer_id)  # the rest of this call's log lines name it
        return caller

    def _identify(self, context: grpc.ServicerContext) -> Caller:
        token = _bearer_token(context.invocation_metadata() or ())
        by_token = self._match_token(token) if token is not None else None
        if token is not None and by_token is None:
            raise Unauthenticated("unknown bearer token")
        if self._mutual:
            cn = _common_name(context)
            if cn is None:
                raise Unauthenticated("a client certificate is required")
            trainer = self._by_cn.get(cn)
            if trainer is None:
                raise Unauthenticated(f"client certificate {cn!r} is not a configured trainer")
            if by_token is not None and by_token != trainer:
                raise PermissionDenied(
                    "bearer token and client certificate name different trainers"
                )
            return Caller(trainer, "certificate")
        if by_token is None:
            raise Unauthenticated("missing 'authorization: Bearer <token>' metadata")
        return Caller(by_token, "token")

    def _match_token(self, token: str) -> str | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, trainer in self._tokens:  # no early exit: same work for every token
            if hmac.compare_digest(digest, known):
                found = trainer
        return found


def _bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        return token.strip()
    return None


def _common_name(context: grpc.ServicerContext) -> str | None:
    names = context.auth_context().get("x509_common_name") or []
    if not names:
        return None
    name = names[0]
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
