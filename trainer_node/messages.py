"""Plain dataclasses for what the trainer sends to and gets from an owner.

The client converts protobufs into these at the boundary, so the rest of the trainer never
touches generated message types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mycroft.v1 import owner_pb2 as pb


@dataclass(frozen=True)
class BudgetInfo:
    cap: int
    used: int
    left: int
    queries: int = 0  # query allowance: each Select that computes (and each warm-up) is one
    queries_used: int = 0
    queries_left: int = 0

    @staticmethod
    def from_pb(b: pb.Budget) -> BudgetInfo:
        return BudgetInfo(
            int(b.cap),
            int(b.used),
            int(b.left),
            int(b.queries),
            int(b.queries_used),
            int(b.queries_left),
        )


@dataclass(frozen=True)
class OwnerInfo:
    protocol_version: str
    owner_name: str
    class_names: tuple[str, ...]
    row_count: int
    input_shape: tuple[int, ...]
    feature_names: tuple[str, ...]
    methods: tuple[str, ...]
    class_counts: tuple[int, ...]
    trainer_id: str
    budget: BudgetInfo


@dataclass(frozen=True)
class ModelStatusInfo:
    sha256: str
    present: bool
    size: int


@dataclass(frozen=True)
class RawHard:
    """D_hard-shared as raw rows (the owner embeds them with the uploaded model)."""

    features: np.ndarray  # (M, *input_shape) float32
    labels: np.ndarray  # (M,) int64


@dataclass(frozen=True)
class EmbeddedHard:
    """D_hard-shared as embeddings + last-layer gradients: the privacy-preserving mode."""

    embeddings: np.ndarray  # (M, d) float32
    gradients: np.ndarray  # (M, C*(d+1)) float32
    labels: np.ndarray  # (M,) int64


@dataclass(frozen=True)
class SelectRequestSpec:
    request_id: str
    method: str
    budget: int
    model_sha256: str
    hard: RawHard | EmbeddedHard
    seed: int = 0
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SelectSummaryInfo:
    request_id: str
    rows_sent: int
    new_rows_charged: int
    replayed: bool
    budget: BudgetInfo
    timings: dict[str, float]
    missing_classes: tuple[int, ...]
    shortfall_reason: str

    @property
    def selection_seconds(self) -> float:
        """The owner's own time: its "total" step when reported, else the sum of its steps."""
        if "total" in self.timings:
            return float(self.timings["total"])
        return float(sum(self.timings.values()))


@dataclass(frozen=True)
class OwnerSubset:
    """The rows one Select returned, decoded, with its summary and how the call went."""

    features: np.ndarray
    labels: np.ndarray
    row_ids: np.ndarray
    scores: np.ndarray
    summary: SelectSummaryInfo
    attempts: int
    seconds: float  # wall time of the successful attempt, including transfer

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class LedgerEntryInfo:
    request_id: str
    method: str
    rows: int
    new_rows: int
    timestamp: float


@dataclass(frozen=True)
class LedgerInfo:
    trainer_id: str
    budget: BudgetInfo
    entries: tuple[LedgerEntryInfo, ...]
