"""The owner's TOML config, parsed into frozen dataclasses.

Every problem raises ConfigError naming the field (`trainers[1].token: ...`), so an operator
can fix the file without reading code. Relative paths are resolved against the config file's
directory, so a config works from any working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mycroft.errors import ConfigError
from mycroft.files import read_toml
from owner_node.admission import AdmissionPolicy, parse_admission
from owner_node.config_fields import (
    _bool,
    _float,
    _int,
    _listen_addresses,
    _no_unknown,
    _path,
    _state_dir,
    _str,
    _table,
    _token,
)

DEFAULT_QUERIES = 100  # computations over the owner's rows a trainer may ask for, by default
MAX_ID_CHARS = 128  # trainer ids appear in logs and the ledger
MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_COUNT = 10**9  # rows or queries a budget can grant: far beyond any real use, fits SQLite


@dataclass(frozen=True)
class OwnerSection:
    name: str
    listen: str = "127.0.0.1:50051"
    state_dir: Path = Path("owner-state")
    # A waiting Select costs an idle handler thread and little else, so the defaults queue
    # 64 selections (64 concurrent trainers, one call each) before answering UNAVAILABLE.
    # Upper bounds (parse refuses more) are in `_OWNER_MAX`, next to the class.
    # gRPC handler threads: >= every long call the limits below allow, plus 2 kept free
    max_workers: int = 80
    selection_workers: int = 2  # threads running strategies, off the gRPC threads
    selection_queue: int = 64  # selections allowed to wait for a worker before UNAVAILABLE
    # Running + queued selections and model warm-ups one trainer may hold, so one trainer
    # cannot take every slot; the queue serves trainers in turn, not first come first served.
    selections_per_trainer: int = 8
    max_uploads: int = 4  # model uploads in progress, all trainers together
    max_uploads_per_trainer: int = 1
    # A stream that makes no progress this long is cancelled: an upload waiting for its next
    # chunk, a Select waiting for the client to read rows, an idle reflection stream.
    stream_idle_seconds: float = 30.0
    upload_seconds: float = 300.0  # one whole upload, however steady
    # Server reflection (grpcurl, grpc_cli): off by default; when on, callers need the same
    # credentials as for the service, and at most `max_reflection_streams` are open at once.
    reflection: bool = False
    max_reflection_streams: int = 2
    # Model files and cached embeddings under state_dir. Least recently used models (and
    # their embeddings) are evicted to make room; an upload that cannot fit is refused.
    disk_quota_mib: int = 4096
    disk_quota_per_trainer_mib: int = 1024
    grace_seconds: float = 10.0  # in-flight calls get this long at shutdown
    # Plaintext health-only server with its own threads, so probes answer whatever the load;
    # loopback only. Needed to probe a TLS node; `mycroft owner health` uses it when set.
    health_listen: str | None = None

    @property
    def long_calls(self) -> int:
        """Handler threads the limits let long calls (Selects, uploads, reflection) hold."""
        reflection = self.max_reflection_streams if self.reflection else 0
        return self.selection_workers + self.selection_queue + self.max_uploads + reflection


# Largest accepted value of each numeric [owner] field: well past any sane deployment, small
# enough that a typo (an extra zero or three) is refused instead of exhausting the machine.
_OWNER_MAX: dict[str, int | float] = dict(
    max_workers=1024,  # threads
    selection_workers=256,
    selection_queue=4096,
    selections_per_trainer=4096,
    max_uploads=256,
    max_uploads_per_trainer=256,
    max_reflection_streams=64,
    stream_idle_seconds=3600.0,  # an hour
    upload_seconds=86400.0,  # a day
    grace_seconds=3600.0,
    disk_quota_mib=16 * 1024 * 1024,  # 16 TiB
    disk_quota_per_trainer_mib=16 * 1024 * 1024,
)


@dataclass(frozen=True)
class BudgetSection:
    # default_cap, default_queries and trainers[i].cap/queries: at most MAX_COUNT;
    # max_rows_per_request: at most limits.max_budget.
    default_cap: int = 256  # distinct rows any one trainer may ever see
    max_rows_per_request: int = 128
    # Computations over the owner's rows (Selects, model warm-ups) any one trainer may ask for.
    # Each answer can depend on unrevealed rows through which rows it returns; the allowance
    # bounds how many such answers a trainer gets (SECURITY.md).
    default_queries: int = DEFAULT_QUERIES


@dataclass(frozen=True)
class TrainerConfig:
    id: str
    token: str | None  # resolved from token / token_env / token_file
    cap: int
    cert_cn: str | None = None  # client certificate common name (mutual TLS)
    queries: int = DEFAULT_QUERIES  # query allowance


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set -> mutual TLS required

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None


@dataclass(frozen=True)
class LimitsSection:
    max_request_bytes: int = 64 * MiB  # one gRPC message
    max_hard_rows: int = 4096  # D_hard rows per Select
    max_embed_dim: int = 4096
    max_model_bytes: int = 256 * MiB
    max_budget: int = 10_000  # rows per Select, on top of budget.max_rows_per_request
    max_request_id_chars: int = 128
    max_params: int = 16
    # |value| of embedded D_hard: with owner embeddings bounded by the admission policy, no
    # product in the selection maths can overflow, so overflow cannot depend on private rows.
    max_abs_hard_value: int = 100_000_000


# Largest accepted value of each [limits] field.
_LIMITS_MAX: dict[str, int] = dict(
    max_request_bytes=GiB,  # gRPC messages cannot exceed 2 GiB; half of that is plenty
    max_model_bytes=2 * GiB,  # uploaded in chunks, so it may exceed one message
    max_hard_rows=1_000_000,
    max_embed_dim=65536,
    max_budget=10**7,
    max_request_id_chars=4096,
    max_params=256,
    # 1e30 times an embedding bounded by models.max_embedding (default 1e6) stays far inside
    # float32's 3.4e38.
    max_abs_hard_value=10**30,
)


@dataclass(frozen=True)
class SelectionSection:
    methods: tuple[str, ...] | None = None  # None: every registered strategy except "full"
    allow_full: bool = False  # "full" reveals everything: evaluation only
    hide_class_counts: bool = False
    embed_batch_size: int = 256  # at most 65536 rows per forward pass
    # Memory for parsed models, the owner's rows embedded with them, and search indexes;
    # least recently used entries are evicted beyond it.
    cache_mib: int = 1024  # at most 1 TiB


@dataclass(frozen=True)
class OwnerConfig:
    owner: OwnerSection
    data: Mapping[str, Any]  # spec for mycroft.data.open_source, minus "split"
    split: str = "train"
    budget: BudgetSection = field(default_factory=BudgetSection)
    trainers: tuple[TrainerConfig, ...] = ()
    tls: TlsConfig | None = None
    limits: LimitsSection = field(default_factory=LimitsSection)
    selection: SelectionSection = field(default_factory=SelectionSection)
    models: AdmissionPolicy = field(default_factory=AdmissionPolicy)  # [models] admission
    base_dir: Path | None = None  # relative data paths are resolved against it

    def trainer(self, trainer_id: str) -> TrainerConfig | None:
        return next((t for t in self.trainers if t.id == trainer_id), None)


def load_config(path: str | os.PathLike[str], secrets: bool = True) -> OwnerConfig:
    raw = read_toml(path)
    return parse_config(raw, base_dir=Path(path).resolve().parent, secrets=secrets)


def parse_config(
    raw: Mapping[str, Any], base_dir: Path | None = None, secrets: bool = True
) -> OwnerConfig:
    """Validate a parsed TOML mapping. `base_dir` anchors relative paths (default: cwd).

    `secrets=False` leaves trainer tokens unread (None) and TLS files unchecked: reading the
    ledger (`owner inspect`) must work where the trainers' secrets are not present."""
    base = base_dir or Path.cwd()
    _no_unknown(
        raw, "", {"owner", "data", "budget", "trainers", "tls", "limits", "selection", "models"}
    )
    owner = _owner(_table(raw, "owner", required=True), base)
    data = dict(_table(raw, "data", required=True))
    split = data.pop("split", "train")
    if not isinstance(split, str) or not split:
        raise ConfigError("data.split: must be a non-empty string")
    if not isinstance(data.get("source"), str) or not data["source"]:
        raise ConfigError('data.source: required (e.g. "npz", "digits", "csv")')
    budget = _budget(_table(raw, "budget"))
    limits = _limits(_table(raw, "limits"))
    tls = _tls(raw["tls"], base, secrets) if "tls" in raw else None
    trainers = _trainers(raw.get("trainers", []), budget, base, tls, secrets)
    selection = _selection(_table(raw, "selection"))
    models = parse_admission(_table(raw, "models"))
    if budget.max_rows_per_request > limits.max_budget:
        raise ConfigError(
            f"budget.max_rows_per_request: {budget.max_rows_per_request} exceeds "
            f"limits.max_budget ({limits.max_budget})"
        )
    return OwnerConfig(owner, data, split, budget, trainers, tls, limits, selection, models, base)


