"""COMET: k soft binary trees whose leaves are experts, with a leaf-entropy penalty."""

from __future__ import annotations

import math

import torch
from torch import nn

from moe.config import ModelConfig


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


Gate = CometGate
