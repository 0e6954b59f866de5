"""Fixed routing by a seeded hash of the raw input."""

from __future__ import annotations

import math

import torch
from torch import nn

from moe.config import ModelConfig


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


Gate = HashGate
