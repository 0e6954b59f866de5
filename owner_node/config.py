"""The owner's TOML config, parsed into frozen dataclasses.

Every problem raises ConfigError naming the field (`trainers[1].token: ...`), so an operator
can fix the file without reading code. Relative paths are resolved against the config file's
directory, so a config works from any working directory.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mycroft.errors import ConfigError
from owner_node.admission import AdmissionPolicy, parse_admission

DEFAULT_QUERIES = 100  # computations over the owner's rows a trainer may ask for, by default
MIN_TOKEN_CHARS = 16  # shorter bearer tokens are guessable; refuse them at start-up
MiB = 1024 * 1024


@dataclass(frozen=True)
class OwnerSection:
    name: str
    listen: str = "127.0.0.1:50051"
    state_dir: Path = Path("owner-state")
    # A waiting Select costs an idle handler thread and little else, so the defaults queue
    # 64 selections (64 concurrent trainers, one call each) before answering UNAVAILABLE.
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


@dataclass(frozen=True)
class BudgetSection:
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


@dataclass(frozen=True)
class SelectionSection:
    methods: tuple[str, ...] | None = None  # None: every registered strategy except "full"
    allow_full: bool = False  # "full" reveals everything: evaluation only
    hide_class_counts: bool = False
    embed_batch_size: int = 256
    # Memory for parsed models, the owner's rows embedded with them, and search indexes;
    # least recently used entries are evicted beyond it.
    cache_mib: int = 1024


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


def load_config(path: str | os.PathLike[str]) -> OwnerConfig:
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(raw, base_dir=path.resolve().parent)


def parse_config(raw: Mapping[str, Any], base_dir: Path | None = None) -> OwnerConfig:
    """Validate a parsed TOML mapping. `base_dir` anchors relative paths (default: cwd)."""
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
    tls = _tls(raw["tls"], base) if "tls" in raw else None
    trainers = _trainers(raw.get("trainers", []), budget, base, tls)
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
    section = OwnerSection(
        name=name,
        listen=_str(t, "owner", "listen") or OwnerSection.listen,
        state_dir=_path(_str(t, "owner", "state_dir") or "owner-state", base),
        max_workers=_int(t, "owner", "max_workers", OwnerSection.max_workers, lo=1),
        selection_workers=_int(
            t, "owner", "selection_workers", OwnerSection.selection_workers, lo=1
        ),
        selection_queue=_int(t, "owner", "selection_queue", OwnerSection.selection_queue, lo=0),
        selections_per_trainer=_int(
            t, "owner", "selections_per_trainer", OwnerSection.selections_per_trainer, lo=1
        ),
        max_uploads=_int(t, "owner", "max_uploads", OwnerSection.max_uploads, lo=1),
        max_uploads_per_trainer=_int(
            t, "owner", "max_uploads_per_trainer", OwnerSection.max_uploads_per_trainer, lo=1
        ),
        stream_idle_seconds=_float(
            t, "owner", "stream_idle_seconds", OwnerSection.stream_idle_seconds, lo=0.1
        ),
        upload_seconds=_float(t, "owner", "upload_seconds", OwnerSection.upload_seconds, lo=1.0),
        reflection=_bool(t, "owner", "reflection", False),
        max_reflection_streams=_int(
            t, "owner", "max_reflection_streams", OwnerSection.max_reflection_streams, lo=1
        ),
        disk_quota_mib=_int(t, "owner", "disk_quota_mib", OwnerSection.disk_quota_mib, lo=1),
        disk_quota_per_trainer_mib=_int(
            t, "owner", "disk_quota_per_trainer_mib", OwnerSection.disk_quota_per_trainer_mib, lo=1
        ),
        grace_seconds=_float(t, "owner", "grace_seconds", 10.0, lo=0.0),
        health_listen=_str(t, "owner", "health_listen"),
    )
    if section.health_listen is not None:
        host = section.health_listen.rpartition(":")[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(
                f"owner.health_listen: {section.health_listen!r} must be on loopback "
                "(127.0.0.1, localhost or [::1]): it is plaintext"
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
        default_cap=_int(t, "budget", "default_cap", BudgetSection.default_cap, lo=0),
        max_rows_per_request=_int(t, "budget", "max_rows_per_request", 128, lo=1),
        default_queries=_int(t, "budget", "default_queries", DEFAULT_QUERIES, lo=0),
    )


def _limits(t: Mapping[str, Any]) -> LimitsSection:
    _no_unknown(t, "limits", set(LimitsSection.__dataclass_fields__))
    d = LimitsSection()
    return LimitsSection(
        **{name: _int(t, "limits", name, getattr(d, name), lo=1) for name in d.__dataclass_fields__}
    )


def _tls(t: Any, base: Path) -> TlsConfig:
    if not isinstance(t, Mapping):
        raise ConfigError("tls: must be a table")
    _no_unknown(t, "tls", {"cert", "key", "client_ca"})
    paths = {}
    for name in ("cert", "key", "client_ca"):
        value = _str(t, "tls", name, required=name != "client_ca")
        if value:
            p = _path(value, base)
            if not p.is_file():
                raise ConfigError(f"tls.{name}: file not found: {p}")
            paths[name] = p
    return TlsConfig(paths["cert"], paths["key"], paths.get("client_ca"))


def _trainers(
    items: Any, budget: BudgetSection, base: Path, tls: TlsConfig | None
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
        token = _token(t, where, base, required=not mutual)
        cert_cn = _str(t, where, "cert_cn") or (tid if mutual else None)
        cap = _int(t, where, "cap", budget.default_cap, lo=0)
        queries = _int(t, where, "queries", budget.default_queries, lo=0)
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
            token = p.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{where}.token_file: cannot read {p}: {e.strerror}") from None
    else:
        token = value
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(
            f"{where}.{key}: token must be at least {MIN_TOKEN_CHARS} characters, no spaces"
        )
    return token


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
        embed_batch_size=_int(t, "selection", "embed_batch_size", 256, lo=1),
        cache_mib=_int(t, "selection", "cache_mib", SelectionSection.cache_mib, lo=1),
    )


# --- small typed getters, each naming the field on error ---


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
    return value


def _int(t: Mapping[str, Any], where: str, key: str, default: int, lo: int) -> int:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}: must be an integer, got {value!r}")
    if value < lo:
        raise ConfigError(f"{where}.{key}: must be >= {lo}, got {value}")
    return value


def _float(t: Mapping[str, Any], where: str, key: str, default: float, lo: float) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}: must be a number, got {value!r}")
    if value < lo:
        raise ConfigError(f"{where}.{key}: must be >= {lo}, got {value}")
    return float(value)


def _bool(t: Mapping[str, Any], where: str, key: str, default: bool) -> bool:
    value = t.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: must be true or false, got {value!r}")
    return value


def _path(value: str, base: Path) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p).resolve()
