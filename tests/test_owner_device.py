"""Where the owner runs the trainer's model over rows (`[compute]`): the device and threads
reach the embedding pass, a GPU the machine lacks stops the owner at start-up, and the CPU
fast path (a compiled conv stem) embeds exactly like the model itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_grpc import digits_data, owner_config

from moe.config import ModelConfig
from moe.inference import FAST_STEM_MIN_ROWS, _cpu_conv_view, embed_numpy
from moe.io import model_to_bytes
from moe.model import build_model
from mycroft.errors import ConfigError
from owner_node.engine import Engine

CUDA = torch.cuda.is_available()


def _fashion_model(seed: int = 0):
    """The product's Fashion-sized shape (conv stem over 1x28x28, embed_dim 64)."""
    cfg = ModelConfig(
        input_shape=(1, 28, 28),
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        num_experts=4,
        top_k=2,
        embed_dim=64,
        norm_mean=[0.3],
        norm_std=[0.35],
    )
    return build_model(cfg, seed=seed)


def _rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)


def _plain_embeddings(model, x: np.ndarray) -> np.ndarray:
    """The model's own eager forward, no fast path."""
    with torch.inference_mode():
        return model.eval().embed(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_embeddings_match_the_models_own_forward(threads):
    model = _fashion_model()
    x = _rows(FAST_STEM_MIN_ROWS + 100)  # above the threshold: the compiled stem runs
    got = embed_numpy(model, x, batch_size=512, device="cpu", threads=threads)
    np.testing.assert_allclose(got, _plain_embeddings(model, x), rtol=1e-4, atol=1e-5)


def test_compiled_stem_leaves_the_model_untouched():
    model = _fashion_model()
    stem = model.stem
    view = _cpu_conv_view(model)
    assert view is not model and view.stem is not stem
    assert model.stem is stem and isinstance(model.stem, torch.nn.Sequential)
    # A model trained after the call must not be served stale weights by an old view.
    with torch.no_grad():
        model.stem[0].weight.mul_(2.0)
    x = _rows(FAST_STEM_MIN_ROWS)
    np.testing.assert_allclose(
        embed_numpy(model, x, device="cpu"), _plain_embeddings(model, x), rtol=1e-4, atol=1e-5
    )


def test_tabular_models_keep_their_stem():
    cfg = ModelConfig(input_shape=(5,), num_classes=2, class_names=("a", "b"), stem="mlp")
    model = build_model(cfg, seed=0)
    assert _cpu_conv_view(model) is model


def test_owner_embeds_on_the_configured_device_and_threads(tmp_path):
    data = digits_data()
    engine = Engine(owner_config(tmp_path, compute={"device": "cpu", "threads": 2}), data)
    try:
        assert (engine.models.device, engine.models.threads) == ("cpu", 2)
        from moe.io import model_from_bytes

        model_bytes = _digits_model_bytes(data)
        loaded = engine.models._parse("alice", _sha(model_bytes), model_bytes)
        emb = engine.models.embeddings(loaded)
        expected = embed_numpy(model_from_bytes(model_bytes), data.features, threads=1)
        np.testing.assert_allclose(emb, expected, rtol=1e-4, atol=1e-5)
        assert engine.models.last_pass is not None
        assert engine.models.last_pass["device"] == "cpu"
        assert engine.models.last_pass["threads"] == 2
        assert engine.models.last_pass["rows"] == len(data)
    finally:
        engine.close()


def test_threads_zero_means_every_usable_core(tmp_path):
    engine = Engine(owner_config(tmp_path, compute={"threads": 0}), digits_data())
    try:
        assert engine.models.threads >= 1
    finally:
        engine.close()


def test_auto_starts_without_a_gpu(tmp_path):
    engine = Engine(owner_config(tmp_path, compute={"device": "auto"}), digits_data())
    try:
        assert engine.models.device == ("cuda:0" if CUDA else "cpu")
    finally:
        engine.close()


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_a_missing_gpu_stops_the_owner_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"^compute\.device: 'cuda'.*no CUDA device"):
        Engine(owner_config(tmp_path, compute={"device": "cuda"}), digits_data())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_embeddings_match_the_cpu():
    model = _fashion_model()
    x = _rows(FAST_STEM_MIN_ROWS + 100)
    gpu = embed_numpy(model, x, batch_size=2048, device="cuda")
    cpu = embed_numpy(model, x, batch_size=512, device="cpu")
    assert next(model.parameters()).device.type == "cpu"  # moved back after the call
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_owner_on_cuda_embeds_its_rows(tmp_path):
    data = digits_data()
    engine = Engine(owner_config(tmp_path, compute={"device": "cuda"}), data)
    try:
        model_bytes = _digits_model_bytes(data)
        loaded = engine.models._parse("alice", _sha(model_bytes), model_bytes)
        emb = engine.models.embeddings(loaded)
        assert engine.models.last_pass["device"].startswith("cuda")
        assert emb.shape == (len(data), loaded.embed_dim) and np.isfinite(emb).all()
    finally:
        engine.close()


def _digits_model_bytes(data) -> bytes:
    cfg = ModelConfig(
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        class_names=data.class_names,
        stem_dim=16,
        conv_channels=4,
        embed_dim=8,
        num_experts=2,
        top_k=1,
        expert_hidden=8,
    )
    return model_to_bytes(build_model(cfg, seed=0))


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
