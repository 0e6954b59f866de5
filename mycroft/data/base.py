"""The one small interface every data source implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class LabeledData:
    """Rows, labels and a stable id per row.

    `features` is float32 of shape (N, *input_shape): images keep their (C, H, W) shape,
    tables are (N, F). Row ids are stable across loads of the same source, so an owner's
    ledger and a trainer's report can name rows without revealing them.
    """

    features: np.ndarray
    labels: np.ndarray  # (N,) int64, indices into class_names
    class_names: tuple[str, ...]
    row_ids: np.ndarray  # (N,) int64, unique
    name: str = "data"
    feature_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.features.shape[0] != n or self.row_ids.shape[0] != n:
            raise ValueError(
                f"{self.name}: features ({self.features.shape[0]}), labels ({n}) and "
                f"row_ids ({self.row_ids.shape[0]}) must have the same number of rows"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: np.ndarray, name: str | None = None) -> LabeledData:
        """Rows at `index` (positions or a boolean mask), ids kept."""
        return LabeledData(
            features=self.features[index],
            labels=self.labels[index],
            class_names=self.class_names,
            row_ids=self.row_ids[index],
            name=name or self.name,
            feature_names=self.feature_names,
        )


class DataSource(Protocol):
    """Anything that can load labelled rows. `split` is e.g. "train" or "test"."""

    name: str

    def load(self, split: str = "train") -> LabeledData: ...
