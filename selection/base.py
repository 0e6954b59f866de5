"""The selection interface: every strategy turns (owner candidates, D_hard, budget) into an
ordered list of owner row ids with scores. A new strategy is one module that subclasses
`Strategy`, implements `_rank(job) -> Ranked` and registers itself with `@register("name")`;
`Strategy.select` does the checks, the class plan and the budget contract around it."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mycroft.plugins import EntryPoint, PluginGroup
from selection._contract import ClassPlan, finalize, plan_classes, validate
from selection.params import Constraint, check_params

# The data types live in selection.types (so _contract needs nothing from here); strategies and
# callers keep importing them from selection.base.
from selection.types import Candidates, HardSet, Head, SelectionResult

__all__ = [
    "Candidates",
    "HardSet",
    "Head",
    "Job",
    "Ranked",
    "SelectionResult",
    "Strategy",
    "Timer",
    "available",
    "get_strategy",
    "register",
    "strategy_class",
    "wire_params",
]


@dataclass
class Job:
    """One `select` call as `Strategy._rank` sees it: inputs checked, budget an int, classes
    planned. Use `timer` for the strategy's own steps (they land in `SelectionResult.timings`)."""

    candidates: Candidates
    hard: HardSet
    budget: int
    head: Head | None
    seed: int
    plan: ClassPlan
    timer: Timer


@dataclass
class Ranked:
    """What `_rank` returns: candidate positions (into the arrays), best first, one score each.
    Duplicates and rows past the budget are dropped by the contract; `reason` overrides the
    default shortfall explanation."""

    positions: np.ndarray
    scores: np.ndarray
    reason: str | None = None
    fallback_rows: int = 0  # rows a fallback rule added, not the strategy's own score

    @classmethod
    def by_score(cls, positions: list[np.ndarray], scores: list[np.ndarray]) -> Ranked:
        """Per-class parts merged and ordered by score, highest first (stable on ties)."""
        pos = np.concatenate(positions) if positions else np.empty(0, np.int64)
        sc = np.concatenate(scores) if scores else np.empty(0, np.float32)
        order = np.argsort(-sc, kind="stable")
        return cls(pos[order], sc[order])


class Strategy:
    """Base class for selection strategies (scikit-learn style: parameters in __init__).

    The class flags say what a strategy needs; `select` checks them (and the owner node reads
    them to decide what to compute), then calls `_rank`. A plugin may still override `select`
    itself, as long as it returns a `SelectionResult` that obeys the budget contract.
    """

    name: str = "base"
    needs_embeddings: bool = False  # candidate and D_hard embeddings (see needs_gradients)
    needs_gradients: bool = False  # D_hard gradients, or D_hard embeddings to derive them from
    needs_hard_embeddings: bool = False  # D_hard embeddings even when gradients arrive
    needs_features: bool = False  # raw feature rows, both sides
    needs_head: bool = False  # the trainer's last layer
    ignores_budget: bool = False  # evaluation-only strategies that return every row
    # name -> Constraint for every __init__ parameter (selection/params.py); {} takes none,
    # None declares nothing: no parameters over the wire, unchecked keyword arguments from Python
    param_constraints: ClassVar[dict[str, Constraint] | None] = None
    # keyword arguments only the owner passes (objects, never wire parameters): not checked
    local_params: ClassVar[frozenset[str]] = frozenset()

    def select(
        self,
        candidates: Candidates,
        hard: HardSet,
        budget: int,
        *,
        head: Head | None = None,
        seed: int = 0,
    ) -> SelectionResult:
        self._check_fields(candidates, hard, head)
        timer = Timer()
        with timer("validate"):
            budget = validate(
                candidates,
                hard,
                budget,
                head if self.needs_head else None,  # others ignore a head, as they always did
                # with gradients, D_hard embeddings are optional (checked in _check_fields)
                needs_embeddings=self.needs_embeddings and not self.needs_gradients,
                needs_features=self.needs_features,
            )
        with timer("plan"):
            plan = plan_classes(candidates, hard)
        ranked = self._rank(Job(candidates, hard, budget, head, seed, plan, timer))
        return finalize(
            candidates,
            ranked.positions,
            ranked.scores,
            budget,
            plan=plan,
            timings=timer.timings,
            reason=ranked.reason,
            fallback_rows=ranked.fallback_rows,
            enforce_budget=not self.ignores_budget,
        )

    def _check_fields(self, candidates: Candidates, hard: HardSet, head: Head | None) -> None:
        """Head-based strategies fail early, with their own name, on what they cannot run without."""
        if self.needs_head and head is None:
            raise ValueError(f"{self.name} selection needs the trainer's head (last layer)")
        if not self.needs_gradients:
            return
        if candidates.embeddings is None:
            raise ValueError(f"{self.name} selection needs candidates.embeddings")
        if hard.gradients is None and hard.embeddings is None:
            raise ValueError(f"{self.name} selection needs D_hard gradients or embeddings")
        if self.needs_hard_embeddings and hard.embeddings is None:
            raise ValueError(f"{self.name} selection needs D_hard embeddings")

    def _rank(self, job: Job) -> Ranked:
        raise NotImplementedError(f"{type(self).__name__} must implement _rank (or select)")


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
    _PLUGINS.load()
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    """The class registered as `name`; KeyError lists the known names."""
    _PLUGINS.load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown selection method {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def get_strategy(name: str, **params) -> Strategy:
    """An instance of the strategy registered as `name`, its parameters checked against its
    `param_constraints` (ParamError, a ValueError); KeyError lists the known names."""
    cls = strategy_class(name)
    return cls(**check_params(cls, params, wire=False))


def wire_params(name: str, params: Mapping[str, float]) -> dict[str, object]:
    """A trainer's wire parameters for strategy `name`, checked and coerced to the constructor's
    types before any computation (ParamError names the refused one); KeyError: unknown name."""
    return check_params(strategy_class(name), params, wire=True)


def _import_entry_point(ep: EntryPoint) -> None:
    ep.load()  # a plugin registers itself with @register on import


# Strategies from other packages, declared under the `mycroft.selection` entry point.
_PLUGINS = PluginGroup("mycroft.selection", _import_entry_point)


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
