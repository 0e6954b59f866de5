"""The owner's admission policy: real models are admitted, crafted overflow models are refused
before they touch private rows, the interval bounds are sound, and `[models]` parses strictly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_grpc import digits_data, tiny_model_bytes
from helpers_moe import digits, tiny_config
from torch import nn

import moe.gates.topk
from moe.config import GATES, STEMS, ModelConfig
from moe.io import model_from_bytes, model_to_bytes
from moe.model import MoEClassifier, build_model
from moe.train import TrainConfig, fit_normalization, train
from mycroft.data.base import LabeledData
from mycroft.errors import ConfigError, ModelFileError
from owner_node.admission import (
    AdmissionPolicy,
    activation_bounds,
    admit,
    input_bound_of,
    parse_admission,
)

NAMES = tuple(str(i) for i in range(10))
FASHION_NAMES = tuple(f"c{i}" for i in range(10))
DEFAULT = AdmissionPolicy()


def table_digits() -> LabeledData:
    """The owner's digits as a table (N, 64): what an mlp-stem model reads."""
    d = digits_data()
    return LabeledData(d.features.reshape(len(d), -1), d.labels, d.class_names, d.row_ids)


def data_for(stem: str) -> LabeledData:
    return digits_data() if stem == "conv" else table_digits()


def small_model(stem: str = "conv", seed: int = 0, **overrides) -> MoEClassifier:
    """A fresh model for the owner's digits, normalised like the trainer's, as the owner
    receives it (through the file format)."""
    data = data_for(stem)
    mean, std = fit_normalization(data)
    fields = {
        "input_shape": data.input_shape,
        "class_names": data.class_names,
        "stem": stem,
        "num_experts": 4,
        "top_k": 2,
        "norm_mean": tuple(mean.tolist()),
        "norm_std": tuple(std.tolist()),
    }
    cfg = tiny_config(**{**fields, **overrides})  # tiny_config's widths, 10 classes
    return model_from_bytes(model_to_bytes(build_model(cfg, seed=seed)))


def refusal(model: MoEClassifier, policy: AdmissionPolicy = DEFAULT, bound: float = 1.0) -> str:
    with pytest.raises(ModelFileError) as info:
        admit(model, policy, bound)
    msg = str(info.value)
    assert msg.startswith("model refused by the owner's admission policy: "), msg
    return msg


# --- real models are admitted -----------------------------------------------------------------


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("stem", STEMS)
def test_fresh_model_of_every_stem_and_gate_is_admitted(stem: str, gate: str) -> None:
    model = small_model(stem, gate=gate)
    admit(model, DEFAULT, input_bound_of(data_for(stem).features))


@pytest.mark.parametrize("gate", ["topk", "comet"])
def test_local_search_model_is_admitted(gate: str) -> None:
    model = small_model("conv", gate=gate, local_search=True, num_moe_layers=2)
    assert all(layer.permutation is not None for layer in model.moe_layers)
    admit(model, DEFAULT, input_bound_of(digits_data().features))


@pytest.mark.parametrize("shape", [(1, 8, 8), (64,)])
def test_tiny_test_models_are_admitted(shape: tuple[int, ...]) -> None:
    data = digits_data() if len(shape) == 3 else table_digits()
    admit(model_from_bytes(tiny_model_bytes(data)), DEFAULT, input_bound_of(data.features))


@pytest.mark.parametrize("normalise", [True, False])
def test_conv_model_on_synthetic_images_is_admitted(normalise: bool) -> None:
    x = np.random.default_rng(0).uniform(0, 255, size=(300, 3, 16, 16)).astype(np.float32)
    bound = input_bound_of(x)
    assert bound == 256.0
    cfg = ModelConfig(input_shape=(3, 16, 16), num_classes=5, class_names=NAMES[:5])
    model = build_model(cfg, seed=3)
    if normalise:
        model.set_normalization(x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3)))
    admit(model_from_bytes(model_to_bytes(model)), DEFAULT, bound)


def fashion_demo_model() -> MoEClassifier:
    """The demos' model (scenario defaults: conv stem, 4 experts, top-2, embed_dim 64)."""
    cfg = ModelConfig(
        input_shape=(1, 28, 28),
        num_classes=10,
        class_names=FASHION_NAMES,
        num_experts=4,
        top_k=2,
        embed_dim=64,
        norm_mean=(0.286,),
        norm_std=(0.353,),
    )
    return build_model(cfg, seed=0)


