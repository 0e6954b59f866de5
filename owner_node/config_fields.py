"""The owner-specific rules of `owner_node.config`: printable strings, listen addresses, where
node state may live, and how a trainer's token is read.

Generic checks (types, bounds, unknown keys) are declared on the models; what is here is only
what no other config needs. Validators raise ValueError/FieldProblem, which the config layer
reports at the field (`owner.state_dir: ...`). Address parsing is `mycroft.addresses`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

from mycroft.addresses import ListenAddress, split_host_port
from mycroft.config_base import FieldProblem, Secret, Str

MIN_TOKEN_CHARS = 16  # shorter bearer tokens are guessable; refuse them at start-up
MAX_TOKEN_CHARS = 4096  # gRPC refuses metadata beyond 8 KiB by default
# `owner.health_listen` is plaintext: only these hosts keep it off the network.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

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


def _printable(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    if not value.isprintable():  # never echoed: the value may be a token
        raise ValueError("must not hold control or non-printable characters")
    return value


# Names, paths, addresses and tokens: one line a log or an error message can hold.
Text = Annotated[Str, AfterValidator(_printable)]
SecretText = Annotated[Secret, AfterValidator(_printable)]  # a non-string is not echoed either
Address = Annotated[ListenAddress, AfterValidator(_printable)]


def check_health_listen(listen: str, health_listen: str | None) -> None:
    """`owner.health_listen` is plaintext: on loopback only, and not `owner.listen` itself."""
    if health_listen is None:
        return
    host, port = split_host_port(health_listen)
    if host not in LOOPBACK_HOSTS:
        raise FieldProblem(
            "health_listen",
            f"{health_listen!r} must be on loopback (127.0.0.1, localhost or [::1]): "
            "it is plaintext",
        )
    if health_listen == listen and port != 0:
        raise FieldProblem("health_listen", f"{health_listen} is owner.listen too")


def _state_dir(value: str, info: ValidationInfo) -> Path:
    """`owner.state_dir` resolved like any path, refused where node state must not live."""
    try:
        p = Path(os.path.expanduser(value))
        if not p.is_absolute():
            p = (Path((info.context or {}).get("base_dir") or Path.cwd()) / p).resolve()
        real = p.resolve()  # symlinks too: /lib -> /usr/lib, /etc -> /private/etc
        is_file = real.exists() and not real.is_dir()
    except (OSError, RuntimeError) as e:  # a symlink loop, a directory we may not read
        raise ValueError(f"cannot resolve {value}: {e}") from None
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no passwd entry
        home = None
    own = "give a directory of its own"
    if real == Path(real.anchor):
        raise ValueError(f"{p} is the filesystem root; {own}")
    if real == home:
        raise ValueError(f"{p} is the home directory; {own}")
    if str(p) in _SYSTEM_DIRS or str(real) in _SYSTEM_DIRS:
        raise ValueError(f"{p} is a system directory; {own}")
    for top in _NO_STATE_UNDER:
        if real.is_relative_to(top):
            raise ValueError(f"{p} is under {top}, which holds no persistent files")
    if is_file:
        raise ValueError(f"{p} exists and is not a directory")
    return p


# Relative to the config file's folder, like any path; never a system or home directory.
StateDir = Annotated[Text, AfterValidator(_state_dir)]


def read_token(
    given: dict[str, str | Path | None], required: bool, where: tuple[str | int, ...]
) -> str | None:
    """The token from whichever of token / token_env / token_file is set (token_file already
    resolved to a path). Problems name the key below `where`; the token is never shown."""
    keys = [k for k in ("token", "token_env", "token_file") if given.get(k) is not None]
    if len(keys) > 1:
        raise FieldProblem((*where, keys[1]), "give only one of token, token_env, token_file")
    if not keys:
        if required:
            raise FieldProblem((*where, "token"), "required (token, token_env or token_file)")
        return None
    key, value = keys[0], given[keys[0]]
    try:
        token = _token_from(key, value)
        _check_token(token)
    except ValueError as e:
        raise FieldProblem((*where, key), str(e)) from None
    return token


def _token_from(key: str, value: str | Path | None) -> str:
    if key == "token_env":
        token = os.environ.get(str(value))
        if token is None:
            raise ValueError(f"environment variable {value} is not set")
        return token
    if key == "token":
        return str(value)
    p = Path(str(value))
    try:
        with p.open("rb") as f:  # bounded: token_file = "/dev/zero" must not hang
            data = f.read(4 * MAX_TOKEN_CHARS + 1)
    except OSError as e:
        raise ValueError(f"cannot read {p}: {e.strerror}") from None
    if len(data) > 4 * MAX_TOKEN_CHARS:
        raise ValueError(f"{p} is too large to hold only a token")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not UTF-8 text") from None


def _check_token(token: str) -> None:
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"token must be at least {MIN_TOKEN_CHARS} characters, no spaces")
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"token must be at most {MAX_TOKEN_CHARS} characters")
    # Sent as gRPC metadata: printable ASCII only. The message never shows the token.
    for i, c in enumerate(token):
        if not "\x21" <= c <= "\x7e":
            kind = "a non-ASCII character" if c > "\x7f" else "a control character"
            raise ValueError(
                "token must be printable ASCII without spaces "
                f"(0x21-0x7E); character {i + 1} is {kind}"
            )
