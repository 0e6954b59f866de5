"""The trainer's own message types; what both nodes share lives in `mycroft.messages`.

The client converts protobufs into these at the boundary (`mycroft.serde`, `mycroft.wire`), so
the rest of the trainer never touches generated message types.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mycroft.messages import SelectSummaryInfo


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