def _owner(t: Mapping[str, Any], base: Path) -> OwnerSection:
    _no_unknown(t, "owner", set(OwnerSection.__dataclass_fields__))
    name = _str(t, "owner", "name", required=True)
    d = OwnerSection(name=name)

    def count(key: str, lo: int) -> int:
        return _int(t, "owner", key, getattr(d, key), lo=lo, hi=int(_OWNER_MAX[key]))

    def seconds(key: str, lo: float) -> float:
        return _float(t, "owner", key, getattr(d, key), lo=lo, hi=_OWNER_MAX[key])

    listen, health_listen = _listen_addresses(t, OwnerSection.listen)
    section = OwnerSection(
        name=name,
        listen=listen,
        state_dir=_state_dir(_str(t, "owner", "state_dir") or "owner-state", base),
        max_workers=count("max_workers", 1),
        selection_workers=count("selection_workers", 1),
        selection_queue=count("selection_queue", 0),
        selections_per_trainer=count("selections_per_trainer", 1),
        max_uploads=count("max_uploads", 1),
        max_uploads_per_trainer=count("max_uploads_per_trainer", 1),
        stream_idle_seconds=seconds("stream_idle_seconds", 0.1),
        upload_seconds=seconds("upload_seconds", 1.0),
        reflection=_bool(t, "owner", "reflection", False),
        max_reflection_streams=count("max_reflection_streams", 1),
        disk_quota_mib=count("disk_quota_mib", 1),
        disk_quota_per_trainer_mib=count("disk_quota_per_trainer_mib", 1),
        grace_seconds=seconds("grace_seconds", 0.0),
        health_listen=health_listen,
    )
    # Each Select, upload and reflection stream holds a gRPC thread while it lasts; leave
    # threads free so Describe, HasModel and health checks answer even when every limit is hit.
    if section.long_calls > section.max_workers - 2:
        raise ConfigError(
            f"owner.max_workers: {section.max_workers} threads cannot serve the long calls the "
            f"limits allow (selection_workers + selection_queue + max_uploads"
            f"{' + max_reflection_streams' if section.reflection else ''} = "
            f"{section.long_calls}) plus 2 kept free; raise it to {section.long_calls + 2}"
        )
    if section.disk_quota_per_trainer_mib > section.disk_quota_mib:
        raise ConfigError(
            f"owner.disk_quota_per_trainer_mib: {section.disk_quota_per_trainer_mib} exceeds "
            f"owner.disk_quota_mib ({section.disk_quota_mib})"
        )
    return section


