"""Typed reads from the owner's TOML tables, each naming the field on error.

Package-private helpers of `owner_node.config`: every number is bounded on both sides and
finite, and `owner.state_dir` may not be a directory that is never meant to hold node state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mycroft.errors import ConfigError

MIN_TOKEN_CHARS = 16  # shorter bearer tokens are guessable; refuse them at start-up
MAX_TOKEN_CHARS = 4096  # gRPC refuses metadata beyond 8 KiB by default

# A state directory holds the ledger (the privacy budget) and model files; none of these may
# be it. Linux top-level system directories, then their macOS counterparts.
_SYSTEM_DIRS = frozenset(
    "/bin /boot /dev /etc /home /lib /lib32 /lib64 /libx32 /media /mnt /opt /proc /root /run "
    "/sbin /snap /srv /sys /tmp /usr /var /Applications /Library /System /Users /Volumes "
    "/cores /private /private/etc /private/tmp /private/var".split()
)
# Virtual or memory-backed: state there is not a directory on disk, or vanishes on reboot
# (a vanished ledger would hand every trainer a fresh budget).
_NO_STATE_UNDER = (Path("/dev"), Path("/proc"), Path("/sys"))


def _table(raw: Mapping[str, Any], name: str, required: bool = False) -> Mapping[str, Any]:
    if name not in raw:
        if required:
            raise ConfigError(f"{name}: required section [{name}] is missing")
        return {}
    if not isinstance(raw[name], Mapping):
        raise ConfigError(f"{name}: must be a table")
    return raw[name]


def _no_unknown(t: Mapping[str, Any], where: str, known: set[str]) -> None:
    for key in t:
        if key not in known:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown setting; known: {', '.join(sorted(known))}")


def _str(t: Mapping[str, Any], where: str, key: str, required: bool = False) -> str | None:
    if key not in t:
        if required:
            raise ConfigError(f"{where}.{key}: required")
        return None
    value = t[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key}: must be a non-empty string")
    if not value.isprintable():  # never echoed: the value may be a token
        raise ConfigError(f"{where}.{key}: must not hold control or non-printable characters")
    return value


def _shown(value: Any) -> str:
    """`value` for an error message, shortened: TOML allows integers thousands of digits long."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def _int(t: Mapping[str, Any], where: str, key: str, default: int, lo: int, hi: int) -> int:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}: must be an integer, got {_shown(value)}")
    if value < lo:
        raise ConfigError(f"{where}.{key}: must be >= {lo}, got {_shown(value)}")
    if value > hi:
        raise ConfigError(f"{where}.{key}: must be at most {hi}, got {_shown(value)}")
    return value


def _float(
    t: Mapping[str, Any], where: str, key: str, default: float, lo: float, hi: float
) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}: must be a number, got {_shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}.{key}: must be a finite number, got {value}")
    if value < lo:
        raise ConfigError(f"{where}.{key}: must be >= {lo}, got {_shown(value)}")
    if value > hi:
        raise ConfigError(f"{where}.{key}: must be at most {hi}, got {_shown(value)}")
    return float(value)


def _bool(t: Mapping[str, Any], where: str, key: str, default: bool) -> bool:
    value = t.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: must be true or false, got {_shown(value)}")
    return value


def _path(value: str, base: Path) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p).resolve()


def _state_dir(value: str, base: Path) -> Path:
    """`owner.state_dir` resolved like any path, refused where node state must not live."""
    where = "owner.state_dir"
    try:
        p = _path(value, base)
        real = p.resolve()  # symlinks too: /lib -> /usr/lib, /etc -> /private/etc
        is_file = real.exists() and not real.is_dir()
    except (OSError, RuntimeError) as e:  # a symlink loop, a directory we may not read
        raise ConfigError(f"{where}: cannot resolve {value}: {e}") from None
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        home = None
    if real == Path(real.anchor):
        raise ConfigError(f"{where}: {p} is the filesystem root; give a directory of its own")
    if real == home:
        raise ConfigError(f"{where}: {p} is the home directory; give a directory of its own")
    if str(p) in _SYSTEM_DIRS or str(real) in _SYSTEM_DIRS:
        raise ConfigError(f"{where}: {p} is a system directory; give a directory of its own")
    for top in _NO_STATE_UNDER:
        if real.is_relative_to(top):
            raise ConfigError(f"{where}: {p} is under {top}, which holds no persistent files")
    if is_file:
        raise ConfigError(f"{where}: {p} exists and is not a directory")
    return p


