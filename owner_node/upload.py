"""A model arriving at the owner in chunks (UploadModel): bounded while streaming, reserved on
disk first, verified (size, hash, structure, admission) before it is stored under its hash."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mycroft.errors import InvalidRequest
from owner_node.disk import Reservation
from owner_node.models import LoadedModel, trainer_key

if TYPE_CHECKING:
    from owner_node.models import ModelStore


class Upload:
    """A model arriving in chunks: bounded while streaming, verified before it is stored. Its
    declared size is reserved on disk first (DiskQuotaExceeded if it cannot fit); a model the
    trainer already has is only verified against the stream, never written twice."""

    def __init__(self, store: ModelStore, trainer: str, sha: str, total_size: int):
        self.store = store
        self.trainer = trainer
        self.sha = sha
        self.total_size = total_size
        self.received = 0
        self._hash = hashlib.sha256()
        self._target = store.path(trainer, sha)
        self._file: Any = None
        self._tmp: Path | None = None
        tkey = trainer_key(trainer)
        self._res: Reservation = store.disk.reserve_upload(tkey, sha, 0)  # protects the model
        target = self._target
        if target.is_file() and target.stat().st_size == total_size:  # stored: write nothing
            return
        store.disk.release_upload(self._res)
        self._res = store.disk.reserve_upload(tkey, sha, total_size)
        try:
            self._target.parent.mkdir(mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self._target.parent)
        except BaseException:
            store.disk.release_upload(self._res)
            raise
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")

    def add(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.total_size:
            raise InvalidRequest(
                "data", f"more bytes than the declared total_size {self.total_size}"
            )
        self._hash.update(chunk)
        if self._file is not None:
            self._file.write(chunk)

    def finish(self) -> LoadedModel:
        """Verify size, hash and content, then store under the hash. Returns the parsed model."""
        try:
            if self._file is not None:
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
            # Already stored: the same hash, so the same bytes as the stream.
            source = self._tmp if self._tmp is not None else self._target
            loaded = self.store._parse(self.trainer, self.sha, source.read_bytes())
            if self._tmp is not None:
                os.replace(self._tmp, self._target)
                _fsync_dir(self._target.parent)
            self.store.disk.commit_upload(self._res, self.total_size)
            return loaded
        finally:
            self.abort()

    def abort(self) -> None:
        """Idempotent: closes and deletes the temp file, releases the reservation."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self.store.disk.release_upload(self._res)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
