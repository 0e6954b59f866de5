"""What a strategy reads and returns: the trainer's head, the owner's candidates, D_hard, and
the selection result. Plain data; `_contract` checks them and `base` runs strategies on them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Head:
    """The trainer model's last linear layer: logits = embeddings @ weight.T + bias."""

    weight: np.ndarray  # (C, d) float32
    bias: np.ndarray  # (C,) float32

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class Candidates:
    """The owner's rows, as the strategies see them.

    `embeddings` are the trainer model's penultimate vectors for the owner's rows (or a fixed
    encoder both sides agreed on). `features` are the raw rows, needed only by tabular binning.
    """

    row_ids: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) int64
    embeddings: np.ndarray | None = None  # (N, d) float32
    features: np.ndarray | None = None  # (N, F) float32

    def __len__(self) -> int:
        return len(self.row_ids)


@dataclass
class HardSet:
    """D_hard as the owner receives it: embeddings and/or last-layer gradients, and labels.

    In the privacy-preserving mode only `embeddings` and `gradients` arrive; in raw mode the
    owner computes them itself from the raw rows with the uploaded model.
    """

    labels: np.ndarray  # (M,) int64
    embeddings: np.ndarray | None = None  # (M, d) float32
    gradients: np.ndarray | None = None  # (M, C*(d+1)) float32: [g_b, vec(g_W)]
    features: np.ndarray | None = None  # (M, F) raw rows, for binning

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SelectionResult:
    """Ordered owner row ids (best first), one score each, and what happened on the way."""

    row_ids: np.ndarray  # (K,) int64, K <= budget, distinct
    scores: np.ndarray  # (K,) float32
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    missing_classes: list[int] = field(default_factory=list)  # D_hard classes the owner lacks
    shortfall_reason: str | None = None  # why fewer than `budget` rows, when so
    # rows a strategy added by a fallback rule rather than its own criterion (gradient and
    # funcfeat: filled by feature distance after OMP stopped early); they rank last
    fallback_rows: int = 0
