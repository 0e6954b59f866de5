"""Sinkhorn-balanced top-k routing, and the Sinkhorn normalisation it (and local search) use."""

from __future__ import annotations

import math

import torch
from torch import nn

from moe.config import ModelConfig
from moe.gates.topk import topk_combine


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
        return topk_combine(scores, probs, self.k), z.new_zeros(())


Gate = SinkhornGate
