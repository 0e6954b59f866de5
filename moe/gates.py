"""Routers. Each gate maps tokens h (B, d) to combine weights (B, E) and an auxiliary loss.

Combine weights have at most k non-zeros per row (COMET: exactly so in eval mode; in training
mode once its trees have converged, which the entropy penalty drives). Hash routing also sees the
raw input, because its expert choice must not change while the stem trains.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from moe.config import ModelConfig


def sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Balance exp(logits) (B, E): rows sum to 1, columns to B/E (in the limit of iterations).

    Works in log space so large logits do not overflow. The last step normalises rows, so
    rows are exact and columns approximate.
    """
    b, e = logits.shape
    log_p = logits.float()
    log_col = math.log(b / e)
    for _ in range(iters):
        log_p = log_p - torch.logsumexp(log_p, dim=0, keepdim=True) + log_col
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
    return log_p.exp()


def _topk_combine(scores: torch.Tensor, probs: torch.Tensor, k: int) -> torch.Tensor:
    """Pick k experts per row by `scores`; weights are `probs` there.

    For k > 1 the weights are renormalised to sum 1 (GShard-style). For k = 1 the raw
    probability is kept, as in Switch: renormalised it would be the constant 1 and the router
    would get no gradient from the task loss. A tiny floor keeps an underflowed softmax value
    from silently dropping a chosen expert (routing is read from the non-zeros).
    """
    idx = scores.topk(k, dim=1).indices
    picked = probs.gather(1, idx).clamp_min(1e-12)
    if k > 1:
        picked = picked / picked.sum(dim=1, keepdim=True)
    return torch.zeros_like(probs).scatter(1, idx, picked)


