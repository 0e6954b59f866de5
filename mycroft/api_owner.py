"""Owners for the notebook API: `Owner`, a real owner node served from this process, and
`RemoteOwner`, one running elsewhere.

`Owner` builds the owner's config as a dict, validates it with the owner's own config models
and starts `owner_node.server.serve`: the gRPC server `mycroft owner serve` runs, with its
ledger, admission policy and limits, on a loopback port.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mycroft.api_settings import Settings, labeled_arrays
from mycroft.errors import ConfigError, MycroftError

if TYPE_CHECKING:
    from owner_node.server import OwnerServer

DEFAULT_TRAINER_ID = "trainer-1"  # the trainer `mycroft.acquire` runs as, unless told otherwise
WAIT_AFTER_GRACE_SECONDS = 10.0  # closing: engine and ledger shut after in-flight calls end

# Owner keywords: a shortcut for one field of the owner's config, or a whole section as a dict.
OWNER_SETTINGS = Settings(
    shortcuts={
        "name": ("owner", "name"),
        "state_dir": ("owner", "state_dir"),
        "listen": ("owner", "listen"),
        "trainer_id": ("trainers", 0, "id"),
        "token": ("trainers", 0, "token"),
        "budget": ("budget", "default_cap"),  # distinct rows the trainer may ever receive
        "queries": ("budget", "default_queries"),  # computations over the rows it may ask for
        "max_rows_per_request": ("budget", "max_rows_per_request"),
        "methods": ("selection", "methods"),
        "allow_full": ("selection", "allow_full"),
        "device": ("compute", "device"),
        "threads": ("compute", "threads"),
    },
    sections=("owner", "limits", "selection", "compute", "models", "tls"),
)


class Owner:
    """A data owner's node, served from this process on a loopback port until `close()`.

    Build one with `Owner.from_arrays` or `Owner.from_source`. It serves one trainer
    (`trainer_id`, default "trainer-1"), who proves itself with `token` (random unless given);
    `mycroft.acquire(..., owners=[owner])` dials `address` with it. `ledger()` reads what the
    owner has revealed. Use it in a `with` block, or call `close()`: the server stops, and a
    state folder the owner made itself (no `state_dir` given) is deleted with its ledger.

    Keyword settings (each one field of the owner's TOML config, `mycroft owner serve`):
    `budget` ([budget] default_cap: distinct rows the trainer may ever receive, default 256),
    `queries` ([budget] default_queries), `max_rows_per_request`, `methods` and `allow_full`
    ([selection]), `device` and `threads` ([compute]), `listen` ([owner], default
    "127.0.0.1:0": any free loopback port); whole sections as dicts: `owner`, `limits`,
    `selection`, `compute`, `models`, `tls`. An unknown keyword is an error naming it.
    """

    def __init__(
        self,
        name: str,
        data_table: Mapping[str, Any],
        rows: Any | None,
        settings: Mapping[str, Any],
    ) -> None:
        """Use `from_arrays` or `from_source`."""
        from owner_node.config import parse_config
        from owner_node.server import serve

        settings = dict(settings)
        self.trainer_id: str = settings.pop("trainer_id", None) or DEFAULT_TRAINER_ID
        self.token: str = settings.pop("token", None) or secrets.token_urlsafe(24)
        made_dir = None
        if settings.get("state_dir") is None:
            made_dir = tempfile.mkdtemp(prefix=f"mycroft-owner-{_safe(name)}-")
        try:
            raw = OWNER_SETTINGS.apply(
                {
                    "owner": {"listen": "127.0.0.1:0"},
                    "data": dict(data_table),
                    "trainers": [{"id": self.trainer_id, "token": self.token}],
                },
                {**settings, "name": name, "state_dir": settings.get("state_dir") or made_dir},
            )
            config = OWNER_SETTINGS.validate(lambda: parse_config(raw))
            server = serve(config, rows)
        except BaseException:
            if made_dir is not None:
                shutil.rmtree(made_dir, ignore_errors=True)
            raise
        self.name: str = config.owner.name
        self.state_dir: Path = config.owner.state_dir
        self.address: str = _dial_address(config.owner.listen, server.port)
        self.rows: int = server.engine.info().row_count
        self._server: OwnerServer | None = server
        grace = config.owner.grace_seconds
        # Stops the server if the object is dropped without close() (or at interpreter exit).
        self._finalizer = weakref.finalize(self, _shut_down, server, grace, made_dir)

    @classmethod
    def from_arrays(
        cls,
        name: str,
        features: Any,
        labels: Any,
        *,
        class_names: Sequence[str] | None = None,
        row_ids: Any | None = None,
        budget: int | None = None,
        state_dir: str | Path | None = None,
        token: str | None = None,
        **settings: Any,
    ) -> Owner:
        """An owner serving in-memory rows: `features` (N, ...) numbers (images as (N, C, H, W),
        tables as (N, F)), `labels` (N,) class indices or names, `class_names` the classes in
        order (default: the sorted names, or "0".."max" for indices), `row_ids` unique integers
        (default 0..N-1). The trainer and every owner should give the same `class_names`."""
        rows = labeled_arrays(features, labels, class_names, row_ids, name)
        # The rows are handed to the server directly; this table is never opened.
        table = {"source": "arrays"}
        settings |= {"budget": budget, "state_dir": state_dir, "token": token}
        return cls(name, table, rows, settings)

    @classmethod
    def from_source(
        cls,
        name: str,
        source: str | Mapping[str, Any],
        *,
        budget: int | None = None,
        state_dir: str | Path | None = None,
        token: str | None = None,
        **settings: Any,
    ) -> Owner:
        """An owner serving a data source: a dict with the keys of the owner's `[data]` table
        (`{"source": "csv", "path": "rows.csv", "label_column": "label"}`, plus `split`,
        default "train"), or just a source's name (`"digits"`). Relative paths are taken from
        the working directory."""
        table = {"source": source} if isinstance(source, str) else source
        if not isinstance(table, Mapping):
            raise ConfigError(f"source: must be a data source's name or a dict, got {source!r}")
        table = {k: str(v) if isinstance(v, Path) else v for k, v in table.items()}
        settings |= {"budget": budget, "state_dir": state_dir, "token": token}
        return cls(name, table, None, settings)

    @property
    def closed(self) -> bool:
        return self._server is None

    def ledger(self) -> dict[str, Any]:
        """What this owner has revealed to its trainer: `budget` (cap, used, left, queries,
        queries_used, queries_left), `requests` and `queries` (oldest first, as `mycroft owner
        inspect --json` shows them) and `revealed_rows`, the sorted ids of every row sent."""
        from owner_node.ledger_report import trainer_ledger

        server = self._running()
        view = trainer_ledger(server.ledger, self.trainer_id)
        view["revealed_rows"] = sorted(server.ledger.revealed(self.trainer_id))
        return view

    def endpoint(self) -> dict[str, Any]:
        """How the trainer dials this owner: its `[[owners]]` table."""
        self._running()
        return {"name": self.name, "address": self.address, "token": self.token}

    def close(self) -> None:
        """Stop serving (in-flight calls get the config's grace period) and close the ledger;
        a state folder the owner made itself is deleted. Closing twice does nothing."""
        self._server = None
        self._finalizer()

    def _running(self) -> OwnerServer:
        if self._server is None:
            raise MycroftError(f"owner {self.name!r} is closed")
        return self._server

    def __enter__(self) -> Owner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"serving {self.rows} rows on {self.address}"
        return f"<mycroft.Owner {self.name!r} {state}>"


def _shut_down(server: OwnerServer, grace: float, made_dir: str | None) -> None:
    try:
        server.stop(grace).wait(grace + WAIT_AFTER_GRACE_SECONDS)
    finally:
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)


def _safe(name: str) -> str:
    """`name` fit for a temporary folder's name (the config checks the name itself)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))[:40]


def _dial_address(listen: str, port: int) -> str:
    """Where a client in this process reaches a server listening on `listen`."""
    from mycroft.addresses import split_host_port

    host, _ = split_host_port(listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RemoteOwner:
    """An owner node running elsewhere, for `mycroft.acquire`: its `[[owners]]` table in the
    trainer's config, checked now. `tls`: False (plaintext), True (TLS, the system's CA
    certificates) or a dict of the `[owners.tls]` fields (`ca_cert`, `client_cert`,
    `client_key`, `server_name`). `price` per row revealed appears in the verdict."""

    def __init__(
        self,
        name: str,
        address: str,
        token: str | None = None,
        *,
        tls: bool | Mapping[str, Any] = False,
        price: float | None = None,
        deadline_seconds: float | None = None,
    ) -> None:
        from mycroft.config_base import parse
        from trainer_node.config import OwnerEndpoint

        table: dict[str, Any] = {"name": name, "address": address, "token": token}
        table |= {"price": price, "deadline_seconds": deadline_seconds}
        if tls is True:
            table["tls"] = {}
        elif isinstance(tls, Mapping):
            table["tls"] = {k: str(v) if isinstance(v, Path) else v for k, v in tls.items()}
        elif tls is not False:
            raise ConfigError(f"tls: must be True, False or a dict of TLS fields, got {tls!r}")
        self._table = {k: v for k, v in table.items() if v is not None}
        parse(OwnerEndpoint, self._table)  # a problem now names the field: "address: ..."
        self.name, self.address = name, address

    def endpoint(self) -> dict[str, Any]:
        """How the trainer dials this owner: its `[[owners]]` table."""
        return dict(self._table)

    def __repr__(self) -> str:
        return f"<mycroft.RemoteOwner {self.name!r} at {self.address}>"
