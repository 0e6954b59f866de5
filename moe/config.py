"""The model's whole description: architecture, gate, gate hyper-parameters, input normalisation.

A `ModelConfig` is serialised as JSON into the model file's metadata, so it is also the thing
an untrusted file controls. It is declared on the shared config layer (`mycroft.config_base`):
exact scalar types, unknown fields refused, and every size bounded, so that building a model
from a hostile config cannot allocate unbounded memory.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field, ValidationError, model_validator

from moe import gates
from moe.gates import DEFAULT_GATE, GATES, GateSpec
from mycroft.config_base import Bool, ConfigModel, FieldProblem, Float, Int, Str, describe
from mycroft.errors import ConfigError

Stem = Literal["conv", "mlp"]
STEMS: tuple[str, ...] = typing.get_args(Stem)
__all__ = ["GATES", "STEMS", "ModelConfig", "TrainConfig"]  # GATES: re-exported for configs

# Bounds for configs read from files. Generous for this service's models, small enough that a
# hostile file cannot make the loader allocate gigabytes.
MAX_DIM = 8192
MAX_INPUT_ELEMENTS = 1 << 20
MAX_EXPERTS = 256
MAX_CLASSES = 100_000
MAX_LAYERS = 8
MAX_ACTIVE_HIDDEN = 4 * MAX_DIM  # top_k * expert_hidden: the dense gate builds one expert this wide
MAX_SINKHORN_ITERS = 100


def _plain(value: Any) -> Any:
    """A numpy scalar or array (as data code passes) as Python values; anything else unchanged,
    so "8", 8.0 and true are still refused where an integer is wanted."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, list | tuple) and any(isinstance(v, np.generic) for v in value):
        return [v.tolist() if isinstance(v, np.generic) else v for v in value]
    return value


Width = Annotated[Int, Field(ge=1, le=MAX_DIM)]
Weight = Annotated[Float, Field(ge=0.0)]
Positive = Annotated[Float, Field(gt=0.0)]
NormMean = Annotated[tuple[Float, ...], Field(max_length=MAX_DIM)]
NormStd = Annotated[tuple[Positive, ...], Field(max_length=MAX_DIM)]


