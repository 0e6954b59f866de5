"""Trainer models at the owner: per-trainer model files, parsed models, owner embeddings.

Models belong to the trainer that uploaded them: a model is stored as
state_dir/models/<trainer key>/<sha256>.safetensors, and only that trainer can see it
(`size`), select with it (`get`) or reuse its embeddings, so one trainer never learns what
another uploaded. A file is stored only after its hash, size, structure, fit to the owner's
data and the owner's admission policy are verified, and always via a temp file + rename, so a
crash never leaves a half-written model under a valid name. Owner embeddings are cached per
(trainer, model, data) on disk as .npy (read back with allow_pickle=False) and in memory.

Memory: parsed models, embeddings and strategy caches (search indexes) share one byte-bounded
LRU (`owner_node.cache.ByteLRU`, selection.cache_mib). Disk: model and embeddings files are
bounded per trainer and in total (`owner_node.disk.DiskQuota`); least recently used models are
evicted, and a later Select with an evicted model gets NOT_FOUND ("upload it first").
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mycroft.data.base import LabeledData
from mycroft.errors import InvalidRequest, ModelFileError
from mycroft.files import write_atomic
from owner_node.admission import AdmissionPolicy, admit, input_bound_of
from owner_node.cache import ByteLRU, KeyedLocks, measured_nbytes
from owner_node.disk import DiskQuota
from owner_node.errors import ModelMismatch, ModelNotFound
from selection.base import Head

if TYPE_CHECKING:
    from owner_node.upload import Upload

log = logging.getLogger("owner_node.models")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
MiB = 1024 * 1024
_NPY_HEADER = 4096  # room reserved for an .npy header on top of the array's bytes


def check_sha(sha: str, field_name: str = "sha256") -> str:
    if not _SHA_RE.match(sha or ""):
        raise InvalidRequest(field_name, "must be 64 lowercase hex characters")
    return sha


def trainer_key(trainer: str) -> str:
    """A file-name-safe key per trainer id (ids may hold any printable character)."""
    return hashlib.sha256(trainer.encode()).hexdigest()[:24]


def data_fingerprint(data: LabeledData) -> str:
    """Identifies the owner's rows, so cached embeddings are never reused for other data."""
    h = hashlib.sha256()
    for arr in (data.row_ids, data.labels, data.features):
        a = np.ascontiguousarray(arr)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


@dataclass
class LoadedModel:
    """A parsed model plus the owner-side values derived from it (computed once, lazily)."""

    sha256: str
    trainer: str
    model: Any  # moe.model.MoEClassifier
    head: Head
    embed_dim: int
    num_classes: int
    nbytes: int = 0  # the model file's size: what the parsed model costs in the memory cache
    # This model's strategy caches (indexes) as held in the store's memory cache, read-only:
    # (method, cache key) -> cache. They live in the store so their bytes are bounded.
    cache: Mapping[tuple, Any] = field(default_factory=dict)

    @property
    def gradient_dim(self) -> int:
        return self.num_classes * (self.embed_dim + 1)