class TopKGate(nn.Module):
    """Top-k softmax router with the Switch balancing loss and the router z-loss."""

    def __init__(self, dim: int, cfg: ModelConfig):
        super().__init__()
        self.router = nn.Linear(dim, cfg.num_experts, bias=False)
        self.k = cfg.top_k
        self.alpha = cfg.balance_alpha
        self.z_coef = cfg.z_loss_coef

    def forward(self, h: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.router(h)
        probs = z.softmax(dim=1)
        combine = _topk_combine(z, probs, self.k)
        return combine, self.loss(z, probs, combine)

    def loss(self, z: torch.Tensor, probs: torch.Tensor, combine: torch.Tensor) -> torch.Tensor:
        """alpha * E * sum_i f_i * P_i + z_coef * mean(logsumexp(z)^2).

        f_i: fraction of the batch's top-k assignments that go to expert i (not differentiable);
        P_i: mean router probability of expert i (carries the gradient). Minimised by uniform
        routing, where it equals alpha.
        """
        e = probs.shape[1]
        assigned = (combine > 0).float()
        f = assigned.sum(dim=0) / assigned.sum().clamp_min(1.0)
        balance = self.alpha * e * (f.detach() * probs.mean(dim=0)).sum()
        z_loss = self.z_coef * torch.logsumexp(z, dim=1).pow(2).mean()
        return balance + z_loss


class SinkhornGate(nn.Module):
    """Top-k chosen on the Sinkhorn-balanced matrix; gate values from the raw softmax.

    Balancing needs a batch, so it is used in training only; eval routes by plain top-k, which
    keeps a prediction independent of the other rows in its batch. No auxiliary loss.
    """

    def __init__(self, dim: int, cfg: ModelConfig):
        super().__init__()
        self.router = nn.Linear(dim, cfg.num_experts, bias=False)
        self.k = cfg.top_k
        self.iters = cfg.sinkhorn_iters

    def forward(self, h: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.router(h)
        probs = z.softmax(dim=1)
        if self.training and h.shape[0] > 1:
            with torch.no_grad():
                scores = sinkhorn(z.detach(), self.iters)
        else:
            scores = z
        return _topk_combine(scores, probs, self.k), z.new_zeros(())


class HashGate(nn.Module):
    """Fixed routing by a hash of the raw input: k consecutive experts from hash mod E.

    The raw input is quantised (1/1024 steps) and hashed with a seeded universal hash, so the
    same input always goes to the same experts, across batches, processes and platforms.
    Weights are 1/k each, so the active parameters match top-k gates.
    """

    _P = (1 << 31) - 1

    def __init__(self, dim: int, cfg: ModelConfig):
        super().__init__()
        self.k = cfg.top_k
        self.e = cfg.num_experts
        n_in = math.prod(cfg.input_shape)
        g = torch.Generator().manual_seed(cfg.hash_seed)
        # Buffers, not parameters: part of the saved file so a reloaded model routes the same.
        self.register_buffer("coef", torch.randint(1, 1 << 20, (n_in,), generator=g))
        self.register_buffer("ab", torch.randint(1, self._P, (2,), generator=g))

    def hash(self, raw: torch.Tensor) -> torch.Tensor:
        q = (raw.reshape(raw.shape[0], -1).double() * 1024).round().clamp(-(1 << 20), 1 << 20)
        s = (q.long() * self.coef).sum(dim=1) % self._P
        return (self.ab[0] * s + self.ab[1]) % self._P

    def forward(self, h: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.hash(raw) % self.e
        idx = (base[:, None] + torch.arange(self.k, device=h.device)[None, :]) % self.e
        combine = torch.zeros(h.shape[0], self.e, dtype=h.dtype, device=h.device)
        combine.scatter_(1, idx, 1.0 / self.k)
        return combine, h.new_zeros(())


def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """0 below -gamma/2, 1 above gamma/2, cubic 3t/(2 gamma) - 2t^3/gamma^3 + 1/2 between."""
    mid = 1.5 * t / gamma - 2.0 * t.pow(3) / gamma**3 + 0.5
    return torch.where(t <= -gamma / 2, 0.0, torch.where(t >= gamma / 2, 1.0, mid))


class CometGate(nn.Module):
    """COMET: k soft binary trees of depth ceil(log2 E); the leaves are experts.

    Each internal node sends x left with S(w.x + b); a leaf's probability is the product along
    its path. Per-input softmax weights mix the k trees. A leaf-entropy penalty drives every tree
    to a single leaf, so at most k experts per input. In eval mode the trees are hardened (each
    node goes left iff S >= 1/2), which makes "at most k experts" exact whatever the training
    state. With E not a power of two, leaf l maps to expert l mod E.
    """

    def __init__(self, dim: int, cfg: ModelConfig):
        super().__init__()
        self.k = cfg.top_k
        self.e = cfg.num_experts
        self.depth = max(1, math.ceil(math.log2(self.e)))
        self.leaves = 1 << self.depth
        self.gamma = cfg.comet_gamma
        self.entropy_coef = cfg.comet_entropy_coef
        # One linear map gives all k * (leaves - 1) node logits at once.
        self.nodes = nn.Linear(dim, self.k * (self.leaves - 1))
        nn.init.uniform_(self.nodes.weight, -0.5 * self.gamma, 0.5 * self.gamma)
        nn.init.zeros_(self.nodes.bias)
        self.tree_mix = nn.Linear(dim, self.k)
        self.register_buffer("leaf_expert", torch.arange(self.leaves) % self.e, persistent=False)

    def leaf_probs(self, h: torch.Tensor, hard: bool) -> torch.Tensor:
        """(B, k, leaves) leaf probabilities; nodes in heap order (root 0, children 2i+1, 2i+2)."""
        b = h.shape[0]
        s = smooth_step(self.nodes(h), self.gamma).view(b, self.k, self.leaves - 1)
        if hard:
            s = (s >= 0.5).to(h.dtype)
        probs = h.new_ones(b, self.k, 1)
        first = 0
        for level in range(self.depth):
            n = 1 << level
            left = s[:, :, first : first + n]
            # Children of node j at this level are 2j (left) and 2j+1 (right) at the next.
            probs = torch.stack([probs * left, probs * (1 - left)], dim=3).view(b, self.k, 2 * n)
            first += n
        return probs

    def forward(self, h: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hard = not self.training
        leaf = self.leaf_probs(h, hard)
        mix = self.tree_mix(h).softmax(dim=1)
        weighted = (leaf * mix[:, :, None]).sum(dim=1)  # (B, leaves)
        combine = h.new_zeros(h.shape[0], self.e).index_add(1, self.leaf_expert, weighted)
        if hard:
            return combine, h.new_zeros(())
        entropy = -(leaf * leaf.clamp_min(1e-9).log()).sum(dim=2).mean()
        return combine, self.entropy_coef * entropy


class DenseGate(nn.Module):
    """The dense baseline's trivial router: everything to the single expert, weight 1."""

    def forward(self, h: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h.new_ones(h.shape[0], 1), h.new_zeros(())


def build_gate(dim: int, cfg: ModelConfig) -> nn.Module:
    if cfg.gate == "topk":
        return TopKGate(dim, cfg)
    if cfg.gate == "sinkhorn":
        return SinkhornGate(dim, cfg)
    if cfg.gate == "hash":
        return HashGate(dim, cfg)
    if cfg.gate == "comet":
        return CometGate(dim, cfg)
    if cfg.gate == "dense":
        return DenseGate()
    raise ValueError(f"unknown gate {cfg.gate!r}")