def _budget(t: Mapping[str, Any]) -> BudgetSection:
    _no_unknown(t, "budget", set(BudgetSection.__dataclass_fields__))
    return BudgetSection(
        default_cap=_int(t, "budget", "default_cap", BudgetSection.default_cap, 0, MAX_COUNT),
        # bounded again by limits.max_budget once [limits] is read
        max_rows_per_request=_int(
            t, "budget", "max_rows_per_request", 128, lo=1, hi=_LIMITS_MAX["max_budget"]
        ),
        default_queries=_int(t, "budget", "default_queries", DEFAULT_QUERIES, 0, MAX_COUNT),
    )


def _limits(t: Mapping[str, Any]) -> LimitsSection:
    _no_unknown(t, "limits", set(LimitsSection.__dataclass_fields__))
    d = LimitsSection()
    return LimitsSection(
        **{
            name: _int(t, "limits", name, getattr(d, name), lo=1, hi=_LIMITS_MAX[name])
            for name in d.__dataclass_fields__
        }
    )


def _tls(t: Any, base: Path, check_files: bool = True) -> TlsConfig:
    if not isinstance(t, Mapping):
        raise ConfigError("tls: must be a table")
    _no_unknown(t, "tls", {"cert", "key", "client_ca"})
    paths = {}
    for name in ("cert", "key", "client_ca"):
        value = _str(t, "tls", name, required=name != "client_ca")
        if value:
            p = _path(value, base)
            if check_files and not p.is_file():
                raise ConfigError(f"tls.{name}: file not found: {p}")
            paths[name] = p
    return TlsConfig(paths["cert"], paths["key"], paths.get("client_ca"))