class ModelStore:
    def __init__(
        self,
        state_dir: Path,
        data: LabeledData,
        *,
        max_bytes: int,
        max_embed_dim: int,
        cache_bytes: int = 1024 * MiB,
        disk_quota_bytes: int = 4096 * MiB,
        disk_quota_per_trainer_bytes: int = 1024 * MiB,
        embed_batch_size: int = 256,
        admission: AdmissionPolicy | None = None,
        device: str = "cpu",
        threads: int = 1,
    ):
        """`device` ("cpu", "cuda:0"; resolved by the caller) and `threads` (intra-op CPU
        threads) are where and how the trainer's models run over rows."""
        self.dir = state_dir / "models"
        self.emb_dir = state_dir / "embeddings"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.emb_dir.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.admission = admission or AdmissionPolicy()
        # The one number about the rows that admission uses: max |x|, rounded up to a power of 2.
        self.input_bound = self.admission.input_bound or input_bound_of(data.features)
        self.data_fp = data_fingerprint(data)
        self.max_bytes = max_bytes
        self.max_embed_dim = max_embed_dim
        self.embed_batch_size = embed_batch_size
        self.device = device
        self.threads = threads
        # The last embedding pass over the owner's rows (seconds per step, rows/s, device):
        # logged, and read by bench/scale_owner.py. None until one ran.
        self.last_pass: dict[str, Any] | None = None
        # Keys hold only what changes the cached object: ("model", trainer, sha),
        # ("emb", trainer, sha, data fp), ("index", trainer, sha, method, cache key).
        self.cache: ByteLRU[tuple, Any] = ByteLRU(cache_bytes, on_evict=self._evicted)
        self._loading = KeyedLocks()  # one parse/embedding per key at a time
        self.disk = DiskQuota(
            self.dir,
            self.emb_dir,
            self.data_fp[:16],
            total_bytes=disk_quota_bytes,
            per_trainer_bytes=disk_quota_per_trainer_bytes,
            on_evict=self._dropped,
        )
        self.disk.scan()  # also deletes temp files of interrupted uploads and writes

    def path(self, trainer: str, sha: str) -> Path:
        return self.dir / trainer_key(trainer) / f"{check_sha(sha)}.safetensors"

    def size(self, trainer: str, sha: str) -> int | None:
        """Size of `trainer`'s model `sha`, or None if that trainer has not uploaded it."""
        try:
            size = self.path(trainer, sha).stat().st_size
        except FileNotFoundError:
            return None
        self.disk.touch(trainer_key(trainer), sha)  # asked about before a Select: keep it
        return size

    def begin_upload(self, trainer: str, sha: str, total_size: int) -> Upload:
        check_sha(sha, "sha256")
        if total_size <= 0:
            raise InvalidRequest("total_size", "must be positive (set it on the first chunk)")
        if total_size > self.max_bytes:
            raise InvalidRequest(
                "total_size", f"{total_size} bytes exceeds the owner's limit of {self.max_bytes}"
            )
        from owner_node.upload import Upload  # it calls back into this store

        return Upload(self, trainer, sha, total_size)

    def get(self, trainer: str, sha: str) -> LoadedModel:
        """`trainer`'s parsed model, from memory or disk; ModelNotFound if it never uploaded it
        (or it was evicted for disk space)."""
        check_sha(sha, "model_sha256")
        key = ("model", trainer, sha)
        loaded = self.cache.get(key)
        if loaded is None:
            with self._loading(key):  # one parse per model even if many requests arrive at once
                loaded = self.cache.get(key)
                if loaded is None:
                    try:
                        data = self.path(trainer, sha).read_bytes()
                    except FileNotFoundError:
                        raise ModelNotFound(
                            f"model_sha256: no model {sha[:12]}… here; upload it first"
                        ) from None
                    loaded = self._parse(trainer, sha, data)
                    self.remember(loaded)
        self.disk.touch(trainer_key(trainer), sha)
        return loaded

    def remember(self, loaded: LoadedModel) -> None:
        """Keep a parsed model in memory (LRU), so the next Select does not parse it again."""
        self.cache.setdefault(("model", loaded.trainer, loaded.sha256), loaded, loaded.nbytes)

    @contextlib.contextmanager
    def in_use(self, loaded: LoadedModel | None) -> Iterator[None]:
        """While a selection uses `loaded`, its files are never evicted for disk space."""
        if loaded is None:
            yield
            return
        with self.disk.busy(trainer_key(loaded.trainer), loaded.sha256):
            yield

    def strategy_cache(
        self, loaded: LoadedModel, method: str, key: Any, cache: Any, *, filled: bool = False
    ) -> Any:
        """The cached strategy cache (an index) for `loaded`, `method` and `key`, else `cache`,
        kept if it fits. Indexes fill lazily: call again with `filled=True` after the select to
        re-measure it (evicting LRU entries, or dropping it if it alone exceeds the budget)."""
        k = ("index", loaded.trainer, loaded.sha256, method, key)
        if filled:
            return self.cache.put(k, cache, measured_nbytes(cache))
        return self.cache.setdefault(k, cache, measured_nbytes(cache))

    def embeddings(self, loaded: LoadedModel) -> np.ndarray:
        """The owner's rows embedded with `loaded`: memory, then disk, then computed."""
        key = ("emb", loaded.trainer, loaded.sha256, self.data_fp)
        emb = self.cache.get(key)
        if emb is not None:
            return emb
        with self._loading(key), self.in_use(loaded):
            emb = self.cache.get(key)
            if emb is None:
                emb = self._embeddings(loaded)
                self.cache.put(key, emb, emb.nbytes)
            return emb

    def _evicted(self, key: tuple, value: Any) -> None:
        # Indexes pin the embeddings array they were built on (and would be rebuilt on a new
        # one): drop them with it, so no unaccounted array stays alive.
        if key[0] == "emb":
            self.cache.discard_where(lambda k: k[0] == "index" and k[1:3] == key[1:3])

    def _dropped(self, tkey: str, sha: str) -> None:
        """A model evicted from disk: forget it in memory too (running jobs keep theirs)."""
        self.cache.discard_where(lambda k: k[2] == sha and trainer_key(k[1]) == tkey)

    def _embeddings(self, loaded: LoadedModel) -> np.ndarray:
        n, d = len(self.data), loaded.embed_dim
        folder = self.emb_dir / trainer_key(loaded.trainer)
        path = folder / f"{loaded.sha256}-{self.data_fp[:16]}.npy"
        if path.is_file():
            try:
                emb = np.load(path, allow_pickle=False)
                if emb.shape == (n, d) and emb.dtype == np.float32 and np.isfinite(emb).all():
                    return emb
                log.warning("embedding cache %s has the wrong shape; recomputing", path.name)
            except (OSError, ValueError) as e:
                log.warning("embedding cache %s unreadable (%s); recomputing", path.name, e)
        started = time.perf_counter()
        emb = self._run_model(loaded, self.data.features)
        embed_seconds = time.perf_counter() - started
        if emb.shape != (n, d):
            raise ModelFileError(f"model embeds the owner's rows to {emb.shape}, expected {(n, d)}")
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            # Never an error the trainer could see: which rows overflow is a fact about private
            # rows. Such rows become the zero vector, as far from D_hard as a row can be.
            log.warning(
                "model %s embeds %d owner rows to NaN/inf; they are treated as zero vectors",
                loaded.sha256[:12],
                int(bad.sum()),
            )
            emb[bad] = 0.0
        started = time.perf_counter()
        self._write_cache(loaded, folder, path, emb)
        self._record_pass(loaded, n, embed_seconds, time.perf_counter() - started)
        return emb

    def _write_cache(self, loaded: LoadedModel, folder: Path, path: Path, emb: np.ndarray) -> None:
        tkey, sha = trainer_key(loaded.trainer), loaded.sha256
        if not self.disk.reserve_embeddings(tkey, sha, path.name, emb.nbytes + _NPY_HEADER):
            return  # no room (DiskQuota logs why) or the model was evicted: memory only
        size = None
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            write_atomic(path, lambda f: np.save(f, emb, allow_pickle=False), binary=True)
            size = path.stat().st_size
        except OSError as e:  # a cache: the Select goes on with the embeddings in memory
            log.warning("could not write embeddings %s: %s", path.name, e)
        finally:
            self.disk.embeddings_written(tkey, sha, path.name, size)

    def _record_pass(self, loaded: LoadedModel, rows: int, embed: float, write: float) -> None:
        self.last_pass = {
            "rows": rows,
            "device": self.device,
            "threads": self.threads,
            "batch_size": self.embed_batch_size,
            "embed_seconds": embed,
            "rows_per_second": rows / embed if embed > 0 else float("inf"),
            "cache_write_seconds": write,
        }
        log.info(
            "embedded %d rows with model %s on %s (%d threads, batch %d) in %.2fs "
            "(%.0f rows/s); cache written in %.2fs",
            *(rows, loaded.sha256[:12], self.device, self.threads, self.embed_batch_size),
            *(embed, self.last_pass["rows_per_second"], write),
            extra={"embedding_pass": self.last_pass},
        )

    def _run_model(self, loaded: LoadedModel, features: np.ndarray) -> np.ndarray:
        """Embeddings of `features` (float32) on the configured device and threads."""
        from moe.inference import embed_numpy

        return embed_numpy(
            loaded.model,
            features,
            batch_size=self.embed_batch_size,
            device=self.device,
            threads=self.threads,
        )

    def embed(self, loaded: LoadedModel, features: np.ndarray) -> np.ndarray:
        """D_hard rows (raw mode) embedded with the model."""
        emb = self._run_model(loaded, features)
        if not np.isfinite(emb).all():
            raise InvalidRequest("hard_set.raw.features", "the model embeds them to NaN/inf")
        return emb

    def _parse(self, trainer: str, sha: str, data: bytes) -> LoadedModel:
        """Parse and check a model against the owner's data shape and admission policy (never
        against the rows themselves); never unpickles."""
        from moe.io import model_from_bytes

        try:
            model = model_from_bytes(data)  # ModelFileError on a bad or hostile file
        except RecursionError:  # json.loads on a deeply nested header or config
            raise ModelFileError("model header or config JSON is nested too deeply") from None
        cfg = model.config
        problems = []
        if tuple(cfg.input_shape) != tuple(self.data.input_shape):
            problems.append(
                f"model input_shape {list(cfg.input_shape)} != owner rows "
                f"{list(self.data.input_shape)}"
            )
        if int(cfg.num_classes) != self.data.num_classes:
            problems.append(
                f"model has {cfg.num_classes} classes, owner data has {self.data.num_classes}"
            )
        elif tuple(cfg.class_names) != tuple(self.data.class_names):
            problems.append(
                f"model class_names {list(cfg.class_names)} != owner class_names "
                f"{list(self.data.class_names)} (labels are indices into them)"
            )
        if int(cfg.embed_dim) > self.max_embed_dim:
            problems.append(f"embed_dim {cfg.embed_dim} exceeds the limit {self.max_embed_dim}")
        if problems:
            raise ModelMismatch("model does not fit this owner: " + "; ".join(problems))
        weight, bias = model.head_weights()
        head = Head(
            weight=np.asarray(weight, dtype=np.float32), bias=np.asarray(bias, dtype=np.float32)
        )
        if head.weight.shape != (cfg.num_classes, cfg.embed_dim) or head.bias.shape != (
            cfg.num_classes,
        ):
            raise ModelFileError(
                f"head weights {head.weight.shape}/{head.bias.shape} do not match the config"
            )
        if not (np.isfinite(head.weight).all() and np.isfinite(head.bias).all()):
            raise ModelFileError("head weights contain NaN or infinity")
        admit(model, self.admission, self.input_bound)
        dims = int(cfg.embed_dim), int(cfg.num_classes)
        return LoadedModel(
            sha, trainer, model, head, *dims, len(data), self.cache.view(("index", trainer, sha))
        )