class ModelConfig(ConfigModel):
    """Architecture of a `MoEClassifier`; immutable (`replace` gives a changed, checked copy).

    input_shape: (C, H, W) for images (stem "conv") or (F,) for tables (stem "mlp").
    stem_dim: width of the token the MoE layers act on (the stem's output).
    embed_dim: width of the penultimate vector (the head's input; used for feature matching and
        closed-form last-layer gradients).
    expert_hidden: hidden width of one expert MLP (stem_dim -> expert_hidden -> stem_dim).
    gate: one of GATES, the modules in moe/gates/; the gate class says how the layer is built
        (e.g. "dense" builds one expert of width top_k * expert_hidden instead of E experts).
    balance_alpha: Switch load-balancing loss weight (topk gate).
    z_loss_coef: router z-loss weight (topk gate).
    sinkhorn_iters: row/column normalisation rounds (sinkhorn gate).
    comet_gamma: width of the smooth-step's soft region (comet gate).
    comet_entropy_coef: weight of the per-tree leaf-entropy penalty (comet gate).
    local_search: learn a permutation of experts (Gumbel-Sinkhorn + Hungarian) for the first
        local_search_steps training steps, then freeze it. Applies to any sparse gate.
    norm_mean / norm_std: per channel (conv) or per feature (mlp); the model normalises raw
        inputs itself. None means identity.
    """

    # The field order is the order of `to_dict`, hence of the JSON in model files: keep it.
    input_shape: Annotated[tuple[Width, ...], Field(max_length=3)]
    num_classes: Annotated[Int, Field(ge=2, le=MAX_CLASSES)]
    class_names: Annotated[tuple[Str, ...], Field(max_length=MAX_CLASSES)]
    stem: Stem = "conv"
    stem_dim: Width = 128
    conv_channels: Width = 16
    embed_dim: Width = 64
    num_experts: Annotated[Int, Field(ge=1, le=MAX_EXPERTS)] = 8
    top_k: Annotated[Int, Field(ge=1)] = 2
    expert_hidden: Width = 64
    num_moe_layers: Annotated[Int, Field(ge=1, le=MAX_LAYERS)] = 1
    # The registry is the moe/gates folder, so the choices are not a fixed Literal.
    gate: Annotated[Str, AfterValidator(gates.known_gate)] = DEFAULT_GATE
    balance_alpha: Weight = 0.01
    z_loss_coef: Weight = 1e-3
    sinkhorn_iters: Annotated[Int, Field(ge=1, le=MAX_SINKHORN_ITERS)] = 3
    comet_gamma: Positive = 1.0
    comet_entropy_coef: Weight = 0.05
    local_search: Bool = False
    local_search_steps: Annotated[Int, Field(ge=0)] = 200
    local_search_tau: Positive = 1.0
    hash_seed: Int = 0
    norm_mean: NormMean | None = None
    norm_std: NormStd | None = None

    def __init__(self, /, **fields: Any) -> None:
        # Every way in (keywords, from_dict, replace) reports in one wording, as a ConfigError.
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise ConfigError(f"model config: {describe(exc, ModelConfig)}") from None

    @model_validator(mode="before")
    @classmethod
    def _from_numpy(cls, data: Any) -> Any:
        return {k: _plain(v) for k, v in data.items()} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _shape(self) -> ModelConfig:
        shape = self.input_shape
        if self.stem == "conv" and len(shape) != 3:
            raise FieldProblem("input_shape", f"conv stem needs (C, H, W), got {shape}")
        if self.stem == "mlp" and len(shape) != 1:
            raise FieldProblem("input_shape", f"mlp stem needs (F,), got {shape}")
        if self.stem == "conv" and min(shape[1:]) < 4:
            raise FieldProblem("input_shape", f"conv stem needs H, W >= 4, got {shape}")
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            problem = f"{shape} has more than {MAX_INPUT_ELEMENTS} elements"
            raise FieldProblem("input_shape", problem)
        if len(self.class_names) != self.num_classes:
            problem = f"{len(self.class_names)} names for {self.num_classes} classes"
            raise FieldProblem("class_names", problem)
        return self

    @model_validator(mode="after")
    def _routing(self) -> ModelConfig:
        if self.top_k > self.num_experts:
            raise FieldProblem("top_k", f"{self.top_k} exceeds num_experts {self.num_experts}")
        if self.top_k * self.expert_hidden > MAX_ACTIVE_HIDDEN:
            problem = f"top_k * expert_hidden must be at most {MAX_ACTIVE_HIDDEN}"
            raise FieldProblem("expert_hidden", problem)
        return self

    @model_validator(mode="after")
    def _normalisation(self) -> ModelConfig:
        if (self.norm_mean is None) != (self.norm_std is None):
            raise FieldProblem("norm_std", "norm_mean and norm_std must be set together")
        for name, values in (("norm_mean", self.norm_mean), ("norm_std", self.norm_std)):
            if values is not None and len(values) != self.norm_size:
                raise FieldProblem(name, f"needs {self.norm_size} values, got {len(values)}")
        return self

    @property
    def gate_spec(self) -> GateSpec:
        return gates.gate_spec(self.gate)

    @property
    def effective_experts(self) -> int:
        """Experts actually built (a non-sparse gate's layer has a single, wider one)."""
        return self.gate_spec.experts(self)

    @property
    def norm_size(self) -> int:
        """Length of norm_mean/norm_std: channels for conv, features for mlp."""
        return self.input_shape[0]

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes`, checked like any config (`model_copy(update=)` checks nothing)."""
        return ModelConfig(**{**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (lists for tuples), in field order: the model file's metadata."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_dump().items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build and validate; unknown keys, missing keys and wrong types raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError("model config: expected a JSON object")
        return cls(**d)


@dataclass
class TrainConfig:
    """How `moe.train.train` and `finetune` optimise; here so config checks need no torch."""

    epochs: int = 5
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    warmup_fraction: float = 0.05
    warmup_steps: int | None = None  # overrides warmup_fraction when set
    min_lr_fraction: float = 0.02  # cosine decays to lr * min_lr_fraction
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    max_steps: int | None = None  # cap on optimiser steps (tests, quick runs)
    num_threads: int | None = None  # torch intra-op threads; None: auto_threads(model)
    # "auto" | "cpu" | "cuda" | "cuda:N" (moe.device); the model trains there and comes back.
    device: str = "cpu"
