"""Training: determinism, normalisation, fine-tuning with replay, metrics and inference helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_moe import NAMES, digits, tiny_config

from moe.config import ModelConfig
from moe.model import build_model, parameter_counts
from moe.train import (
    TrainConfig,
    embed_numpy,
    evaluate,
    finetune,
    fit_normalization,
    predict,
    train,
)
from mycroft.data.base import LabeledData


def cfg(**kw) -> ModelConfig:
    return tiny_config(**kw)


@pytest.fixture(scope="module")
def split() -> tuple[LabeledData, LabeledData]:
    data = digits()
    order = np.random.default_rng(0).permutation(len(data))
    return data.subset(order[:1300]), data.subset(order[1300:])


@pytest.mark.parametrize("gate", ["topk", "comet"])
def test_training_is_deterministic_for_a_seed(split, gate: str) -> None:
    tr, _ = split
    runs = []
    for seed in (7, 7, 8):
        m = build_model(cfg(gate=gate, local_search=True, local_search_steps=5), seed=0)
        h = train(m, tr, TrainConfig(epochs=1, batch_size=64, seed=seed, max_steps=12))
        assert h.steps == 12 and h.samples == 12 * 64
        runs.append(m.state_dict())
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_training_learns_and_stores_normalization(split) -> None:
    tr, te = split
    m = build_model(cfg(gate="topk"), seed=0)
    assert m.config.norm_mean is None
    hist = train(m, tr, TrainConfig(epochs=4, batch_size=64, seed=0))
    assert hist.epoch_losses[-1] < hist.epoch_losses[0]
    assert hist.samples_per_sec > 0
    mean, std = fit_normalization(tr)
    assert np.allclose(m.config.norm_mean, mean) and np.allclose(m.config.norm_std, std)
    met = evaluate(m, te)
    assert met.accuracy > 0.8
    assert set(met.per_class_accuracy) == set(NAMES)
    assert abs(sum(met.expert_share) - 1.0) < 1e-6
    assert np.isclose(met.max_routing_imbalance, 8 * max(met.expert_share))  # one layer
    assert 1.0 <= met.max_routing_imbalance <= 8.0 / 2
    pred = predict(m, te.features, batch_size=100)
    assert pred.dtype == np.int64 and np.isclose((pred == te.labels).mean(), met.accuracy)


def test_embed_and_head_weights_give_logits(split) -> None:
    _, te = split
    m = build_model(cfg(gate="sinkhorn", norm_mean=(0.3,), norm_std=(0.4,)), seed=0).eval()
    e = embed_numpy(m, te.features, batch_size=64)
    assert e.shape == (len(te), 16) and e.dtype == np.float32
    w, b = m.head_weights()
    with torch.no_grad():
        logits = m(torch.from_numpy(te.features)).numpy()
    assert np.allclose(e @ w.T + b, logits, atol=1e-5)
    # Inference does not depend on batch composition (eval routing is per row).
    assert np.array_equal(predict(m, te.features, 7), predict(m, te.features, 500))


def test_dense_baseline_matches_active_parameters() -> None:
    dense = parameter_counts(build_model(cfg(gate="dense")))
    topk = parameter_counts(build_model(cfg(gate="topk")))
    # Equal up to the router (32 * 8) and one extra expert output bias (stem_dim = 32).
    assert topk["active"] - dense["active"] == 32 * 8 + 32
    assert topk["total"] > 2 * dense["total"]


def test_finetune_with_replay_improves_on_new_data(split) -> None:
    tr, te = split
    old_mask = tr.labels < 8
    old, new = tr.subset(old_mask), tr.subset(~old_mask)
    m = build_model(cfg(gate="topk"), seed=0)
    train(m, old, TrainConfig(epochs=4, batch_size=64, seed=0))
    te_new, te_old = te.subset(te.labels >= 8), te.subset(te.labels < 8)
    before_new, before_old = evaluate(m, te_new).accuracy, evaluate(m, te_old).accuracy
    assert before_new == 0.0  # never saw classes 8 and 9
    norm = m.config.norm_mean
    hist = finetune(m, new, old, TrainConfig(epochs=6, batch_size=64, seed=0, lr=3e-3))
    assert m.config.norm_mean == norm  # finetuning keeps the normalisation
    # Each epoch: all new rows plus as many replayed old rows (replay_fraction 0.5).
    assert hist.samples == 6 * 2 * len(new)
    after_new, after_old = evaluate(m, te_new).accuracy, evaluate(m, te_old).accuracy
    assert after_new > 0.6
    assert after_old > before_old - 0.2  # replay limits forgetting


def test_finetune_rejects_bad_replay_fraction(split) -> None:
    tr, _ = split
    m = build_model(cfg(), seed=0)
    with pytest.raises(ValueError):
        finetune(m, tr, tr, TrainConfig(), replay_fraction=1.0)
