"""Sparse mixture-of-experts classifiers: config, gates, model, safe model files, training.

The names below load on first use (PEP 562), so `import moe.config` (config checks, gate names)
does not pull in torch; `from moe import build_model` loads what it needs.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# Submodule -> the names the package exports from it.
_SUBMODULES: dict[str, tuple[str, ...]] = {
    "config": ("ModelConfig", "TrainConfig"),
    "io": ("load_model", "model_from_bytes", "model_sha256", "model_to_bytes", "save_model"),
    "model": ("MoEClassifier", "build_model", "parameter_counts"),
    "train": ("Metrics", "TrainHistory", "embed_numpy", "evaluate", "finetune")
    + ("fit_normalization", "predict", "train"),
}
_EXPORTS: dict[str, str] = {name: mod for mod, names in _SUBMODULES.items() for name in names}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Loading moe/train.py binds the submodule as `moe.train`, which would shadow the
        # exported function train(); leave that name to __getattr__ instead.
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