def _trainers(
    items: Any, budget: BudgetSection, base: Path, tls: TlsConfig | None, secrets: bool = True
) -> tuple[TrainerConfig, ...]:
    if not isinstance(items, list):
        raise ConfigError("trainers: must be an array of tables ([[trainers]])")
    mutual = tls is not None and tls.mutual
    out: list[TrainerConfig] = []
    for i, t in enumerate(items):
        where = f"trainers[{i}]"
        if not isinstance(t, Mapping):
            raise ConfigError(f"{where}: must be a table")
        _no_unknown(
            t, where, {"id", "token", "token_env", "token_file", "cap", "cert_cn", "queries"}
        )
        tid = _str(t, where, "id", required=True)
        if len(tid) > MAX_ID_CHARS:  # _str refused control characters
            raise ConfigError(f"{where}.id: must be at most {MAX_ID_CHARS} characters")
        token = _token(t, where, base, required=not mutual) if secrets else None
        cert_cn = _str(t, where, "cert_cn") or (tid if mutual else None)
        cap = _int(t, where, "cap", budget.default_cap, lo=0, hi=MAX_COUNT)
        queries = _int(t, where, "queries", budget.default_queries, lo=0, hi=MAX_COUNT)
        out.append(TrainerConfig(tid, token, cap, cert_cn, queries))
    for attr, label in (("id", "id"), ("token", "token"), ("cert_cn", "cert_cn")):
        seen: dict[Any, int] = {}
        for i, tr in enumerate(out):
            value = getattr(tr, attr)
            if value is None:
                continue
            if value in seen:
                raise ConfigError(f"trainers[{i}].{label}: same as trainers[{seen[value]}]")
            seen[value] = i
    return tuple(out)


def _selection(t: Mapping[str, Any]) -> SelectionSection:
    if "model_cache" in t:
        raise ConfigError(
            "selection.model_cache: replaced by selection.cache_mib (memory for parsed models, "
            "embeddings and indexes, in MiB)"
        )
    _no_unknown(t, "selection", set(SelectionSection.__dataclass_fields__))
    allow_full = _bool(t, "selection", "allow_full", False)
    methods = t.get("methods")
    if methods is not None:
        if not isinstance(methods, list) or not all(isinstance(m, str) and m for m in methods):
            raise ConfigError("selection.methods: must be a list of method names")
        if len(set(methods)) != len(methods):
            raise ConfigError("selection.methods: lists a method twice")
        if "full" in methods and not allow_full:
            raise ConfigError(
                f'selection.methods[{methods.index("full")}]: "full" reveals every row; '
                "set selection.allow_full = true (evaluation only)"
            )
        methods = tuple(methods)
    return SelectionSection(
        methods=methods,
        allow_full=allow_full,
        hide_class_counts=_bool(t, "selection", "hide_class_counts", False),
        embed_batch_size=_int(t, "selection", "embed_batch_size", 256, lo=1, hi=65536),
        cache_mib=_int(t, "selection", "cache_mib", SelectionSection.cache_mib, 1, 1024 * 1024),
    )
