"""Plain dataclasses for what trainer and owner say to each other, one definition each.

Both nodes import these; `mycroft.serde` is the only code that turns them into protobuf
messages and back, so neither node's logic touches generated types for them. Types only one
node needs stay there (`owner_node.select_request.SelectJob`, `trainer_node.messages.OwnerSubset`).

"Budget" on the wire means two things, and the Python names keep them apart: `Allowance` is what
a trainer may get from an owner over its whole lifetime (the wire's `Budget` message); the
`budget` field of a Select is the rows wanted by that one request. Attributes keep the wire's
field names (`OwnerInfo.budget` is an Allowance), so wire and reports read the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mycroft.protocol import PROTOCOL_VERSION


@dataclass(frozen=True)
class Allowance:
    """What a trainer may still get from one owner: distinct rows under its lifetime cap
    (re-sending a row is free) and queries (each computation over the owner's rows: a Select
    that computes, a model's warm-up)."""

    cap: int  # distinct rows this trainer may ever see
    used: int
    left: int
    queries: int = 0
    queries_used: int = 0
    queries_left: int = 0

    @classmethod
    def counted(cls, cap: int, used: int, queries: int, queries_used: int) -> Allowance:
        """From the ledger's counters; a cap or allowance lowered below its use leaves 0."""
        return cls(
            cap, used, max(0, cap - used), queries, queries_used, max(0, queries - queries_used)
        )


NO_ALLOWANCE = Allowance(0, 0, 0)


@dataclass(frozen=True)
class OwnerInfo:
    """Describe's answer: the owner's public facts, then who the caller is and its allowance.
    `Engine.info()` leaves those two empty: it answers no trainer in particular."""

    owner_name: str
    class_names: tuple[str, ...]
    row_count: int
    input_shape: tuple[int, ...]
    feature_names: tuple[str, ...]
    methods: tuple[str, ...]
    class_counts: tuple[int, ...]  # empty when the owner hides them
    protocol_version: str = PROTOCOL_VERSION
    trainer_id: str = ""
    budget: Allowance = NO_ALLOWANCE
    max_request_bytes: int = 0  # the largest Select request the owner reads; 0: not said


@dataclass(frozen=True)
class ModelStatusInfo:
    sha256: str
    present: bool
    size: int


@dataclass(frozen=True)
class LedgerEntry:
    """One finished Select in a trainer's ledger."""

    request_id: str
    method: str
    rows: int
    new_rows: int
    timestamp: float  # unix seconds


@dataclass(frozen=True)
class LedgerInfo:
    trainer_id: str
    budget: Allowance
    entries: tuple[LedgerEntry, ...]


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
    """A Select as the trainer asks it; the owner checks it into a `SelectJob`."""

    request_id: str
    method: str
    rows_wanted: int  # the proto's `budget`: rows for this request (not the Allowance)
    model_sha256: str
    hard: RawHard | EmbeddedHard
    seed: int = 0
    params: dict[str, float] = field(default_factory=dict)
    # Owner row ids the trainer already holds (earlier rounds): the owner selects among the
    # others. It honours only ids it has revealed to this trainer, so excluding reveals nothing.
    exclude_row_ids: tuple[int, ...] | np.ndarray = ()


@dataclass(frozen=True)
class SelectSummaryInfo:
    """The last message of a Select stream: what was sent and charged."""

    request_id: str
    rows_sent: int
    new_rows_charged: int
    replayed: bool
    budget: Allowance  # after this request
    timings: dict[str, float]
    missing_classes: tuple[int, ...]
    shortfall_reason: str

    @property
    def selection_seconds(self) -> float:
        """The owner's own time: its "total" step when reported, else the sum of its steps."""
        if "total" in self.timings:
            return float(self.timings["total"])
        return float(sum(self.timings.values()))
