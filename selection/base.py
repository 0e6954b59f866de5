"""The selection interface: every strategy turns (owner candidates, D_hard, budget) into an
ordered list of owner row ids with scores. A new strategy is one module that subclasses
`Strategy` and registers itself with `@register("name")`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
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


class Strategy:
    """Base class for selection strategies (scikit-learn style: parameters in __init__)."""

    name: str = "base"
    needs_embeddings: bool = False
    needs_gradients: bool = False
    needs_features: bool = False

    def select(
        self,
        candidates: Candidates,
        hard: HardSet,
        budget: int,
        *,
        head: Head | None = None,
        seed: int = 0,
    ) -> SelectionResult:
        raise NotImplementedError


_REGISTRY: dict[str, type[Strategy]] = {}


def register(name: str):
    """Class decorator: make a strategy available under `name`."""

    def wrap(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"selection strategy {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available() -> list[str]:
    """Names of all registered strategies (built-in and plugins)."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_strategy(name: str, **params) -> Strategy:
    """An instance of the strategy registered as `name`; KeyError lists the known names."""
    _load_plugins()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown selection method {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None
    return cls(**params)


_plugins_loaded = False


def _load_plugins() -> None:
    """Strategies from other packages, declared under the `mycroft.selection` entry point."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="mycroft.selection"):
        ep.load()


class Timer:
    """Collects per-step wall times into a dict: `with timer("index"): ...`."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - start
