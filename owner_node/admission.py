"""The owner's admission policy: which uploaded models may ever touch its private rows.

Defence in depth against models crafted to overflow (inf/NaN) on some private rows and not on
others, which would turn the owner's reactions into an oracle on its data. At upload, before any
private row is embedded, `admit` refuses a model that (1) the owner does not accept (allow-lists,
sizes), (2) holds a non-finite or large weight, (3) cannot be PROVEN to keep every hidden state
and its embedding bounded for every input with |x| <= input_bound (a sound interval bound
through the architecture), or (4) misbehaves on fixed synthetic probe inputs.

The outcome depends on the model, the policy and `input_bound` only. `input_bound_of` rounds
the data's max |x| up to a power of two, so that is all a refusal can tell about the rows.
This module does not import torch at import time: config parsing stays light.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from moe.config import GATES, STEMS
from mycroft.config_base import ConfigModel, Distinct, FieldProblem, Float, Int, Str, parse
from mycroft.errors import ModelFileError

if TYPE_CHECKING:
    import torch

    from moe.model import MoEClassifier

# float32 (or TF32) rounding moves a dot product of n terms by at most ~n * 2^-24 (+ 2^-10 for
# TF32 inputs) relative to the sum of |terms|: < 0.6% for n <= 9 * 8192, the largest fan-in a
# valid config allows. Each bounded operation is multiplied by this factor to stay sound.
_SLACK = 1.01
_F32_MAX = 3.4028234663852886e38
_PROBE_SEED = 0x4D594352  # fixed: the probes, hence the outcome, never vary between calls
_PROBE_ELEMENTS = 1 << 22  # input values per probe batch


_KNOWN = {"stems": STEMS, "gates": GATES}


# Each name once, every one known to the model code; None (no list): allow all.
Names = Annotated[tuple[Str, ...], Field(min_length=1), Distinct]


class AdmissionPolicy(ConfigModel):
    """`[models]` in the owner's config. Bounds are infinity norms; None in a list: allow all.

    Each bound has a cap. max_activation: float32 LayerNorm squares deviations up to 2|h| and
    sums <= 8192 of them, so |h| <= 1e17 keeps that sum below float32's 3.4e38."""

    # per parameter/buffer value, and 1/norm_std, |norm_mean|
    max_abs_weight: Float = Field(1e4, gt=0, le=1e12)
    max_activation: Float = Field(1e15, gt=0, le=1e17)  # sound bound on |hidden state|
    max_embedding: Float = Field(1e6, gt=0, le=1e17)  # sound bound on |penultimate vector|
    stems: Names | None = None
    gates: Names | None = None
    max_parameters: Int | None = Field(None, ge=1, le=10**9)
    max_moe_layers: Int | None = Field(None, ge=1, le=1000)
    # experts actually built per MoE layer (dense: 1)
    max_experts: Int | None = Field(None, ge=1, le=100_000)
    # None: max |x| of the owner's rows, see input_bound_of
    input_bound: Float | None = Field(None, gt=0, le=1e15)
    probes: Int = Field(64, ge=1, le=4096)  # synthetic probe inputs run through the model

    @field_validator("stems", "gates")
    @classmethod
    def _known_names(cls, names: tuple[str, ...] | None, info: ValidationInfo) -> Any:
        kind = str(info.field_name)
        for i, item in enumerate(names or ()):
            if item not in _KNOWN[kind]:
                raise FieldProblem(
                    (i,), f"unknown {kind[:-1]} {item!r}; known: {', '.join(_KNOWN[kind])}"
                )
        return names


class _ModelsTable(ConfigModel):
    models: AdmissionPolicy


def parse_admission(table: Any) -> AdmissionPolicy:
    """The policy from the TOML table `[models]`; every problem raises ConfigError naming it."""
    return parse(_ModelsTable, {"models": table}).models


