"""Small real data and tiny model configs shared by the MoE and trainer tests."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from moe.config import ModelConfig
from mycroft.data.base import LabeledData

NAMES = tuple(str(i) for i in range(10))


def digits() -> LabeledData:
    """scikit-learn's bundled 8x8 digits as (N, 1, 8, 8) in [0, 1]."""
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return LabeledData(x, d.target.astype(np.int64), NAMES, np.arange(len(x), dtype=np.int64))


# Widths of a model small enough to train in a second on digits.
TINY_WIDTHS = {"stem_dim": 32, "conv_channels": 8, "expert_hidden": 32, "embed_dim": 16}


def tiny_config(**overrides) -> ModelConfig:
    """A model small enough to train in a second on digits; `overrides` set any field."""
    digits_shape = {"input_shape": (1, 8, 8), "num_classes": 10, "class_names": NAMES}
    return ModelConfig(**{**digits_shape, **TINY_WIDTHS, **overrides})
