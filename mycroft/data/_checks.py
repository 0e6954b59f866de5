"""Validation shared by the file-backed sources: every failure names the file, field and row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mycroft.errors import ConfigError, DataError


def as_class_names(value: object, field: str) -> tuple[str, ...] | None:
    """A config-supplied class-name list, checked: distinct non-empty strings, or None."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{field}: must be a list of class names")
    names = tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{field}: must be a non-empty list of non-empty strings")
    if len(set(names)) != len(names):
        raise ConfigError(f"{field}: class names must be distinct")
    return names


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def encode_labels(
    values: Sequence[object] | np.ndarray,
    class_names: tuple[str, ...] | None,
    where: str,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels as class indices, and the class names they index.

    Integer labels are indices (names "0".."max" unless given). String labels are looked up
    in `class_names`, else the sorted distinct strings become the names; strings that all
    parse as integers are treated as indices, so "10" sorts after "9".
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            raise DataError(f"{where}, row {int(bad[0])}: label {arr[bad[0]]!r} is not a class")
        arr = arr.astype(np.int64)
    if arr.dtype.kind in "iub":
        idx = arr.astype(np.int64)
    elif arr.dtype.kind in "USO":
        texts = [v.decode() if isinstance(v, bytes) else v for v in arr.tolist()]
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"{where}, row {i}: missing label")
        texts = [t.strip() for t in texts]
        if class_names is not None:
            lookup = {n: i for i, n in enumerate(class_names)}
            out = np.empty(len(texts), dtype=np.int64)
            for i, t in enumerate(texts):
                if t in lookup:
                    out[i] = lookup[t]
                elif (k := _parse_int(t)) is not None:
                    out[i] = k  # range-checked below
                else:
                    raise DataError(
                        f"{where}, row {i}: label {t!r} is not one of the class names "
                        f"{list(class_names)}"
                    )
            idx = out
        else:
            ints = [_parse_int(t) for t in texts]
            if all(k is not None for k in ints):
                idx = np.asarray(ints, dtype=np.int64)
            else:
                names = tuple(sorted(set(texts)))
                lookup = {n: i for i, n in enumerate(names)}
                return np.asarray([lookup[t] for t in texts], dtype=np.int64), names
    else:
        raise DataError(f"{where}: labels have unsupported dtype {arr.dtype}")
    if class_names is None:
        if idx.size and idx.min() < 0:
            bad = int(np.flatnonzero(idx < 0)[0])
            raise DataError(f"{where}, row {bad}: negative label {int(idx[bad])}")
        class_names = tuple(str(i) for i in range(int(idx.max()) + 1 if idx.size else 0))
    bad_rows = np.flatnonzero((idx < 0) | (idx >= len(class_names)))
    if bad_rows.size:
        r = int(bad_rows[0])
        raise DataError(
            f"{where}, row {r}: label {int(idx[r])} is outside 0..{len(class_names) - 1}"
        )
    return idx, class_names


def check_features(features: np.ndarray, where: str) -> np.ndarray:
    """Numeric, finite, at least 2-D features as float32."""
    if features.dtype.kind not in "biuf":
        raise DataError(f"{where}: features have non-numeric dtype {features.dtype}")
    if features.ndim < 2:
        raise DataError(f"{where}: features must be (N, ...) with N rows, got {features.shape}")
    out = features.astype(np.float32, copy=False)
    finite = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{where}, row {r}: feature value is NaN or infinite")
    return out


def check_row_ids(row_ids: np.ndarray, n: int, where: str) -> np.ndarray:
    if row_ids.dtype.kind not in "iu" or row_ids.shape != (n,):
        raise DataError(
            f"{where}: row_ids must be {n} integers, got {row_ids.dtype} {row_ids.shape}"
        )
    ids = row_ids.astype(np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if uniq.size != n:
        dup = int(uniq[counts > 1][0])
        raise DataError(f"{where}: row id {dup} appears more than once")
    return ids
