"""Training and inference on a named device: the CPU path unchanged, a GPU path with no tensor
left on the wrong device, clear errors for a device that is not there, and the model always
handed back where the caller had it."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_device import DeviceMixChecker, DeviceMixError
from helpers_moe import digits, tiny_config
from test_trainer_config import _set, base
from torch import nn

import moe
from moe.device import resolve_device
from moe.gates import GATES
from moe.model import MoEClassifier, build_model
from moe.train import TrainConfig, embed_numpy, evaluate, finetune, predict, train
from mycroft.data.base import LabeledData
from mycroft.errors import ConfigError
from trainer_node.baseline import hard_payload, train_with_checkpoint
from trainer_node.config import parse_config
from trainer_node.dhard import build_dhard, systematic
from trainer_node.rounds import remaining_failures

MOE_SOURCES = Path(moe.__file__).resolve().parent
NO_CUDA = not torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(NO_CUDA, reason="no CUDA device")
needs_no_cuda = pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA device")
# Every gate, and local search on the gates it applies to (the permutation's Hungarian step
# runs on the CPU and must hand its result back on the model's device).
VARIANTS = [(gate, False) for gate in GATES] + [(g, True) for g in GATES if g != "dense"]
VARIANT_IDS = [f"{g}+ls" if ls else g for g, ls in VARIANTS]
LOCAL_SEARCH_STEPS = 3  # the permutation freezes within the few steps the tests train


@pytest.fixture(scope="module")
def old_new() -> tuple[LabeledData, LabeledData]:
    """Digits split by class: the model's first training set, and the set it fine-tunes on."""
    data = digits()
    return data.subset(data.labels < 8), data.subset(data.labels >= 8)


def variant(gate: str, local_search: bool, seed: int = 0) -> MoEClassifier:
    cfg = tiny_config(gate=gate, local_search=local_search, local_search_steps=LOCAL_SEARCH_STEPS)
    return build_model(cfg, seed=seed)


def train_then_finetune(model: MoEClassifier, old_new, device: str, steps: int = 8):
    old, new = old_new
    trained = train(model, old, TrainConfig(batch_size=64, seed=3, max_steps=steps, device=device))
    tuned = finetune(
        model, new, old, TrainConfig(batch_size=32, seed=4, max_steps=steps, device=device)
    )
    return trained, tuned


def weights_digest(model: MoEClassifier) -> str:
    state = model.state_dict()
    blob = b"".join(k.encode() + state[k].numpy().tobytes() for k in sorted(state))
    return hashlib.sha256(blob).hexdigest()


def devices_of(model: MoEClassifier) -> set[torch.device]:
    return {t.device for t in (*model.parameters(), *model.buffers())}


# Recorded with the code before training could leave the CPU (torch 2.13.0, x86_64, 1 thread):
# train 20 steps at batch 64 (seed 3) on classes 0-7, fine-tune 15 steps at batch 32 (seed 4) on
# 8-9 with replay. Weights digest and the two runs' epoch losses.
BEFORE_DEVICES = {
    ("topk", True): (
        "fe7be6117c99954b0f24432401a93ee438bc201694a55f40ef5803320a2757a8",
        ([2.054311603307724], [2.0309672435124715]),
    ),
    ("hash", False): (
        "642aea969e077b40608894b9fd8984a7066f1526d0c3dadbf2b63bad98e06aba",
        ([2.143428325653076], [2.257698154449463]),
    ),
}


