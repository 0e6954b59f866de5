"""scikit-learn's bundled 8x8 digits: the embedded default that works with no download."""

from __future__ import annotations

import numpy as np

from mycroft.data.base import LabeledData
from mycroft.errors import DataError

CLASS_NAMES = tuple(str(d) for d in range(10))
SPLIT_SEED = 20241008  # fixed: the split, and so every row id's split, never changes
TEST_FRACTION = 0.2


def _split_index(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified 80/20 split by a fixed seed, each side in ascending original order."""
    rng = np.random.default_rng(SPLIT_SEED)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n_test = int(round(len(rows) * TEST_FRACTION))
        test.append(rng.permutation(rows)[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return {"train": train_idx, "test": test_idx}


class Digits:
    """1,797 digit images as (N, 1, 8, 8) float32 in [0, 1]; splits "train" and "test".

    Row id = the image's index in scikit-learn's array, so ids are stable and never collide
    across splits.
    """

    splits: tuple[str, ...] = ("train", "test")
    class_names: tuple[str, ...] = CLASS_NAMES

    def __init__(self) -> None:
        self.name = "digits"

    def load(self, split: str = "train") -> LabeledData:
        if split not in self.splits:
            raise DataError(f"digits: no split {split!r} (splits: train, test)")
        from sklearn.datasets import load_digits  # deferred: sklearn import is slow

        bunch = load_digits()
        images = np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)
        labels = np.asarray(bunch.target, dtype=np.int64)
        idx = _split_index(labels)[split]
        return LabeledData(
            features=images[idx][:, None, :, :],
            labels=labels[idx],
            class_names=CLASS_NAMES,
            row_ids=idx.astype(np.int64),
            name=f"digits/{split}",
        )


SOURCES = {"digits": Digits}  # found by mycroft.data.registry
