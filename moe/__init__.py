"""Sparse mixture-of-experts classifiers: config, gates, model, safe model files, training."""

from moe.config import ModelConfig
from moe.io import load_model, model_from_bytes, model_sha256, model_to_bytes, save_model
from moe.model import MoEClassifier, build_model, parameter_counts
from moe.train import (
    Metrics,
    TrainConfig,
    TrainHistory,
    embed_numpy,
    evaluate,
    finetune,
    fit_normalization,
    predict,
    train,
)

__all__ = [
    "Metrics",
    "MoEClassifier",
    "ModelConfig",
    "TrainConfig",
    "TrainHistory",
    "build_model",
    "embed_numpy",
    "evaluate",
    "finetune",
    "fit_normalization",
    "load_model",
    "model_from_bytes",
    "model_sha256",
    "model_to_bytes",
    "parameter_counts",
    "predict",
    "save_model",
    "train",
]
