"""Disk quota for trainer models and their cached embeddings under state_dir.

`DiskQuota` keeps an in-memory index of models/<trainer key>/<sha>.safetensors and
embeddings/<trainer key>/<sha>-<data fp>.npy (one scan at start, then updated on every write and
delete under one lock): bytes and last use per model, its embeddings counted with it. Uploads
reserve their declared size before the first byte is written (the temp file is real disk use);
least recently used models are evicted to make room, first the uploading trainer's own (its
quota), then anyone's (the owner's total). A model being uploaded or used by a running selection
is never evicted. Files are deleted under the lock, so the index and the disk never disagree.

The start-up scan also deletes what no owner will ever read: temp files of interrupted uploads
(.upload-*) and atomic writes (.<name>.*.tmp), files of an older layout (models/<sha>...), symlinks
and anything else unrecognised, embeddings of models no longer held or of other data. Symlinks
are removed, never followed, so nothing outside state_dir is touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from owner_node.errors import Busy, DiskQuotaExceeded

log = logging.getLogger("owner_node.disk")
MiB = 1024 * 1024
_TKEY = re.compile(r"^[0-9a-f]{24}$")
_MODEL = re.compile(r"^([0-9a-f]{64})\.safetensors$")
_EMB = re.compile(r"^([0-9a-f]{64})-([0-9a-f]{16})\.npy$")
Key = tuple[str, str]  # (trainer key, sha)


def _mib(n: int) -> str:
    return f"{n / MiB:.1f}"


@dataclass
class _Entry:
    model_bytes: int = 0  # 0 until the model file exists
    embeddings: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    reserved: int = 0  # uploads in progress (their temp files)
    last_used: float = 0.0
    busy: int = 0  # uploads in progress + running selections: never evicted while > 0

    @property
    def bytes(self) -> int:
        return self.model_bytes + sum(self.embeddings.values()) + self.reserved


@dataclass
class Reservation:
    key: Key
    nbytes: int
    open: bool = True


class DiskQuota:
    def __init__(
        self,
        models_dir: Path,
        emb_dir: Path,
        data_fp16: str,
        *,
        total_bytes: int,
        per_trainer_bytes: int,
        on_evict: Callable[[str, str], None] = lambda tkey, sha: None,
    ):
        self.models_dir, self.emb_dir = models_dir, emb_dir
        self.data_fp16 = data_fp16
        self.total_bytes, self.per_trainer_bytes = total_bytes, per_trainer_bytes
        self._on_evict = on_evict  # drops the evicted model's entries from the memory cache
        self._entries: dict[Key, _Entry] = {}
        self._lock = threading.Lock()
        self.evictions = 0

    # --- usage ---------------------------------------------------------------------------

    def usage(self, tkey: str | None = None) -> int:
        """Bytes used and reserved, of one trainer (by key) or of all."""
        with self._lock:
            return self._usage(tkey)

    def _usage(self, tkey: str | None) -> int:
        return sum(e.bytes for k, e in self._entries.items() if tkey is None or k[0] == tkey)

    def totals(self) -> tuple[int, int, int]:
        """(model files, their bytes, embedding files' bytes) on disk, for the metrics."""
        with self._lock:
            models = [e.model_bytes for e in self._entries.values() if e.model_bytes]
            embeddings = sum(sum(e.embeddings.values()) for e in self._entries.values())
        return len(models), sum(models), embeddings

    def touch(self, tkey: str, sha: str) -> None:
        """Mark a model used now (every get and upload); persisted as the file's mtime so the
        order survives a restart."""
        with self._lock:
            entry = self._entries.get((tkey, sha))
            if entry is None or not entry.model_bytes:
                return
            entry.last_used = time.time()
        with contextlib.suppress(OSError):
            os.utime(self.models_dir / tkey / f"{sha}.safetensors")

    @contextlib.contextmanager
    def busy(self, tkey: str, sha: str) -> Iterator[None]:
        """Protects a model from eviction while a selection uses it (re-entrant)."""
        with self._lock:
            self._entries.setdefault((tkey, sha), _Entry()).busy += 1
        try:
            yield
        finally:
            with self._lock:
                entry = self._entries[(tkey, sha)]
                entry.busy -= 1
                self._drop_if_empty((tkey, sha), entry)

    # --- uploads -------------------------------------------------------------------------

    def reserve_upload(self, tkey: str, sha: str, nbytes: int) -> Reservation:
        """Room for an upload's `nbytes`, evicting least recently used models as needed;
        DiskQuotaExceeded when it cannot fit. The model is protected until commit/release."""
        for quota, name in (
            (self.per_trainer_bytes, "per-trainer disk quota (owner.disk_quota_per_trainer_mib)"),
            (self.total_bytes, "disk quota (owner.disk_quota_mib)"),
        ):
            if nbytes > quota:
                raise DiskQuotaExceeded(
                    f"model of {_mib(nbytes)} MiB exceeds the owner's {name} of {_mib(quota)} "
                    "MiB; upload a smaller model or ask the owner to raise the quota"
                )
        key = (tkey, sha)
        with self._lock:
            problem = self._make_room(tkey, nbytes, keep=key, any_trainer=True)
            if problem:
                # Models in use now are evictable later: that is a retry (UNAVAILABLE), not
                # a refusal.
                later = self._fits(tkey, nbytes, key, any_trainer=True, in_use=True)
                raise (Busy if later else DiskQuotaExceeded)(
                    f"no room for a model of {_mib(nbytes)} MiB: {problem}; retry when the "
                    "running selections and uploads end, or ask the owner to raise the quota"
                )
            entry = self._entries.setdefault(key, _Entry())
            entry.reserved += nbytes
            entry.busy += 1
        return Reservation(key, nbytes)

    def commit_upload(self, res: Reservation, size: int) -> None:
        """The upload's file is in place under its name: count it instead of the reservation."""
        with self._lock:
            if not res.open:
                return
            entry = self._entries[res.key]
            entry.model_bytes, entry.last_used = size, time.time()
            self._close(res, entry)

    def release_upload(self, res: Reservation) -> None:
        with self._lock:
            if res.open:
                self._close(res, self._entries[res.key])

    def _close(self, res: Reservation, entry: _Entry) -> None:
        res.open = False
        entry.reserved -= res.nbytes
        entry.busy -= 1
        self._drop_if_empty(res.key, entry)

    # --- embeddings ----------------------------------------------------------------------

    def reserve_embeddings(self, tkey: str, sha: str, name: str, nbytes: int) -> bool:
        """Room for an embeddings file of `sha`, evicting only the same trainer's other models
        (a recomputable cache must never cost another trainer its model). False: keep the
        embeddings in memory only. The model must be on disk: never an orphan embeddings file."""
        key = (tkey, sha)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not entry.model_bytes:
                return False
            entry.embeddings.pop(name, None)  # replaced, not added
            problem = self._make_room(tkey, nbytes, keep=key, any_trainer=False)
            if problem:
                log.warning("embeddings of model %s kept in memory only: %s", sha[:12], problem)
                return False
            entry.embeddings[name] = nbytes
            return True

    def embeddings_written(self, tkey: str, sha: str, name: str, size: int | None) -> None:
        """The file's real size once written (None: the write failed, nothing on disk)."""
        with self._lock:
            entry = self._entries.get((tkey, sha))
            if entry is None:
                return
            if size is None:
                entry.embeddings.pop(name, None)
            else:
                entry.embeddings[name] = size

    # --- eviction ------------------------------------------------------------------------

    def _make_room(self, tkey: str, need: int, *, keep: Key, any_trainer: bool) -> str | None:
        """Evict LRU models until `need` more bytes fit both quotas; a reason when impossible.
        Checked first, so a request that cannot fit anyway evicts nothing."""

        own, scope = self._scopes(tkey, keep, any_trainer)
        if self._usage(tkey) - self._evictable(own) + need > self.per_trainer_bytes:
            return (
                f"your models use {_mib(self._usage(tkey))} MiB of the "
                f"{_mib(self.per_trainer_bytes)} MiB per-trainer disk quota "
                "(owner.disk_quota_per_trainer_mib) and not enough can be evicted now"
            )
        if self._usage(None) - self._evictable(scope) + need > self.total_bytes:
            # Never the other trainers' usage: that is theirs to know.
            return (
                f"the owner's disk quota of {_mib(self.total_bytes)} MiB "
                "(owner.disk_quota_mib) is full and not enough can be evicted now"
            )
        while self._usage(tkey) + need > self.per_trainer_bytes and self._evict_lru(own):
            pass
        while self._usage(None) + need > self.total_bytes and self._evict_lru(scope):
            pass
        return None

    @staticmethod
    def _scopes(
        tkey: str, keep: Key, any_trainer: bool
    ) -> tuple[Callable[[Key], bool], Callable[[Key], bool]]:
        """Which models may go: the trainer's own (its quota), and for the total quota."""

        def own(k: Key) -> bool:
            return k[0] == tkey and k != keep

        def scope(k: Key) -> bool:
            return k != keep if any_trainer else own(k)

        return own, scope

    def _fits(self, tkey: str, need: int, keep: Key, *, any_trainer: bool, in_use: bool) -> bool:
        """Whether `need` bytes would fit if every eligible model (`in_use`: busy ones too)
        were evicted."""
        own, scope = self._scopes(tkey, keep, any_trainer)
        return (
            self._usage(tkey) - self._evictable(own, in_use) + need <= self.per_trainer_bytes
            and self._usage(None) - self._evictable(scope, in_use) + need <= self.total_bytes
        )

    def _evictable(self, eligible: Callable[[Key], bool], in_use: bool = False) -> int:
        return sum(
            e.bytes for k, e in self._entries.items() if self._can_evict(k, e, eligible, in_use)
        )

    @staticmethod
    def _can_evict(
        key: Key, entry: _Entry, eligible: Callable[[Key], bool], in_use: bool = False
    ) -> bool:
        return eligible(key) and (in_use or entry.busy == 0) and entry.model_bytes > 0

    def _evict_lru(self, eligible: Callable[[Key], bool]) -> bool:
        victims = [
            (e.last_used, k) for k, e in self._entries.items() if self._can_evict(k, e, eligible)
        ]
        if not victims:
            return False
        self._evict(min(victims)[1])
        return True

    def _evict(self, key: Key) -> None:
        tkey, sha = key
        entry = self._entries.pop(key)
        _unlink(self.models_dir / tkey / f"{sha}.safetensors")
        folder = self.emb_dir / tkey
        for name in set(entry.embeddings) | {p.name for p in folder.glob(f"{sha}-*.npy")}:
            _unlink(folder / name)
        self.evictions += 1
        log.info("disk quota: evicted model %s (%s MiB)", sha[:12], _mib(entry.bytes))
        self._on_evict(tkey, sha)

    def _drop_if_empty(self, key: Key, entry: _Entry) -> None:
        if not (entry.bytes or entry.busy):
            self._entries.pop(key, None)

    # --- start-up ------------------------------------------------------------------------

    def scan(self) -> None:
        """Index what is on disk, delete what is not a model or embeddings file, then evict
        least recently used models until both quotas hold (they may have been lowered)."""
        removed: dict[str, list[int]] = {}
        models: dict[Key, os.stat_result] = {}
        embeddings: dict[Key, list[tuple[str, os.stat_result]]] = {}
        for root, pattern in ((self.models_dir, _MODEL), (self.emb_dir, _EMB)):
            if root.is_symlink() or not root.is_dir():
                log.warning("%s is not a directory inside state_dir; not scanned", root)
                continue
            for top in os.scandir(root):
                if not (top.is_dir(follow_symlinks=False) and _TKEY.match(top.name)):
                    _remove(top, removed)  # e.g. models/<sha>.safetensors, an older layout
                    continue
                for f in os.scandir(top.path):
                    m = pattern.match(f.name) if f.is_file(follow_symlinks=False) else None
                    if m is None or (pattern is _EMB and m.group(2) != self.data_fp16):
                        _remove(f, removed)
                    elif pattern is _MODEL:
                        models[(top.name, m.group(1))] = f.stat(follow_symlinks=False)
                    else:
                        embeddings.setdefault((top.name, m.group(1)), []).append(
                            (f.name, f.stat(follow_symlinks=False))
                        )
        for key, files in embeddings.items():
            for name, st in files:
                if key not in models:  # the model is gone: nothing can ever use these
                    _unlink(self.emb_dir / key[0] / name)
                    removed.setdefault("orphan embeddings", []).append(st.st_size)
        with self._lock:
            for key, st in models.items():
                entry = self._entries.setdefault(key, _Entry())
                entry.model_bytes, entry.last_used = st.st_size, st.st_mtime
                for name, est in embeddings.get(key, []):
                    entry.embeddings[name] = est.st_size
                    entry.last_used = max(entry.last_used, est.st_mtime)
            for tkey in {k[0] for k in self._entries}:
                self._make_room(tkey, 0, keep=("", ""), any_trainer=True)
        for what, sizes in sorted(removed.items()):
            log.warning("state dir: removed %d %s (%d bytes)", len(sizes), what, sum(sizes))
        log.info(
            "models on disk: %d, %s MiB of %s MiB",
            len(models),
            _mib(self.usage()),
            _mib(self.total_bytes),
        )


def _kind(name: str) -> str:
    if name.startswith(".upload-"):
        return "temp files of interrupted uploads"
    if name.startswith(".") and name.endswith(".tmp"):
        return "temp files of interrupted writes"
    return "unrecognised files"


def _remove(entry: os.DirEntry, removed: dict[str, list[int]]) -> None:
    """Delete a file, symlink (the link, never its target) or directory tree, counting bytes."""
    size = 0
    try:
        if entry.is_dir(follow_symlinks=False):
            for dirpath, _, files in os.walk(entry.path):  # os.walk never follows links
                size += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
            shutil.rmtree(entry.path)
        else:
            size = entry.stat(follow_symlinks=False).st_size
            os.unlink(entry.path)
    except OSError as e:
        log.warning("state dir: could not remove %s: %s", entry.path, e)
        return
    removed.setdefault(_kind(entry.name), []).append(size)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not delete %s: %s", path, e)