@pytest.mark.skipif(
    torch.__version__.split("+")[0] != "2.13.0" or platform.machine() != "x86_64",
    reason="the pinned weights were recorded with torch 2.13.0 on x86_64",
)
@pytest.mark.parametrize(("gate", "local_search"), list(BEFORE_DEVICES))
def test_cpu_training_is_bit_identical_to_before_devices(old_new, gate, local_search) -> None:
    model = build_model(tiny_config(gate=gate, local_search=local_search, local_search_steps=5), 0)
    old, new = old_new
    cpu = {"device": "cpu", "num_threads": 1}
    trained = train(model, old, TrainConfig(epochs=2, batch_size=64, seed=3, max_steps=20, **cpu))
    tuned = finetune(
        model, new, old, TrainConfig(epochs=2, batch_size=32, seed=4, max_steps=15, **cpu)
    )
    digest, losses = BEFORE_DEVICES[(gate, local_search)]
    if weights_digest(model) != digest:
        # Another CPU's kernels (AVX2 vs AVX-512) may round differently: then the losses must
        # still agree to float32 precision, which a device-handling change would not keep.
        got = (trained.epoch_losses, tuned.epoch_losses)
        assert np.allclose(np.concatenate([*got]), np.concatenate([*losses]), rtol=1e-4), got


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_cpu_training_trains_the_callers_tensors_in_place(old_new, device) -> None:
    model = variant("topk", local_search=True)
    params = {name: p for name, p in model.named_parameters()}
    before = {name: p.detach().clone() for name, p in params.items()}
    trained, _ = train_then_finetune(model, old_new, device)
    assert np.isfinite(trained.epoch_losses).all()
    # No round trip through a copy: the caller's parameter tensors are the ones trained.
    assert all(p is params[name] for name, p in model.named_parameters())
    assert any(not torch.equal(before[n], p) for n, p in params.items())
    assert devices_of(model) == {torch.device("cpu")}


@needs_no_cuda
def test_auto_means_the_cpu_without_a_gpu(old_new) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    runs = []
    for device in ("auto", "cpu"):
        model = variant("topk", local_search=False)
        train_then_finetune(model, old_new, device)
        runs.append(weights_digest(model))
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("gpu", r"must be auto \| cpu \| cuda \| cuda:N, got 'gpu'"), ("cuda:", "must be")],
)
def test_resolve_device_rejects_malformed_names(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_device(spec)


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:7"])
def test_resolve_device_names_a_missing_gpu(spec) -> None:
    with pytest.raises(ValueError, match=f"'{spec}': this machine has no CUDA device"):
        resolve_device(spec)


@needs_cuda
def test_resolve_device_names_the_gpus_there_are() -> None:
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"has {count} CUDA device\(s\), 0\.\.{count - 1}"):
        resolve_device(f"cuda:{count}")


@needs_no_cuda
def test_training_on_a_missing_gpu_fails_before_changing_the_model(old_new) -> None:
    model = variant("topk", local_search=False)
    before = weights_digest(model)
    with pytest.raises(ValueError, match="no CUDA device"):
        train(model, old_new[0], TrainConfig(max_steps=2, device="cuda"))
    assert weights_digest(model) == before
    assert devices_of(model) == {torch.device("cpu")}