def test_fashion_demo_model_is_admitted() -> None:
    admit(fashion_demo_model(), DEFAULT, 1.0)


@pytest.mark.parametrize("stem", STEMS)
def test_trained_model_is_admitted(stem: str) -> None:
    data = digits() if stem == "conv" else table_digits()
    model = build_model(tiny_config(input_shape=data.input_shape, stem=stem), seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-2, max_steps=40, num_threads=1)
    train(model, data, cfg)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    admit(model_from_bytes(model_to_bytes(model)), DEFAULT, input_bound_of(data.features))


# --- the interval bounds are sound ------------------------------------------------------------


def observed_maxima(model: MoEClassifier, x: torch.Tensor) -> dict[str, float]:
    seen: dict[str, float] = {}

    def hook(name: str):
        def record(_m, _args, out) -> None:
            t = out[0] if isinstance(out, tuple) else out
            seen[name] = max(seen.get(name, 0.0), float(t.abs().max()))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.inference_mode():
            model.head(model.embed(x))
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize(
    ("stem", "gate"), [("conv", "topk"), ("mlp", "comet"), ("conv", "hash"), ("mlp", "dense")]
)
def test_activation_bounds_hold_on_real_rows_and_corners(stem: str, gate: str) -> None:
    model = small_model(stem, seed=5, gate=gate)
    data = data_for(stem)
    bound = input_bound_of(data.features)
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (64, *data.input_shape), generator=g) * 2.0 - 1.0
    x = torch.cat([torch.from_numpy(data.features[:256]), signs * bound])
    bounds = activation_bounds(model, bound)
    seen = observed_maxima(model, x)
    checked = [k for k in bounds if k in seen]
    assert {"stem.0", "moe_layers.0", "moe_layers.0.norm", "embed_proj", "head"} <= set(checked)
    for stage in checked:
        assert seen[stage] <= bounds[stage], (stage, seen[stage], bounds[stage])


# --- crafted models are refused ---------------------------------------------------------------


def box_oracle_model(big: float) -> MoEClassifier:
    """The attack: stem.0 + ReLU compute how far pixel 36 lies above 0.5 (distance outside a
    box), stem.2 multiplies it by `big`: embeddings overflow exactly for rows outside the box."""
    model = small_model("mlp", norm_mean=None, norm_std=None)
    with torch.no_grad():
        for p in model.stem.parameters():
            p.zero_()
        model.stem[0].weight[0, 36] = 1.0
        model.stem[0].bias[0] = -0.5
        model.stem[2].weight.fill_(big)
    return model_from_bytes(model_to_bytes(model))  # finite weights: the file format accepts it


def test_box_oracle_model_is_refused_for_its_weights() -> None:
    model = box_oracle_model(1e20)
    data = table_digits()
    with torch.inference_mode():
        emb = model.embed(torch.from_numpy(data.features))
    finite = torch.isfinite(emb).all(dim=1)
    assert finite.any() and not finite.all()  # the oracle: inside the box fine, outside NaN
    msg = refusal(model, bound=input_bound_of(data.features))
    assert "models.max_abs_weight: stem.2.weight has |w| = 1e+20 > 1e+04" in msg


def test_box_oracle_under_a_loose_weight_limit_is_refused_by_the_bound() -> None:
    """Weights allowed, but the bound (1.5 * 1e11, tight here) exceeds the stricter limit."""
    policy = AdmissionPolicy(max_abs_weight=1e12, max_activation=1e10)
    msg = refusal(box_oracle_model(1e11), policy)
    assert "models.max_activation: sound bound on |stem.2 output|" in msg


def test_stacked_weights_within_limit_are_refused_by_the_activation_bound() -> None:
    """Every weight is exactly max_abs_weight (allowed), but three stacked layers reach |h| of
    ~4e16 on real inputs: below float32 overflow, so only the sound bound catches it."""
    model = small_model("conv", stem_dim=16, norm_mean=None, norm_std=None)
    with torch.no_grad():
        for name, p in model.stem.named_parameters():
            p.fill_(1e4 if name.endswith("weight") else 0.0)
    msg = refusal(model)
    assert "models.max_activation: sound bound on |stem.7 output| for |x| <= 1 is 4.3" in msg
    with torch.inference_mode():
        h = model.stem(torch.ones(1, 1, 8, 8))
    assert float(h.max()) > 1e15  # the bound is not vacuous: real rows get there


