"""The scoring checkpoint: owners can be sent an early checkpoint of the baseline run."""

import numpy as np
import torch
from helpers_moe import digits, tiny_config

from moe.model import build_model
from moe.train import TrainConfig, evaluate
from mycroft.data.base import LabeledData
from trainer_node.baseline import train_with_checkpoint


def _digits() -> LabeledData:
    return digits().subset(np.arange(600))


def _model(data: LabeledData):
    torch.manual_seed(0)
    return build_model(tiny_config(num_experts=4, top_k=2))


def test_early_checkpoint_is_a_separate_snapshot_of_the_same_run():
    data = _digits()
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=0)
    model = _model(data)
    early = train_with_checkpoint(model, data, cfg, checkpoint_epoch=1)
    assert early is not model
    assert early.config == model.config
    w_early, _ = early.head_weights()
    w_final, _ = model.head_weights()
    assert not np.allclose(w_early, w_final)  # training went on after the snapshot
    # one epoch in, the snapshot is a worse classifier than the end of the same run
    assert evaluate(early, data).accuracy < evaluate(model, data).accuracy


def test_without_a_checkpoint_the_final_model_scores():
    data = _digits()
    model = _model(data)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, seed=0)
    assert train_with_checkpoint(model, data, cfg, checkpoint_epoch=None) is model


def test_a_model_can_be_deep_copied_in_the_middle_of_training():
    import copy

    data = _digits()
    model = _model(data)
    copies = []

    from moe.train import train

    train(
        model,
        data,
        TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=0),
        progress=lambda stats: copies.append(copy.deepcopy(model)),
    )
    assert len(copies) == 2
    w0, _ = copies[0].head_weights()
    assert not np.allclose(w0, model.head_weights()[0])
