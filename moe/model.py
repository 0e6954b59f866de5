"""MoEClassifier: stem -> sparse MoE layer(s) -> penultimate embedding -> linear head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from moe.config import ModelConfig
from moe.gates import build_gate
from moe.permutation import ExpertPermutation


class Expert(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MoELayer(nn.Module):
    """Pre-norm residual MoE block: h + sum_e combine[:, e] * expert_e(LN(h)).

    Only the rows routed to an expert (non-zero combine weight) are sent through it.
    How many experts, how wide, and whether they can be permuted is the gate's (GateSpec).
    """

    def __init__(self, dim: int, cfg: ModelConfig):
        super().__init__()
        spec = cfg.gate_spec
        hidden = spec.expert_hidden(cfg)
        self.norm = nn.LayerNorm(dim)
        self.gate = build_gate(dim, cfg)
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(spec.experts(cfg)))
        self.permutation = (
            ExpertPermutation(cfg.num_experts, cfg) if cfg.local_search and spec.sparse else None
        )

    def forward(
        self, h: torch.Tensor, raw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.norm(h)
        combine, aux = self.gate(x, raw)
        if self.permutation is not None:
            combine = self.permutation(combine)
        routed = combine.detach() != 0
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):
            idx = routed[:, e].nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            out = out.index_add(0, idx, expert(x[idx]) * combine[idx, e : e + 1])
        return h + out, aux, routed.sum(dim=0)


def _conv_stem(cfg: ModelConfig) -> nn.Module:
    c, h, w = cfg.input_shape
    ch = cfg.conv_channels
    return nn.Sequential(
        nn.Conv2d(c, ch, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(ch, 2 * ch, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * ch * (h // 4) * (w // 4), cfg.stem_dim),
        nn.ReLU(),
    )


def _mlp_stem(cfg: ModelConfig) -> nn.Module:
    return nn.Sequential(
        nn.Linear(cfg.input_shape[0], cfg.stem_dim),
        nn.ReLU(),
        nn.Linear(cfg.stem_dim, cfg.stem_dim),
        nn.ReLU(),
    )


class MoEClassifier(nn.Module):
    """Classifier over raw inputs of shape (N, *config.input_shape).

    After each forward: `last_aux_loss` (scalar tensor, summed over MoE layers, part of the
    training loss) and `last_expert_counts` ((layers, E) long tensor: how many rows each expert
    received in that batch, counting every one of a row's <= k assignments).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config  # immutable: set_normalization replaces it
        self.stem = _conv_stem(config) if config.stem == "conv" else _mlp_stem(config)
        self.moe_layers = nn.ModuleList(
            MoELayer(config.stem_dim, config) for _ in range(config.num_moe_layers)
        )
        self.embed_proj = nn.Sequential(
            nn.LayerNorm(config.stem_dim), nn.Linear(config.stem_dim, config.embed_dim), nn.ReLU()
        )
        self.head = nn.Linear(config.embed_dim, config.num_classes)
        # Derived from the config, so not saved as tensors (persistent=False).
        self.register_buffer("norm_mean", torch.zeros(config.norm_size), persistent=False)
        self.register_buffer("norm_std", torch.ones(config.norm_size), persistent=False)
        if config.norm_mean is not None and config.norm_std is not None:
            self.set_normalization(np.asarray(config.norm_mean), np.asarray(config.norm_std))
        # Non-persistent buffers, not plain attributes: they follow the model across .to(), so a
        # value read before the first forward is on the model's device like the ones after it.
        self.last_aux_loss: torch.Tensor
        self.last_expert_counts: torch.Tensor
        self.register_buffer("last_aux_loss", torch.zeros(()), persistent=False)
        counts = torch.zeros(config.num_moe_layers, config.effective_experts, dtype=torch.long)
        self.register_buffer("last_expert_counts", counts, persistent=False)

    def set_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Store input normalisation in the config (so it is saved) and in the buffers."""
        self.config = self.config.replace(
            norm_mean=np.asarray(mean).ravel(), norm_std=np.asarray(std).ravel()
        )
        with torch.no_grad():
            for buffer, values in (
                (self.norm_mean, self.config.norm_mean),
                (self.norm_std, self.config.norm_std),
            ):
                buffer.copy_(torch.tensor(values, device=buffer.device))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.config.input_shape:
            raise ValueError(
                f"input shape {tuple(x.shape[1:])} does not match model {self.config.input_shape}"
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.norm_mean.view(shape)) / self.norm_std.view(shape)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(self._normalise(x))
        aux = h.new_zeros(())
        counts = []
        for layer in self.moe_layers:
            h, layer_aux, layer_counts = layer(h, x)
            aux = aux + layer_aux
            counts.append(layer_counts)
        self.last_aux_loss = aux
        self.last_expert_counts = torch.stack(counts).detach()
        return self.embed_proj(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._trunk(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate vectors (N, embed_dim): logits = embed(x) @ W.T + b."""
        return self._trunk(x)

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (C, embed_dim), b (C,)) as float32 numpy copies."""
        w = self.head.weight.detach().cpu().numpy().astype(np.float32, copy=True)
        b = self.head.bias.detach().cpu().numpy().astype(np.float32, copy=True)
        return w, b


def build_model(config: ModelConfig, seed: int | None = None) -> MoEClassifier:
    """A fresh model; with `seed`, its initial weights are reproducible (global RNG untouched)."""
    if seed is None:
        return MoEClassifier(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MoEClassifier(config)


def parameter_counts(model: MoEClassifier) -> dict[str, int]:
    """Total parameters and those active for one input (k of E experts; hash has no router)."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    per_expert = sum(p.numel() for p in model.moe_layers[0].experts[0].parameters())
    idle = (cfg.gate_spec.experts(cfg) - cfg.gate_spec.active_experts(cfg)) * per_expert
    perm = sum(
        layer.permutation.logits.numel()
        for layer in model.moe_layers
        if layer.permutation is not None
    )
    return {"total": total, "active": total - idle * cfg.num_moe_layers - perm}