def test_large_embedding_projection_is_refused() -> None:
    model = small_model("conv")
    with torch.no_grad():
        model.embed_proj[1].weight.fill_(1e4)  # LN output <= sqrt(32), times 32 * 1e4
    assert "models.max_embedding: sound bound on |embed_proj output|" in refusal(model)


def test_tiny_norm_std_and_large_norm_mean_are_refused() -> None:
    model = small_model("conv", norm_mean=(0.0,), norm_std=(1e-30,))
    assert "models.max_abs_weight: 1/norm_std has |w| = 1e+30 > 1e+04" in refusal(model)
    model = small_model("mlp", norm_mean=(1e6,) * 64, norm_std=(1.0,) * 64)
    assert "models.max_abs_weight: norm_mean has |w| = 1e+06" in refusal(model)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weight_is_refused(bad: float) -> None:
    model = small_model("conv")
    with torch.no_grad():
        model.moe_layers[0].experts[1].fc1.weight[0, 0] = bad
    msg = refusal(model)
    assert "models.max_abs_weight: moe_layers.0.experts.1.fc1.weight holds NaN" in msg


def test_allow_lists_and_sizes() -> None:
    conv_hash = small_model("conv", gate="hash", num_moe_layers=2)
    assert "models.stems: stem 'conv'" in refusal(conv_hash, AdmissionPolicy(stems=("mlp",)))
    assert "models.gates: gate 'hash'" in refusal(conv_hash, AdmissionPolicy(gates=("topk",)))
    assert "models.max_moe_layers: 2 MoE layers > 1" in refusal(
        conv_hash, AdmissionPolicy(max_moe_layers=1)
    )
    assert "models.max_experts: 4 experts > 2" in refusal(conv_hash, AdmissionPolicy(max_experts=2))
    assert "models.max_parameters:" in refusal(conv_hash, AdmissionPolicy(max_parameters=1000))
    n = sum(p.numel() for p in conv_hash.parameters())
    ok = AdmissionPolicy(
        stems=("conv",), gates=("hash", "topk"), max_moe_layers=2, max_experts=4, max_parameters=n
    )
    admit(conv_hash, ok, 1.0)
    dense = small_model("conv", gate="dense", num_experts=8)  # builds one (wider) expert
    admit(dense, AdmissionPolicy(max_experts=1), 1.0)


def test_unboundable_modules_are_refused() -> None:
    model = small_model("conv")
    model.stem[1] = nn.Sigmoid()
    assert "architecture: stem.1 (Sigmoid) cannot be bounded" in refusal(model)

    class LoudGate(moe.gates.TopKGate):  # a subclass may override forward: not trusted
        pass

    model = small_model("conv")
    model.moe_layers[0].gate.__class__ = LoudGate
    assert "architecture: moe_layers.0.gate (LoudGate) cannot be bounded" in refusal(model)

    model = small_model("conv")
    model.head.forward = lambda x: x * 1e30
    assert "architecture: head has a patched forward" in refusal(model)

    assert "is not a MoEClassifier" in refusal(nn.Linear(2, 2))  # type: ignore[arg-type]
    assert "only float32" in refusal(small_model("conv").double())


def test_probes_catch_what_the_interval_bound_trusts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound trusts the gates' maths (combine weights sum to <= 1); the probes check it."""
    model = small_model("conv", gate="topk")
    real = moe.gates.topk.topk_combine
    monkeypatch.setattr(moe.gates.topk, "topk_combine", lambda s, p, k: real(s, p, k) * 1e30)
    msg = refusal(model, bound=1.0)
    assert "models.probes: probe 0 (|x| <= 1) drives " in msg


def test_admit_is_deterministic_and_leaves_the_model_alone() -> None:
    model = small_model("conv", gate="comet", local_search=True)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    admit(model, DEFAULT, 1.0)
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    bad = box_oracle_model(1e20)
    assert refusal(bad) == refusal(bad)


