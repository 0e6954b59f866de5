"""NumPy .npz files: the exchange format between the simulation and each owner process.

Arrays: `features` (N, ...), `labels` (N,) ints or strings, optional `row_ids` (N,) ints
(default 0..N-1), `class_names` and `feature_names` (string arrays), `name` (0-d string).
Files are always opened with allow_pickle=False: object arrays are rejected, never unpickled.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from mycroft.data._checks import check_features, check_row_ids, encode_labels
from mycroft.data.base import LabeledData
from mycroft.errors import ConfigError, DataError
from mycroft.files import write_atomic


def _strings(arr: np.ndarray, where: str) -> tuple[str, ...]:
    if arr.dtype.kind not in "US" or arr.ndim != 1:
        raise DataError(f"{where}: must be a 1-D string array, got {arr.dtype} {arr.shape}")
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in arr.tolist())


def read_npz(path: Path) -> LabeledData:
    """One validated LabeledData from an .npz file; any problem is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: NPZ file not found")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as exc:  # object arrays need pickle: refused
                    raise DataError(f"{path}: array {key!r} cannot be loaded ({exc})") from None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable NPZ file ({type(exc).__name__}: {exc})") from None
    for required in ("features", "labels"):
        if required not in arrays:
            raise DataError(f"{path}: missing array {required!r} (has {sorted(arrays)})")
    features = arrays["features"]
    if features.ndim == 0 or features.shape[0] == 0:
        raise DataError(f"{path}: 'features' has no rows")
    features = check_features(features, f"{path}: 'features'")
    n = len(features)
    class_names = None
    if "class_names" in arrays:
        class_names = _strings(arrays["class_names"], f"{path}: 'class_names'")
        if len(set(class_names)) != len(class_names):
            raise DataError(f"{path}: 'class_names' are not distinct")
    labels, class_names = encode_labels(arrays["labels"], class_names, f"{path}: 'labels'")
    if len(labels) != n:
        raise DataError(f"{path}: {len(labels)} labels for {n} feature rows")
    if "row_ids" in arrays:
        row_ids = check_row_ids(arrays["row_ids"], n, f"{path}: 'row_ids'")
    else:
        row_ids = np.arange(n, dtype=np.int64)
    feature_names: tuple[str, ...] = ()
    if "feature_names" in arrays:
        feature_names = _strings(arrays["feature_names"], f"{path}: 'feature_names'")
        if feature_names and (features.ndim != 2 or len(feature_names) != features.shape[1]):
            raise DataError(
                f"{path}: {len(feature_names)} feature_names for features of shape {features.shape}"
            )
    name = path.stem
    if "name" in arrays and arrays["name"].dtype.kind in "US" and arrays["name"].ndim == 0:
        name = str(arrays["name"])
    return LabeledData(features, labels, class_names, row_ids, name, feature_names=feature_names)


def save_npz(data: LabeledData, path: str | os.PathLike[str], compress: bool = False) -> Path:
    """Write `data` so that NpzSource(path).load() gives it back exactly (dtypes, shape, ids,
    names). Written to a temporary file then renamed, so a reader never sees half a file."""
    path = Path(path)
    arrays = {
        "features": np.ascontiguousarray(data.features, dtype=np.float32),
        "labels": np.asarray(data.labels, dtype=np.int64),
        "row_ids": np.asarray(data.row_ids, dtype=np.int64),
        "class_names": np.asarray(data.class_names, dtype=np.str_),
        "feature_names": np.asarray(data.feature_names, dtype=np.str_).reshape(-1),
        "name": np.asarray(data.name, dtype=np.str_),
    }
    save = np.savez_compressed if compress else np.savez
    return write_atomic(path, lambda fh: save(fh, **arrays), binary=True)


class NpzSource:
    """Split "train" from `path`; split "test" from `test_path` when given."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        test_path: str | os.PathLike[str] | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ConfigError(f"path: must be a file path, got {type(path).__name__}")
        if test_path is not None and not isinstance(test_path, str | os.PathLike):
            raise ConfigError(f"test_path: must be a file path, got {type(test_path).__name__}")
        self.paths = {"train": Path(path).expanduser()}
        if test_path is not None:
            self.paths["test"] = Path(test_path).expanduser()
        self.splits: tuple[str, ...] = tuple(self.paths)
        self.name = name or self.paths["train"].stem

    def load(self, split: str = "train") -> LabeledData:
        if split not in self.paths:
            raise DataError(
                f"{self.paths['train']}: NPZ source has no split {split!r} "
                f"(splits: {', '.join(self.splits)}; give test_path for a test split)"
            )
        return read_npz(self.paths[split])


SOURCES = {"npz": NpzSource}  # found by mycroft.data.registry
