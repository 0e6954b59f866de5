"""The trainer config's owner side: whom to ask (`[[owners]]`, with TLS files and tokens) and how
the client retries (`[client]`). Re-exported by trainer_node.config."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from mycroft.addresses import DialAddress
from mycroft.config_base import (
    ConfigModel,
    FieldProblem,
    Float,
    Int,
    RelPath,
    Secret,
    Str,
    require_files,
    shown,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"must be letters, digits, '.', '_', '-' (<= 64), got {shown(value)}")
    return value


Name = Annotated[Str, AfterValidator(_name)]


class TlsSettings(ConfigModel):
    ca_cert: RelPath | None = None
    client_cert: RelPath | None = None
    client_key: RelPath | None = None
    server_name: Str | None = None  # overrides the name checked against the certificate

    @model_validator(mode="after")
    def _files(self) -> TlsSettings:
        if (self.client_cert is None) != (self.client_key is None):
            raise FieldProblem("client_key", "client_cert and client_key go together")
        require_files(self, ("ca_cert", "client_cert", "client_key"))
        return self


class OwnerEndpoint(ConfigModel):
    name: Name
    address: DialAddress
    token: Secret | None = Field(None, repr=False)  # never printed in logs, reprs or errors
    tls: TlsSettings | None = None
    deadline_seconds: Float = Field(60.0, ge=0.1, le=86400.0)
    price: Float | None = Field(None, ge=0.0)  # per row revealed (report only); None: not given
    token_env: Str | None = None  # the environment variable `token` was read from

    @model_validator(mode="before")
    @classmethod
    def _token_from_env(cls, data: Any) -> Any:
        env = data.get("token_env") if isinstance(data, dict) else None
        if not isinstance(env, str):  # absent, or refused by the field's own type check
            return data
        if data.get("token") is not None:
            raise FieldProblem("token", "give `token` or `token_env`, not both")
        token = os.environ.get(env)
        if not token:
            raise FieldProblem("token_env", f"environment variable {env} is not set")
        return {**data, "token": token}

    @model_validator(mode="after")
    def _printable_token(self) -> OwnerEndpoint:
        # Sent as gRPC metadata: printable ASCII without spaces. Never echo the token itself.
        if self.token is not None and not all("\x21" <= c <= "\x7e" for c in self.token):
            key = "token" if self.token_env is None else "token_env"
            raise FieldProblem(key, "the token must be printable ASCII without spaces (0x21-0x7E)")
        return self


class ClientSettings(ConfigModel):
    retries: Int = Field(3, ge=0)
    backoff: Float = Field(0.5, ge=0.0, le=60.0)  # first wait in seconds; doubles per attempt
    backoff_max: Float = Field(10.0, ge=0.0, le=600.0)
    # The share of each wait drawn at random: a wait is uniform in [(1 - jitter) * w, w], so
    # trainers that saw the same owner restart do not all retry at the same instant.
    jitter: Float = Field(0.5, ge=0.0, le=1.0)
    concurrency: Int = Field(4, ge=1)