def test_trainer_config_rejects_an_unknown_device(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRAINER_TEST_TOKEN", "tok-b")  # base() names it for one owner
    with pytest.raises(ConfigError) as info:
        parse_config(_set(base(), "training.device", "gpu"), tmp_path)
    assert str(info.value).startswith("training.device"), str(info.value)
    assert "cuda:N" in str(info.value)
    ok = parse_config(_set(base(), "training.device", "cuda:1"), tmp_path)
    assert ok.training.device == "cuda:1"  # well formed; whether it exists is checked on use


@needs_no_cuda
def test_trainer_inference_runs_on_the_configured_device(old_new) -> None:
    """D_hard, its systematic cut, the next round's failures and the embedded payload all run
    the model where [training] device says: asked for a GPU this machine lacks, each says so
    instead of quietly running on the CPU."""
    model, (_, val) = variant("topk", local_search=False), old_new
    dhard = build_dhard(model, val, device="cpu")
    calls = {
        "build_dhard": lambda device: build_dhard(model, val, device=device),
        "systematic": lambda device: systematic(model, val, dhard, 5, 0.5, device=device),
        "remaining_failures": lambda device: remaining_failures(
            model, val, dhard.eval, dhard.classes, 5, 0.5, device=device
        ),
        "hard_payload": lambda device: hard_payload(model, dhard.shared, "embedded", device),
    }
    for name, call in calls.items():
        call("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            call("cuda")
            pytest.fail(f"{name} ran without the GPU it was given")


class _Scaled(nn.Module):
    """Multiplies each row by (1, 2, 3): with `device_aware=False`, the bug this file hunts."""

    def __init__(self, device_aware: bool):
        super().__init__()
        self.device_aware = device_aware

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device if self.device_aware else None
        return x * (torch.arange(3, device=device) + 1)


def test_checker_catches_a_tensor_made_without_device() -> None:
    x, expected = torch.ones(2, 3), torch.tensor([[1.0, 2, 3]] * 2)
    with DeviceMixChecker([Path(__file__)]):
        assert torch.equal(_Scaled(device_aware=True)(x), expected)
        with pytest.raises(DeviceMixError, match=r"mixes devices \(cpu, meta\)"):
            _Scaled(device_aware=False)(x)


@pytest.mark.parametrize(("gate", "local_search"), VARIANTS, ids=VARIANT_IDS)
def test_every_gate_trains_and_infers_without_device_bugs(old_new, gate, local_search) -> None:
    """Training, fine-tuning, evaluation, prediction and embedding, with every tensor made in
    moe/ without device= sent to another device than the model's (see helpers_device)."""
    model = variant(gate, local_search)
    _, test = old_new
    with DeviceMixChecker([MOE_SOURCES]) as checker:
        trained, tuned = train_then_finetune(model, old_new, "cpu")
        metrics = evaluate(model, test, batch_size=50)
        predict(model, test.features, batch_size=50)
        embed_numpy(model, test.features, batch_size=50)
    assert checker.redirected == []  # no device-less factory call on the way
    assert np.isfinite(trained.epoch_losses + tuned.epoch_losses).all()
    assert 0.0 <= metrics.accuracy <= 1.0
    if local_search:
        assert all(bool(layer.permutation.frozen) for layer in model.moe_layers)


@needs_cuda
@pytest.mark.parametrize(("gate", "local_search"), VARIANTS, ids=VARIANT_IDS)
def test_every_gate_trains_on_cuda_and_comes_back(old_new, gate, local_search) -> None:
    model = variant(gate, local_search)
    trained, tuned = train_then_finetune(model, old_new, "cuda", steps=12)
    assert np.isfinite(trained.epoch_losses + tuned.epoch_losses).all()
    assert devices_of(model) == {torch.device("cpu")}
    assert model.last_aux_loss.device.type == "cpu"
    if local_search:
        assert all(bool(layer.permutation.frozen) for layer in model.moe_layers)
    _, test = old_new
    on_gpu = evaluate(model, test, device="cuda")
    on_cpu = evaluate(model, test, device="cpu")
    assert devices_of(model) == {torch.device("cpu")}
    # Not bit-equal: GPU kernels (TF32 convolutions among them) round differently, and a row
    # whose two best experts are nearly tied may route differently.
    assert abs(on_gpu.accuracy - on_cpu.accuracy) <= 0.02
    assert on_gpu.loss == pytest.approx(on_cpu.loss, rel=0.02)
    agree = predict(model, test.features, device="cuda") == predict(model, test.features)
    assert agree.mean() >= 0.98
    gpu_emb = embed_numpy(model, test.features, device="cuda")
    assert np.median(np.abs(gpu_emb - embed_numpy(model, test.features))) < 1e-2


@needs_cuda
def test_cuda_checkpoint_copy_is_handed_back_on_the_cpu(old_new) -> None:
    model = variant("topk", local_search=False)
    cfg = TrainConfig(epochs=2, batch_size=64, seed=0, device="cuda")
    early = train_with_checkpoint(model, old_new[0], cfg, checkpoint_epoch=1)
    assert early is not model
    assert devices_of(early) == devices_of(model) == {torch.device("cpu")}


@needs_cuda
@pytest.mark.parametrize(("gate", "local_search"), [("topk", True), ("comet", False)])
def test_cuda_training_repeats_for_a_seed(old_new, gate, local_search) -> None:
    """The same seed on the same GPU gives the same weights (the trainer's re-runs under one run
    id rely on it); local search's Gumbel noise is drawn from the seeded CUDA generator."""
    runs = []
    for _ in range(2):
        model = variant(gate, local_search)
        train_then_finetune(model, old_new, "cuda", steps=12)
        runs.append(weights_digest(model))
    assert runs[0] == runs[1]
