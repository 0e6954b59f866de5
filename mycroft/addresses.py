"""`host:port` addresses, one parser for every config field and command-line flag that holds one.

gRPC would read a missing port as 443 and an IPv6 host without brackets ambiguously, so both are
refused here. IPv6 hosts are written in brackets: `[::1]:50051`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from mycroft.config_base import Str, shown
from mycroft.errors import ConfigError

MAX_PORT = 65535


def split_host_port(value: str, lowest_port: int = 0) -> tuple[str, int]:
    """Host (without brackets) and port; ValueError naming what is wrong."""
    expected = f"expected host:port, got {shown(value)}"
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]:")
        if not bracket or not host:
            raise ValueError(f"{expected} (IPv6 as [::1]:50051)")
    else:
        host, colon, port = value.rpartition(":")
        if not colon or not host or not port:
            raise ValueError(expected)
        if ":" in host:
            raise ValueError(f"{expected} (put an IPv6 host in brackets: [::1]:50051)")
    digits = port.isascii() and port.isdigit() and len(port) <= len(str(MAX_PORT))
    if not (digits and lowest_port <= int(port) <= MAX_PORT):
        raise ValueError(
            f"port must be a number from {lowest_port} to {MAX_PORT}, got {shown(port)}"
        )
    return host, int(port)


def split_address(value: str, where: str, lowest_port: int = 0) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:50051`) split into host, without brackets, and port.

    gRPC would read a missing port as 443 and an IPv6 host without brackets ambiguously, so
    both are refused here, naming `where` (a config field or a command-line flag).
    """
    try:
        return split_host_port(value, lowest_port)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _listen(value: str) -> str:
    split_host_port(value, lowest_port=0)
    return value


def _dial(value: str) -> str:
    split_host_port(value, lowest_port=1)
    return value


ListenAddress = Annotated[Str, AfterValidator(_listen)]  # port 0: any free port
DialAddress = Annotated[Str, AfterValidator(_dial)]  # an address to connect to