def input_bound_of(features: np.ndarray) -> float:
    """max |x| over `features`, rounded UP to a power of two (at least 1.0).

    Read in slices (no whole-array copy). The rounding makes this coarse number the only thing
    a refusal can depend on in the data.
    """
    x = np.asarray(features)
    if x.size == 0:
        return 1.0
    x = x.reshape(len(x), -1) if x.ndim > 1 else x.reshape(-1, 1)
    step = max(1, _PROBE_ELEMENTS // x.shape[1])
    m = 0.0
    for start in range(0, len(x), step):
        chunk = x[start : start + step]  # a view; max/min allocate nothing per element
        hi, lo = float(chunk.max()), float(chunk.min())
        if not (math.isfinite(hi) and math.isfinite(lo)):  # max() of a NaN is NaN
            raise ValueError("features hold NaN or infinite values")
        m = max(m, hi, -lo)
    if m <= 1.0:
        return 1.0
    mant, exp = math.frexp(m)  # m = mant * 2**exp, 0.5 <= mant < 1
    return math.ldexp(1.0, exp - 1 if mant == 0.5 else exp)


def _refused(rule: str, detail: str) -> ModelFileError:
    return ModelFileError(f"model refused by the owner's admission policy: {rule}: {detail}")


def admit(model: MoEClassifier, policy: AdmissionPolicy, input_bound: float) -> None:
    """Raise ModelFileError naming the broken rule unless `model` is admitted under `policy`
    for inputs with |x| <= input_bound. Never looks at private rows."""
    import torch

    from moe.model import MoEClassifier

    if isinstance(input_bound, bool) or not 0 < float(input_bound) < math.inf:
        raise ValueError(f"input_bound must be a finite number > 0, got {input_bound!r}")
    if type(model) is not MoEClassifier:
        raise _refused("architecture", f"a {type(model).__name__} is not a MoEClassifier")
    cfg, p = model.config, policy
    for rule, allowed, value in (("stem", p.stems, cfg.stem), ("gate", p.gates, cfg.gate)):
        if allowed is not None and value not in allowed:
            raise _refused(f"models.{rule}s", f"{rule} {value!r} is not in {allowed}")
    for rule, count, what in (
        ("max_moe_layers", len(model.moe_layers), "MoE layers"),
        ("max_experts", max((len(m.experts) for m in model.moe_layers), default=0), "experts"),
        ("max_parameters", sum(t.numel() for t in model.parameters()), "parameters"),
    ):
        limit = getattr(p, rule)
        if limit is not None and count > limit:
            raise _refused(f"models.{rule}", f"{count} {what} > {limit}")

    # Buffers include norm_mean; the input is divided by norm_std, so 1/std acts as a weight.
    inv_std = [("1/norm_std", 1.0 / model.norm_std.detach().abs())]
    lim = p.max_abs_weight
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers(), inv_std):
        if not t.is_floating_point() or t.numel() == 0:
            continue
        if t.dtype != torch.float32:  # the bounds and probes assume float32
            raise _refused("architecture", f"{name} is {t.dtype}, only float32 is admitted")
        if not bool(torch.isfinite(t).all()):
            raise _refused("models.max_abs_weight", f"{name} holds NaN or infinite values")
        if (w := float(t.detach().abs().max())) > lim:
            raise _refused("models.max_abs_weight", f"{name} has |w| = {w:.3g} > {lim:.3g}")

    for stage, bound in activation_bounds(model, input_bound).items():
        rule = "max_embedding" if stage == "embed_proj" else "max_activation"
        if not bound <= (limit := getattr(p, rule)):  # NaN counts as exceeded
            raise _refused(
                f"models.{rule}",
                f"sound bound on |{stage} output| for |x| <= {input_bound:g} is {bound:.3g} "
                f"> {limit:.3g}",
            )
    _probe(model, p, float(input_bound))


def activation_bounds(model: MoEClassifier, input_bound: float) -> dict[str, float]:
    """Sound upper bounds on max |output| of each stage (module path; "input" is the normalised
    input, "embed_proj" the embedding) over all inputs with |x| <= input_bound.

    Bounds are per-feature vectors (per channel in conv feature maps), propagated in float64 and
    reported as their max. A module this cannot bound refuses the model (ModelFileError).
    """
    for name, m in model.named_modules():
        if "forward" in vars(m):  # an instance-level forward would escape the type checks
            raise _refused("architecture", f"{name or 'model'} has a patched forward")
    out: dict[str, float] = {}
    mean = model.norm_mean.detach().double().cpu().numpy()
    std = model.norm_std.detach().double().cpu().numpy()
    vec = (float(input_bound) + np.abs(mean)) / np.abs(std) * _SLACK
    out["input"] = float(vec.max())
    layout = "chan" if len(model.config.input_shape) == 3 else "flat"
    vec, layout = _sequential(model.stem, "stem", vec, layout, out)
    if layout != "flat":
        raise _refused("architecture", "the stem does not end in a flat vector")
    for i, layer in enumerate(model.moe_layers):
        vec = _moe_layer(layer, f"moe_layers.{i}", vec, out)
    vec, _ = _sequential(model.embed_proj, "embed_proj", vec, "flat", out)
    out["embed_proj"] = float(vec.max())
    out["head"] = float(_linear(model.head, "head", vec).max())
    return out