def _token(t: Mapping[str, Any], where: str, base: Path, required: bool) -> str | None:
    given = [k for k in ("token", "token_env", "token_file") if k in t]
    if len(given) > 1:
        raise ConfigError(f"{where}.{given[1]}: give only one of token, token_env, token_file")
    if not given:
        if required:
            raise ConfigError(f"{where}.token: required (token, token_env or token_file)")
        return None
    key = given[0]
    value = _str(t, where, key, required=True)
    if key == "token_env":
        token = os.environ.get(value)
        if token is None:
            raise ConfigError(f"{where}.token_env: environment variable {value} is not set")
    elif key == "token_file":
        p = _path(value, base)
        try:
            with p.open("rb") as f:  # bounded: token_file = "/dev/zero" must not hang
                data = f.read(4 * MAX_TOKEN_CHARS + 1)
            if len(data) > 4 * MAX_TOKEN_CHARS:
                raise ConfigError(f"{where}.token_file: {p} is too large to hold only a token")
            token = data.decode("utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{where}.token_file: cannot read {p}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}.token_file: {p} is not UTF-8 text") from None
    else:
        token = value
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(
            f"{where}.{key}: token must be at least {MIN_TOKEN_CHARS} characters, no spaces"
        )
    if len(token) > MAX_TOKEN_CHARS:
        raise ConfigError(f"{where}.{key}: token must be at most {MAX_TOKEN_CHARS} characters")
    # Sent as gRPC metadata: printable ASCII only. The message never shows the token.
    for i, c in enumerate(token):
        if not "\x21" <= c <= "\x7e":
            kind = "a non-ASCII character" if c > "\x7f" else "a control character"
            raise ConfigError(
                f"{where}.{key}: token must be printable ASCII without spaces "
                f"(0x21-0x7E); character {i + 1} is {kind}"
            )
    return token


MAX_PORT = 65535
# `owner.health_listen` is plaintext: only these hosts keep it off the network.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def split_address(value: str, where: str, lowest_port: int = 0) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:50051`) split into host, without brackets, and port.

    gRPC would read a missing port as 443 and an IPv6 host without brackets ambiguously, so
    both are refused here, naming `where` (a config field or a command-line flag).
    """
    expected = f"{where}: expected host:port, got {_shown(value)}"
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]:")
        if not bracket or not host:
            raise ConfigError(f"{expected} (IPv6 as [::1]:50051)")
    else:
        host, colon, port = value.rpartition(":")
        if not colon or not host or not port:
            raise ConfigError(expected)
        if ":" in host:
            raise ConfigError(f"{expected} (put an IPv6 host in brackets: [::1]:50051)")
    digits = port.isascii() and port.isdigit() and len(port) <= len(str(MAX_PORT))
    if not (digits and lowest_port <= int(port) <= MAX_PORT):
        raise ConfigError(
            f"{where}: port must be a number from {lowest_port} to {MAX_PORT}, got {_shown(port)}"
        )
    return host, int(port)


def _address(t: Mapping[str, Any], where: str, key: str) -> str | None:
    """A host:port listen address (port 0: any free port), or None when not set."""
    value = _str(t, where, key)
    if value is not None:
        split_address(value, f"{where}.{key}")
    return value


def _listen_addresses(t: Mapping[str, Any], default_listen: str) -> tuple[str, str | None]:
    """`owner.listen` and `owner.health_listen`, the latter only on loopback."""
    listen = _address(t, "owner", "listen") or default_listen
    health_listen = _address(t, "owner", "health_listen")
    if health_listen is not None:
        host, port = split_address(health_listen, "owner.health_listen")
        if host not in LOOPBACK_HOSTS:
            raise ConfigError(
                f"owner.health_listen: {health_listen!r} must be on loopback "
                "(127.0.0.1, localhost or [::1]): it is plaintext"
            )
        if health_listen == listen and port != 0:
            raise ConfigError(f"owner.health_listen: {health_listen} is owner.listen too")
    return listen, health_listen