@pytest.mark.parametrize("bound", [0.0, -1.0, math.nan, math.inf])
def test_admit_needs_a_positive_finite_input_bound(bound: float) -> None:
    with pytest.raises(ValueError, match="input_bound"):
        admit(small_model("conv"), DEFAULT, bound)


# --- [models] config ----------------------------------------------------------------------------


def test_parse_admission_reads_every_setting() -> None:
    assert parse_admission({}) == AdmissionPolicy()
    p = parse_admission(
        {
            "max_abs_weight": 100,
            "max_activation": 1e12,
            "max_embedding": 1e4,
            "stems": ["mlp"],
            "gates": ["topk", "dense"],
            "max_parameters": 1_000_000,
            "max_moe_layers": 2,
            "max_experts": 16,
            "input_bound": 8,
            "probes": 16,
        }
    )
    assert p.max_abs_weight == 100.0 and isinstance(p.max_abs_weight, float)
    assert (p.stems, p.gates) == (("mlp",), ("topk", "dense"))
    assert (p.max_parameters, p.max_moe_layers, p.max_experts, p.probes) == (1_000_000, 2, 16, 16)
    assert p.input_bound == 8.0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_weight": 1.0}, "models.max_weight: unknown field; known: "),
        (
            {"max_abs_weight": math.nan},
            "models.max_abs_weight: must be a finite number, got nan",
        ),
        ({"max_activation": -1.0}, "models.max_activation: must be > 0, got -1.0"),
        ({"max_embedding": math.inf}, "models.max_embedding: must be a finite number, got inf"),
        ({"max_activation": 1e20}, "models.max_activation: must be at most 1e+17"),
        ({"input_bound": 0}, "models.input_bound: must be > 0, got 0"),
        ({"max_abs_weight": True}, "models.max_abs_weight: must be a number, got True"),
        ({"max_abs_weight": "1e4"}, "models.max_abs_weight: must be a number, got '1e4'"),
        ({"max_parameters": 1.5}, "models.max_parameters: must be an integer, got 1.5"),
        ({"max_experts": 0}, "models.max_experts: must be >= 1, got 0"),
        ({"probes": 0}, "models.probes: must be >= 1, got 0"),
        ({"probes": 10**6}, "models.probes: must be at most 4096"),
        ({"stems": ["resnet"]}, "models.stems[0]: unknown stem 'resnet'; known: conv, mlp"),
        ({"gates": ["topk", "moe"]}, "models.gates[1]: unknown gate 'moe'; known: topk"),
        ({"gates": ["topk", "topk"]}, "models.gates[1]: 'topk' is listed twice"),
        ({"stems": []}, "models.stems: must not be empty"),
        ({"stems": "conv"}, "models.stems: must be a list, got 'conv'"),
    ],
)
def test_parse_admission_errors_name_the_field(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_admission(table)
    assert str(info.value).startswith(message), str(info.value)


def test_parse_admission_needs_a_table() -> None:
    with pytest.raises(ConfigError, match="^models: must be a table"):
        parse_admission(["max_abs_weight"])  # type: ignore[arg-type]


# --- input_bound_of -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.3], 1.0),
        ([0.0], 1.0),
        ([16.0], 16.0),
        ([17.0], 32.0),
        ([-17.0, 3.0], 32.0),
        ([-16.0, 0.5], 16.0),
        ([1.0], 1.0),
        ([1.0001], 2.0),
        ([1e-3, -2.5], 4.0),
        ([], 1.0),
    ],
)
def test_input_bound_of_rounds_up_to_a_power_of_two(values: list, expected: float) -> None:
    assert input_bound_of(np.asarray(values, dtype=np.float32)) == expected


def test_input_bound_of_images_ints_and_slices() -> None:
    assert input_bound_of(digits_data().features) == 1.0
    assert input_bound_of(np.array([[0, 255], [-3, 7]], dtype=np.int64)) == 256.0
    x = np.zeros((3000, 784), dtype=np.float32)  # more than one slice
    x[-1, -1] = -100.0
    assert input_bound_of(x) == 128.0
    assert input_bound_of(x[:, ::2]) == 1.0  # a strided view: the -100 is not in it
    x[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        input_bound_of(x)
