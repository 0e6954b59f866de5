"""Trainer models at the owner: per-trainer model files, parsed models, owner embeddings.

Models belong to the trainer that uploaded them: a model is stored as
state_dir/models/<trainer key>/<sha256>.safetensors, and only that trainer can see it
(`size`), select with it (`get`) or reuse its embeddings, so one trainer never learns what
another uploaded. A file is stored only after its hash, size, structure, fit to the owner's
data and the owner's admission policy are verified, and always via a temp file + rename, so a
crash never leaves a half-written model under a valid name. Owner embeddings are cached per
(trainer, model, data) on disk as .npy (read back with allow_pickle=False) and in memory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mycroft.data.base import LabeledData
from mycroft.errors import InvalidRequest, ModelFileError
from mycroft.files import write_atomic
from owner_node.admission import AdmissionPolicy, admit, input_bound_of
from owner_node.errors import ModelMismatch, ModelNotFound
from selection.base import Head

log = logging.getLogger("owner_node.models")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


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
    lock: threading.Lock = field(default_factory=threading.Lock)
    embeddings: np.ndarray | None = None  # (N, d) float32, the owner's rows
    cache: dict[str, Any] = field(default_factory=dict)  # per-model strategy caches (indexes)

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
        cache_size: int = 4,
        embed_batch_size: int = 256,
        admission: AdmissionPolicy | None = None,
    ):
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
        self._cache_size = cache_size
        self._loaded: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._load_locks: dict[tuple[str, str], threading.Lock] = {}

    def path(self, trainer: str, sha: str) -> Path:
        return self.dir / trainer_key(trainer) / f"{check_sha(sha)}.safetensors"

    def size(self, trainer: str, sha: str) -> int | None:
        """Size of `trainer`'s model `sha`, or None if that trainer has not uploaded it."""
        p = self.path(trainer, sha)
        return p.stat().st_size if p.is_file() else None

    def begin_upload(self, trainer: str, sha: str, total_size: int) -> Upload:
        check_sha(sha, "sha256")
        if total_size <= 0:
            raise InvalidRequest("total_size", "must be positive (set it on the first chunk)")
        if total_size > self.max_bytes:
            raise InvalidRequest(
                "total_size", f"{total_size} bytes exceeds the owner's limit of {self.max_bytes}"
            )
        return Upload(self, trainer, sha, total_size)

    def get(self, trainer: str, sha: str) -> LoadedModel:
        """`trainer`'s parsed model, from memory or disk; ModelNotFound if it never uploaded it."""
        check_sha(sha, "model_sha256")
        key = (trainer, sha)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one parse per model even if many requests arrive at once
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            p = self.path(trainer, sha)
            if not p.is_file():
                raise ModelNotFound(f"model_sha256: no model {sha[:12]}… here; upload it first")
            loaded = self._parse(trainer, sha, p.read_bytes())
            self.remember(loaded)
            return loaded

    def remember(self, loaded: LoadedModel) -> None:
        """Keep a parsed model in memory (LRU), so the next Select does not parse it again."""
        key = (loaded.trainer, loaded.sha256)
        with self._lock:
            self._loaded.setdefault(key, loaded)
            self._loaded.move_to_end(key)
            while len(self._loaded) > self._cache_size:
                self._loaded.popitem(last=False)

    def embeddings(self, loaded: LoadedModel) -> np.ndarray:
        """The owner's rows embedded with `loaded`: memory, then disk, then computed."""
        with loaded.lock:
            if loaded.embeddings is None:
                loaded.embeddings = self._embeddings(loaded)
            return loaded.embeddings

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
        from moe.train import embed_numpy

        emb = np.asarray(
            embed_numpy(loaded.model, self.data.features, batch_size=self.embed_batch_size),
            dtype=np.float32,
        )
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
        folder.mkdir(mode=0o700, exist_ok=True)
        write_atomic(path, lambda f: np.save(f, emb, allow_pickle=False), binary=True)
        return emb

    def embed(self, loaded: LoadedModel, features: np.ndarray) -> np.ndarray:
        """D_hard rows (raw mode) embedded with the model."""
        from moe.train import embed_numpy

        emb = np.asarray(
            embed_numpy(loaded.model, features, batch_size=self.embed_batch_size),
            dtype=np.float32,
        )
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
        return LoadedModel(sha, trainer, model, head, int(cfg.embed_dim), int(cfg.num_classes))


class Upload:
    """A model arriving in chunks: bounded while streaming, verified before it is stored."""

    def __init__(self, store: ModelStore, trainer: str, sha: str, total_size: int):
        self.store = store
        self.trainer = trainer
        self.sha = sha
        self.total_size = total_size
        self.received = 0
        self._hash = hashlib.sha256()
        folder = store.path(trainer, sha).parent
        folder.mkdir(mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=folder)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def add(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.total_size:
            raise InvalidRequest(
                "data", f"more bytes than the declared total_size {self.total_size}"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def finish(self) -> LoadedModel:
        """Verify size, hash and content, then store under the hash. Returns the parsed model."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self.received != self.total_size:
                raise InvalidRequest(
                    "total_size", f"declared {self.total_size} bytes, received {self.received}"
                )
            digest = self._hash.hexdigest()
            if digest != self.sha:
                raise InvalidRequest(
                    "sha256", f"declared {self.sha[:12]}…, received bytes hash to {digest[:12]}…"
                )
            loaded = self.store._parse(self.trainer, self.sha, self._tmp.read_bytes())
            target = self.store.path(self.trainer, self.sha)
            os.replace(self._tmp, target)
            _fsync_dir(target.parent)
            return loaded
        finally:
            self.abort()

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
