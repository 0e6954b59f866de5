"""Routers, and the one registry of them. A gate maps tokens h (B, d) to combine weights (B, E)
and its own auxiliary loss: forward(h, raw) -> (combine, aux).

Combine weights have at most k non-zeros per row (COMET: exactly so in eval mode; in training
mode once its trees have converged, which the entropy penalty drives). Hash routing also sees the
raw input, because its expert choice must not change while the stem trains.

The registry is this folder: every module moe/gates/<name>.py is the gate `<name>`, its class
exported as `Gate`. `GATES` lists the module names without importing them (no torch), so a config
is checked before any heavy import. What a gate means for the layer around it (how many experts
it builds, how wide, how many an input uses) is the class attribute `sparse`, read through
`gate_spec`, rather than tested by name elsewhere.

Adding a gate is one file: moe/gates/<name>.py with an nn.Module taking (dim, cfg), returning
(combine, aux) from forward(h, raw), and `Gate = ThatClass` at the bottom.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from moe.config import ModelConfig


@dataclass(frozen=True)
class GateSpec:
    """One gate: its config name, its class, and its routing shape.

    sparse (the class attribute, default True): the layer builds num_experts experts of width
        expert_hidden and the gate picks top_k of them per input; an expert permutation (local
        search) can reorder them. Otherwise the layer builds one expert of width
        top_k * expert_hidden that every input goes through: the same active expert parameters
        per input as a top-k MoE, up to the router and (top_k - 1) output biases.
    """

    name: str
    cls: type[nn.Module]

    @property
    def sparse(self) -> bool:
        return bool(getattr(self.cls, "sparse", True))

    def experts(self, cfg: ModelConfig) -> int:
        """Experts the layer builds."""
        return cfg.num_experts if self.sparse else 1

    def active_experts(self, cfg: ModelConfig) -> int:
        """Experts one input passes through."""
        return cfg.top_k if self.sparse else 1

    def expert_hidden(self, cfg: ModelConfig) -> int:
        """Hidden width of each expert the layer builds."""
        return cfg.expert_hidden if self.sparse else cfg.top_k * cfg.expert_hidden


DEFAULT_GATE = "topk"
# The default first, then by name.
GATES: tuple[str, ...] = tuple(
    sorted(
        (m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")),
        key=lambda name: (name != DEFAULT_GATE, name),
    )
)


def known_gate(name: str) -> str:
    """`name` if it is a gate; ValueError naming the choices otherwise. Imports no gate."""
    if name not in GATES:
        raise ValueError(f"unknown gate {name!r}; expected one of {', '.join(GATES)}")
    return name


@functools.cache
def gate_spec(name: str) -> GateSpec:
    """The gate `name` (imports its module, hence torch)."""
    return GateSpec(known_gate(name), importlib.import_module(f"{__name__}.{name}").Gate)


def build_gate(dim: int, cfg: ModelConfig) -> nn.Module:
    return gate_spec(cfg.gate).cls(dim, cfg)


def __getattr__(name: str) -> Any:
    """The gate classes as attributes (moe.gates.TopKGate), imported on first use."""
    for gate in GATES:
        if gate_spec(gate).cls.__name__ == name:
            return gate_spec(gate).cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
