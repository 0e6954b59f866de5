"""The model's whole description: architecture, gate, gate hyper-parameters, input normalisation.

A `ModelConfig` is serialised as JSON into the model file's metadata, so it is also the thing
an untrusted file controls. `validate()` therefore bounds every size, so that building a model
from a hostile config cannot allocate unbounded memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from moe import gates
from moe.gates import DEFAULT_GATE, GATES, GateSpec
from mycroft.errors import ConfigError

STEMS = ("conv", "mlp")

# Bounds for configs read from files. Generous for this service's models, small enough that a
# hostile file cannot make the loader allocate gigabytes.
MAX_DIM = 8192
MAX_INPUT_ELEMENTS = 1 << 20
MAX_EXPERTS = 256
MAX_CLASSES = 100_000
MAX_LAYERS = 8


@dataclass
class ModelConfig:
    """Architecture of a `MoEClassifier`.

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

    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    stem: str = "conv"
    stem_dim: int = 128
    conv_channels: int = 16
    embed_dim: int = 64
    num_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 64
    num_moe_layers: int = 1
    gate: str = DEFAULT_GATE
    balance_alpha: float = 0.01
    z_loss_coef: float = 1e-3
    sinkhorn_iters: int = 3
    comet_gamma: float = 1.0
    comet_entropy_coef: float = 0.05
    local_search: bool = False
    local_search_steps: int = 200
    local_search_tau: float = 1.0
    hash_seed: int = 0
    norm_mean: tuple[float, ...] | None = None
    norm_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self._check_types()
        self.input_shape = tuple(int(v) for v in self.input_shape)
        self.class_names = tuple(str(v) for v in self.class_names)
        if self.norm_mean is not None:
            self.norm_mean = tuple(float(v) for v in self.norm_mean)
        if self.norm_std is not None:
            self.norm_std = tuple(float(v) for v in self.norm_std)
        self.validate()

    def _check_types(self) -> None:
        """Exact scalar types: a config read from JSON must not smuggle 8.0 or "8" for an int.

        Numpy scalars and arrays (as produced by data code) are accepted and converted.
        """
        ints = (int, np.integer)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int":
                if not isinstance(v, ints) or isinstance(v, bool):
                    raise ConfigError(f"model config: {f.name}: expected an integer, got {v!r}")
                setattr(self, f.name, int(v))
            elif f.type == "float":
                if not isinstance(v, int | float | np.number) or isinstance(v, bool):
                    raise ConfigError(f"model config: {f.name}: expected a number, got {v!r}")
                setattr(self, f.name, float(v))
            elif f.type == "bool" and not isinstance(v, bool | np.bool_):
                raise ConfigError(f"model config: {f.name}: expected true/false, got {v!r}")
            elif f.type == "str" and not isinstance(v, str):
                raise ConfigError(f"model config: {f.name}: expected a string, got {v!r}")
        for name in ("input_shape", "class_names", "norm_mean", "norm_std"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, list | tuple | np.ndarray):
                raise ConfigError(f"model config: {name}: expected a list, got {type(v).__name__}")
        if any(not isinstance(v, ints) or isinstance(v, bool) for v in self.input_shape):
            raise ConfigError(
                f"model config: input_shape: expected integers, got {self.input_shape}"
            )
        if any(not isinstance(v, str) for v in self.class_names):
            raise ConfigError("model config: class_names: expected strings")
        self.local_search = bool(self.local_search)

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

    def validate(self) -> None:
        def bad(field: str, problem: str) -> ConfigError:
            return ConfigError(f"model config: {field}: {problem}")

        if self.gate not in GATES:
            raise bad("gate", f"unknown gate {self.gate!r}; expected one of {', '.join(GATES)}")
        if self.stem not in STEMS:
            raise bad("stem", f"unknown stem {self.stem!r}; expected one of {', '.join(STEMS)}")
        shape = self.input_shape
        if self.stem == "conv" and len(shape) != 3:
            raise bad("input_shape", f"conv stem needs (C, H, W), got {shape}")
        if self.stem == "mlp" and len(shape) != 1:
            raise bad("input_shape", f"mlp stem needs (F,), got {shape}")
        if any(v < 1 or v > MAX_DIM for v in shape) or math.prod(shape) > MAX_INPUT_ELEMENTS:
            raise bad("input_shape", f"{shape} out of bounds")
        if self.stem == "conv" and min(shape[1:]) < 4:
            raise bad("input_shape", "conv stem needs H, W >= 4")
        for name in ("stem_dim", "conv_channels", "embed_dim", "expert_hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= MAX_DIM:
                raise bad(name, f"must be an int in [1, {MAX_DIM}], got {v!r}")
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise bad("num_classes", f"must be in [2, {MAX_CLASSES}], got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise bad("class_names", f"{len(self.class_names)} names for {self.num_classes}")
        if not 1 <= self.num_experts <= MAX_EXPERTS:
            raise bad("num_experts", f"must be in [1, {MAX_EXPERTS}], got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise bad("top_k", f"must be in [1, num_experts], got {self.top_k}")
        if not 1 <= self.num_moe_layers <= MAX_LAYERS:
            raise bad("num_moe_layers", f"must be in [1, {MAX_LAYERS}]")
        if self.top_k * self.expert_hidden > MAX_DIM * 4:
            raise bad("expert_hidden", "top_k * expert_hidden too large")
        for name in ("balance_alpha", "z_loss_coef", "comet_entropy_coef"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise bad(name, f"must be finite and >= 0, got {v}")
        if not (math.isfinite(self.comet_gamma) and self.comet_gamma > 0):
            raise bad("comet_gamma", "must be > 0")
        if not (math.isfinite(self.local_search_tau) and self.local_search_tau > 0):
            raise bad("local_search_tau", "must be > 0")
        if not 1 <= self.sinkhorn_iters <= 100:
            raise bad("sinkhorn_iters", "must be in [1, 100]")
        if self.local_search_steps < 0:
            raise bad("local_search_steps", "must be >= 0")
        for name in ("norm_mean", "norm_std"):
            v = getattr(self, name)
            if v is None:
                continue
            if len(v) != self.norm_size or not all(math.isfinite(x) for x in v):
                raise bad(name, f"needs {self.norm_size} finite values, got {len(v)}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise bad("norm_std", "norm_mean and norm_std must be set together")
        if self.norm_std is not None and min(self.norm_std) <= 0:
            raise bad("norm_std", "must be > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["class_names"] = list(self.class_names)
        for name in ("norm_mean", "norm_std"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build and validate; unknown keys, missing keys and wrong types raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError("model config: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model config: unknown field(s) {', '.join(unknown)}")
        for required in ("input_shape", "num_classes", "class_names"):
            if required not in d:
                raise ConfigError(f"model config: missing field {required}")
        try:
            return cls(**d)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model config: {exc}") from exc


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