def _absmv(w: torch.Tensor, v: np.ndarray) -> np.ndarray:
    """|W| @ v in float64, W (out, in) or a conv kernel (out, in, kh, kw) summed over space.

    Row slices keep the float64 copy small."""
    import torch

    w = w.detach()
    vt = torch.from_numpy(v)
    step = max(1, _PROBE_ELEMENTS // max(1, w[0].numel()))
    parts = []
    for r in range(0, w.shape[0], step):
        a = w[r : r + step].to("cpu", torch.float64).abs()
        if a.dim() > 2:
            a = a.flatten(2).sum(2)
        parts.append(a @ vt)
    return torch.cat(parts).numpy()


def _bias(m: Any) -> np.ndarray | float:
    b = getattr(m, "bias", None)
    return 0.0 if b is None else b.detach().double().abs().cpu().numpy()


def _linear(m: Any, where: str, vec: np.ndarray) -> np.ndarray:
    from torch import nn

    if type(m) is not nn.Linear or m.in_features != len(vec):
        raise _refused("architecture", f"{where} is not a Linear on {len(vec)} features")
    return (_absmv(m.weight, vec) + _bias(m)) * _SLACK


def _layernorm(m: Any, where: str, vec: np.ndarray) -> np.ndarray:
    """|(x - mean) / sqrt(var + eps)| <= sqrt(n) for ANY finite input (its n deviations squared
    sum to n * var), so the output bound is |gamma| sqrt(n) + |beta|, whatever came in."""
    from torch import nn

    n = len(vec)
    if type(m) is not nn.LayerNorm or tuple(m.normalized_shape) != (n,) or not m.eps > 0:
        raise _refused("architecture", f"{where} is not a LayerNorm over {n} features")
    gamma = 1.0 if m.weight is None else m.weight.detach().double().abs().cpu().numpy()
    return np.broadcast_to(gamma * math.sqrt(n) * _SLACK + _bias(m), (n,)).copy()


def _sequential(
    seq: Any, prefix: str, vec: np.ndarray, layout: str, out: dict[str, float]
) -> tuple[np.ndarray, str]:
    """Layouts: "chan" (feature map, bound per channel), "flat_chan" (a flattened feature map,
    channel-major), "flat" (vector, bound per feature)."""
    from torch import nn

    if type(seq) is not nn.Sequential:
        raise _refused("architecture", f"{prefix} is a {type(seq).__name__}, not a Sequential")
    for name, m in seq.named_children():
        where, t = f"{prefix}.{name}", type(m)
        if t is nn.Conv2d and layout == "chan" and m.groups == 1 and m.in_channels == len(vec):
            # Any padding mode pads with zeros or copies of inputs: |out_c| <= sum |k_c| b + |b_c|.
            vec = (_absmv(m.weight, vec) + _bias(m)) * _SLACK
        elif t in (nn.ReLU, nn.GELU) or (t is nn.MaxPool2d and layout == "chan"):
            pass  # |relu(x)|, |gelu(x)| <= |x|; a max-pool picks one of its inputs
        elif t is nn.Flatten and layout == "chan" and (m.start_dim, m.end_dim) == (1, -1):
            layout = "flat_chan"
        elif t is nn.Linear and layout != "chan":
            if layout == "flat_chan":  # each channel's bound, repeated over its positions
                reps, rem = divmod(m.in_features, len(vec))
                vec = np.repeat(vec, reps) if rem == 0 else vec
                layout = "flat"
            vec = _linear(m, where, vec)
        elif t is nn.LayerNorm and layout == "flat":
            vec = _layernorm(m, where, vec)
        else:
            raise _refused("architecture", f"{where} ({t.__name__}) cannot be bounded here")
        out[where] = float(vec.max())
    return vec, layout


def _moe_layer(layer: Any, where: str, vec: np.ndarray, out: dict[str, float]) -> np.ndarray:
    """h + sum_e combine_e * expert_e(LN(h)): the LN resets the bound, each expert is
    fc2(GELU(fc1(.))), and sum_e |combine_e| <= 1 for every gate of the repo (below)."""
    from torch import nn

    from moe import gates
    from moe.model import Expert, MoELayer
    from moe.permutation import ExpertPermutation

    if type(layer) is not MoELayer:
        raise _refused("architecture", f"{where} is a {type(layer).__name__}, not a MoELayer")
    x = _layernorm(layer.norm, f"{where}.norm", vec)
    out[f"{where}.norm"] = float(x.max())
    g, gt = layer.gate, type(layer.gate)
    # Combine weights are >= 0 and sum to <= 1 in every gate: top-k/sinkhorn take softmax
    # probabilities (k = 1: one probability <= 1; k > 1: renormalised to sum 1); hash gives k
    # weights of 1/k; COMET mixes k trees (leaf probabilities sum to 1 per tree, hard or soft)
    # with softmax weights; dense is the constant 1. The permutation only reorders columns.
    # Router logits only need to be finite (softmax subtracts the max); they are bounded too.
    if gt in (gates.TopKGate, gates.SinkhornGate):
        out[f"{where}.gate.router"] = float(_linear(g.router, f"{where}.gate.router", x).max())
    elif gt is gates.CometGate:
        for sub in ("nodes", "tree_mix"):
            sw = f"{where}.gate.{sub}"
            out[sw] = float(_linear(getattr(g, sub), sw, x).max())
    elif gt not in (gates.HashGate, gates.DenseGate):
        raise _refused("architecture", f"{where}.gate ({gt.__name__}) cannot be bounded")
    if layer.permutation is not None and type(layer.permutation) is not ExpertPermutation:
        raise _refused("architecture", f"{where}.permutation cannot be bounded")
    combine_sum = 1.0 * _SLACK
    worst = np.zeros_like(vec)
    for e, expert in enumerate(layer.experts):
        ew = f"{where}.experts.{e}"
        if type(expert) is not Expert or type(expert.act) is not nn.GELU:
            raise _refused("architecture", f"{ew} ({type(expert).__name__}) cannot be bounded")
        hidden = _linear(expert.fc1, f"{ew}.fc1", x)  # then |GELU(t)| = |t| Phi(t) <= |t|
        out[f"{ew}.fc1"] = float(hidden.max())
        y = _linear(expert.fc2, f"{ew}.fc2", hidden)
        if len(y) != len(vec):
            raise _refused("architecture", f"{ew} does not map back to {len(vec)} features")
        out[ew] = float(y.max())
        worst = np.maximum(worst, y)
    vec = (vec + combine_sum * worst) * _SLACK
    out[where] = float(vec.max())
    return vec


def _probe(model: MoEClassifier, policy: AdmissionPolicy, bound: float) -> None:
    """Run fixed synthetic inputs through embed and head (probe 0: zeros, 1 and 2: the corners
    +-bound, then seeded random corners (odd) and uniform values (even)): catches what the
    interval bound might miss, such as gate maths."""
    import torch
    from torch import nn

    shape = tuple(model.config.input_shape)
    n_in = math.prod(shape)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(_PROBE_SEED)  # the global RNG is left alone
    per = max(1, min(policy.probes, _PROBE_ELEMENTS // n_in))
    ln_inputs: list[torch.Tensor] = []

    def record(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        ln_inputs.append(args[0].detach().abs().flatten(1).amax(1))

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if type(m) is nn.LayerNorm
    ]
    was_training, saved = model.training, (model.last_aux_loss, model.last_expert_counts)
    try:
        model.eval()
        with torch.inference_mode():
            for i0 in range(0, policy.probes, per):
                n = min(per, policy.probes - i0)
                idx = torch.arange(i0, i0 + n)[:, None]
                corner = torch.randint(0, 2, (n, n_in), generator=gen) * 2.0 - 1.0
                uniform = torch.rand(n, n_in, generator=gen) * 2.0 - 1.0
                x = torch.where(idx % 2 == 1, corner, uniform)
                fixed = torch.tensor([0.0, 1.0, -1.0])[idx.clamp(max=2)]
                x = torch.where(idx < 3, fixed, x) * bound
                ln_inputs.clear()
                emb = model.embed(x.view(n, *shape).to(device))
                logits = model.head(emb)
                checks = [
                    (emb.abs().amax(1), policy.max_embedding, "|embedding| (max_embedding)"),
                    (logits.abs().amax(1), _F32_MAX, "|logits| (float32 range)"),
                ]
                if ln_inputs:  # every LayerNorm input: the hidden states before each LN
                    h = torch.stack(ln_inputs).amax(0)
                    checks.append((h, policy.max_activation, "|LayerNorm input| (max_activation)"))
                for values, limit, what in checks:
                    bad = (~(values.double().cpu() <= limit)).nonzero().flatten()
                    if len(bad):
                        k, v = i0 + int(bad[0]), float(values[int(bad[0])])
                        raise _refused(
                            "models.probes",
                            f"probe {k} (|x| <= {bound:g}) drives {what} to {v:.3g} > {limit:.3g}",
                        )
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
        model.last_aux_loss, model.last_expert_counts = saved
