"""The owner's TOML config, declared as models on the one config layer (`mycroft.config_base`).

Every problem raises ConfigError naming the field (`trainers[1].token: ...`), so an operator
can fix the file without reading code. Relative paths are resolved against the config file's
directory, so a config works from any working directory. Every number is bounded on both
sides: the upper bounds are well past any sane deployment, small enough that a typo (an extra
zero or three) is refused instead of exhausting the machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mycroft import config_base
from mycroft.config_base import Bool, ConfigModel, Distinct, FieldProblem, Float, Int, RelPath
from mycroft.protocol import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_REQUEST_ID_CHARS
from owner_node.admission import AdmissionPolicy
from owner_node.compute import ComputeSection
from owner_node.config_fields import (
    Address,
    SecretText,
    StateDir,
    Text,
    check_health_listen,
    read_token,
)

DEFAULT_QUERIES = 100  # computations over the owner's rows a trainer may ask for, by default
MAX_ID_CHARS = 128  # trainer ids appear in logs and the ledger
MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_COUNT = 10**9  # rows or queries a budget can grant: far beyond any real use, fits SQLite
MAX_BUDGET = 10**7  # rows per Select, the most limits.max_budget may allow
DEFAULT_LISTEN = "127.0.0.1:50051"


class ListenSection(ConfigModel):
    """The addresses of `[owner]`: all a health probe reads of it."""

    listen: Address = DEFAULT_LISTEN
    # Plaintext health-only server with its own threads, so probes answer whatever the load;
    # loopback only. Needed to probe a TLS node; `mycroft owner health` uses it when set.
    health_listen: Address | None = None

    @model_validator(mode="after")
    def _health_on_loopback(self) -> ListenSection:
        check_health_listen(self.listen, self.health_listen)
        return self


class OwnerSection(ListenSection):
    name: Text
    state_dir: StateDir = Field("owner-state", validate_default=True)
    # A waiting Select costs an idle handler thread and little else, so the defaults queue
    # 64 selections (64 concurrent trainers, one call each) before answering UNAVAILABLE.
    # gRPC handler threads: >= every long call the limits below allow, plus 2 kept free
    max_workers: Int = Field(80, ge=1, le=1024)
    selection_workers: Int = Field(2, ge=1, le=256)  # threads running strategies
    # selections allowed to wait for a worker before UNAVAILABLE
    selection_queue: Int = Field(64, ge=0, le=4096)
    # Running + queued selections and model warm-ups one trainer may hold, so one trainer
    # cannot take every slot; the queue serves trainers in turn, not first come first served.
    selections_per_trainer: Int = Field(8, ge=1, le=4096)
    max_uploads: Int = Field(4, ge=1, le=256)  # model uploads in progress, all trainers
    max_uploads_per_trainer: Int = Field(1, ge=1, le=256)
    # A stream that makes no progress this long is cancelled: an upload waiting for its next
    # chunk, a Select waiting for the client to read rows, an idle reflection stream.
    stream_idle_seconds: Float = Field(30.0, ge=0.1, le=3600.0)  # at most an hour
    upload_seconds: Float = Field(300.0, ge=1.0, le=86400.0)  # one whole upload; a day at most
    # Server reflection (grpcurl, grpc_cli): off by default; when on, callers need the same
    # credentials as for the service, and at most `max_reflection_streams` are open at once.
    reflection: Bool = False
    max_reflection_streams: Int = Field(2, ge=1, le=64)
    # Model files and cached embeddings under state_dir, at most 16 TiB. Least recently used
    # models (and their embeddings) are evicted to make room; an upload that cannot fit is
    # refused.
    disk_quota_mib: Int = Field(4096, ge=1, le=16 * 1024 * 1024)
    disk_quota_per_trainer_mib: Int = Field(1024, ge=1, le=16 * 1024 * 1024)
    grace_seconds: Float = Field(10.0, ge=0.0, le=3600.0)  # in-flight calls get this at shutdown

    @property
    def long_calls(self) -> int:
        """Handler threads the limits let long calls (Selects, uploads, reflection) hold."""
        reflection = self.max_reflection_streams if self.reflection else 0
        return self.selection_workers + self.selection_queue + self.max_uploads + reflection

    @model_validator(mode="after")
    def _limits_fit(self) -> OwnerSection:
        # Each Select, upload and reflection stream holds a gRPC thread while it lasts; leave
        # threads free so Describe, HasModel and health checks answer when every limit is hit.
        if self.long_calls > self.max_workers - 2:
            raise FieldProblem(
                "max_workers",
                f"{self.max_workers} threads cannot serve the long calls the limits allow "
                "(selection_workers + selection_queue + max_uploads"
                f"{' + max_reflection_streams' if self.reflection else ''} = "
                f"{self.long_calls}) plus 2 kept free; raise it to {self.long_calls + 2}",
            )
        if self.disk_quota_per_trainer_mib > self.disk_quota_mib:
            raise FieldProblem(
                "disk_quota_per_trainer_mib",
                f"{self.disk_quota_per_trainer_mib} exceeds owner.disk_quota_mib "
                f"({self.disk_quota_mib})",
            )
        return self


class GrantDefaults(ConfigModel):
    """`[budget]`: what each trainer is granted unless its entry says otherwise, and the most
    rows one Select request may ask for."""

    default_cap: Int = Field(256, ge=0, le=MAX_COUNT)  # distinct rows a trainer may ever see
    # also at most limits.max_budget
    max_rows_per_request: Int = Field(128, ge=1, le=MAX_BUDGET)
    # Computations over the owner's rows (Selects, model warm-ups) any one trainer may ask for.
    # Each answer can depend on unrevealed rows through which rows it returns; the allowance
    # bounds how many such answers a trainer gets (SECURITY.md).
    default_queries: Int = Field(DEFAULT_QUERIES, ge=0, le=MAX_COUNT)


class TrainerGrant(ConfigModel):
    """One `[[trainers]]` entry: who may call, and what it is granted. Once parsed, `token`
    holds the token read from token / token_env / token_file (None without secrets or under
    mutual TLS), and cap/queries are set (the [budget] defaults where not given)."""

    id: Text = Field(max_length=MAX_ID_CHARS)
    token: SecretText | None = Field(None, repr=False)
    token_env: Text | None = None
    token_file: RelPath | None = None
    cap: Int | None = Field(None, ge=0, le=MAX_COUNT)  # distinct rows, ever
    cert_cn: Text | None = None  # client certificate common name (mutual TLS)
    queries: Int | None = Field(None, ge=0, le=MAX_COUNT)  # query allowance


class TlsConfig(ConfigModel):
    cert: RelPath
    key: RelPath
    client_ca: RelPath | None = None  # set -> mutual TLS required

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    @model_validator(mode="after")
    def _files_exist(self, info: ValidationInfo) -> TlsConfig:
        if (info.context or {}).get("secrets", True):
            config_base.require_files(self, ("cert", "key", "client_ca"))
        return self


class LimitsSection(ConfigModel):
    # A Select request (D_hard) as it arrives in chunks: Describe tells trainers this number,
    # and a larger request is refused (RESOURCE_EXHAUSTED, naming it) before it is read.
    # A protobuf message cannot exceed 2 GiB; half of that is plenty.
    max_request_bytes: Int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1, le=GiB)
    max_hard_rows: Int = Field(4096, ge=1, le=1_000_000)  # D_hard rows per Select
    max_embed_dim: Int = Field(4096, ge=1, le=65536)
    # Uploaded in chunks, so it may exceed one message.
    max_model_bytes: Int = Field(256 * MiB, ge=1, le=2 * GiB)
    # rows per Select, on top of budget.max_rows_per_request
    max_budget: Int = Field(10_000, ge=1, le=MAX_BUDGET)
    max_request_id_chars: Int = Field(DEFAULT_MAX_REQUEST_ID_CHARS, ge=1, le=4096)
    max_params: Int = Field(16, ge=1, le=256)
    # |value| of embedded D_hard: with owner embeddings bounded by the admission policy, no
    # product in the selection maths can overflow, so overflow cannot depend on private rows.
    # 1e30 times an embedding bounded by models.max_embedding (default 1e6) stays far inside
    # float32's 3.4e38.
    max_abs_hard_value: Int = Field(100_000_000, ge=1, le=10**30)


class SelectionSection(ConfigModel):
    methods: Annotated[tuple[Text, ...], Distinct] | None = (
        None  # None: every registered strategy but "full"
    )
    allow_full: Bool = False  # "full" reveals everything: evaluation only
    hide_class_counts: Bool = False
    # Rows per forward pass when the owner embeds rows ([compute] says where). 256-512 measured
    # fastest on the CPU (larger batches fall out of cache); a GPU wants more (4096+).
    embed_batch_size: Int = Field(256, ge=1, le=65536)
    # Memory for parsed models, the owner's rows embedded with them, and search indexes;
    # least recently used entries are evicted beyond it. At most 1 TiB.
    cache_mib: Int = Field(1024, ge=1, le=1024 * 1024)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw: Any) -> Any:
        if isinstance(raw, Mapping) and "model_cache" in raw:
            raise FieldProblem(
                "model_cache",
                "replaced by selection.cache_mib (memory for parsed models, embeddings and "
                "indexes, in MiB)",
            )
        return raw

    @model_validator(mode="after")
    def _methods(self) -> SelectionSection:
        methods = self.methods or ()
        if "full" in methods and not self.allow_full:
            raise FieldProblem(
                ("methods", methods.index("full")),
                '"full" reveals every row; set selection.allow_full = true (evaluation only)',
            )
        return self


class MetricsSection(ConfigModel):
    """`[metrics]`: Prometheus metrics over plain HTTP (owner_node/metrics.py lists them).

    Off by default, and on loopback unless `listen` says otherwise: the counts carry no rows,
    but a non-loopback address shows the owner's traffic to whoever can reach it (put it on a
    private network or behind a proxy that authenticates)."""

    enabled: Bool = False
    listen: Address = "127.0.0.1:9464"


class OwnerConfig(ConfigModel):
    # Declared in the order problems are reported: [budget] and [tls] before the trainers
    # that read them.
    owner: OwnerSection
    # spec for mycroft.data.open_source, plus "split"; read as `data` and `split`
    data_table: dict[str, Any] = Field(alias="data")
    budget: GrantDefaults = GrantDefaults()
    limits: LimitsSection = LimitsSection()
    tls: TlsConfig | None = None
    trainers: tuple[TrainerGrant, ...] = ()
    selection: SelectionSection = SelectionSection()
    compute: ComputeSection = ComputeSection()
    models: AdmissionPolicy = AdmissionPolicy()  # [models] admission
    metrics: MetricsSection = MetricsSection()
    _base_dir: Path | None = PrivateAttr(None)

    @property
    def data(self) -> dict[str, Any]:
        """The `[data]` table minus "split": a spec for mycroft.data.open_source."""
        return {k: v for k, v in self.data_table.items() if k != "split"}

    @property
    def split(self) -> str:
        return self.data_table.get("split", "train")

    @property
    def base_dir(self) -> Path | None:
        """The config file's folder: relative data paths are resolved against it."""
        return self._base_dir

    def trainer(self, trainer_id: str) -> TrainerGrant | None:
        return next((t for t in self.trainers if t.id == trainer_id), None)

    @field_validator("data_table")
    @classmethod
    def _data(cls, table: dict[str, Any]) -> dict[str, Any]:
        split = table.get("split", "train")
        if not isinstance(split, str) or not split:
            raise FieldProblem("split", "must be a non-empty string")
        if not isinstance(table.get("source"), str) or not table["source"]:
            raise FieldProblem("source", 'required (e.g. "npz", "digits", "csv")')
        return table

    @field_validator("trainers")
    @classmethod
    def _grants(
        cls, trainers: tuple[TrainerGrant, ...], info: ValidationInfo
    ) -> tuple[TrainerGrant, ...]:
        """Each trainer's grant completed from [budget], its token read (unless `secrets` is
        False in the context: `owner inspect` reads the ledger without them), and no id,
        token or certificate name given to two trainers."""
        if "budget" not in info.data or "tls" not in info.data:
            return trainers  # [budget] or [tls] is wrong, and reported first
        budget, tls = info.data["budget"], info.data["tls"]
        mutual = tls is not None and tls.mutual
        secrets = (info.context or {}).get("secrets", True)
        done = []
        for i, t in enumerate(trainers):
            given = {"token": t.token, "token_env": t.token_env, "token_file": t.token_file}
            update = {
                "token": read_token(given, not mutual, (i,)) if secrets else None,
                "cap": budget.default_cap if t.cap is None else t.cap,
                "queries": budget.default_queries if t.queries is None else t.queries,
                "cert_cn": t.cert_cn or (t.id if mutual else None),
            }
            done.append(t.model_copy(update=update))
        for attr in ("id", "token", "cert_cn"):
            seen: dict[Any, int] = {}
            for i, t in enumerate(done):
                value = getattr(t, attr)
                if value is None:
                    continue
                if value in seen:
                    raise FieldProblem((i, attr), f"same as trainers[{seen[value]}]")
                seen[value] = i
        return tuple(done)

    @model_validator(mode="after")
    def _request_fits_limits(self, info: ValidationInfo) -> OwnerConfig:
        if self.budget.max_rows_per_request > self.limits.max_budget:
            raise FieldProblem(
                ("budget", "max_rows_per_request"),
                f"{self.budget.max_rows_per_request} exceeds limits.max_budget "
                f"({self.limits.max_budget})",
            )
        self._base_dir = (info.context or {}).get("base_dir")
        return self


class _ProbeOwner(ListenSection):
    model_config = ConfigDict(extra="ignore")


class ProbeConfig(ConfigModel):
    """Only [owner].listen/health_listen and [tls] of an owner config: a health probe needs no
    trainer secrets, data or state, so their env vars and files need not exist where it runs."""

    model_config = ConfigDict(extra="ignore")
    owner: _ProbeOwner
    tls: dict[str, Any] | None = None


def load_config(path: str | os.PathLike[str], secrets: bool = True) -> OwnerConfig:
    return config_base.load(OwnerConfig, path, secrets=secrets)


def parse_config(
    raw: Mapping[str, Any], base_dir: Path | None = None, secrets: bool = True
) -> OwnerConfig:
    """Validate a parsed TOML mapping. `base_dir` anchors relative paths (default: cwd).

    `secrets=False` leaves trainer tokens unread (None) and TLS files unchecked: reading the
    ledger (`owner inspect`) must work where the trainers' secrets are not present."""
    return config_base.parse(OwnerConfig, raw, base_dir=base_dir, secrets=secrets)
