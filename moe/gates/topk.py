"""Top-k softmax routing with the Switch balancing loss and the router z-loss."""

from __future__ import annotations

import torch
from torch import nn

from moe.config import ModelConfig


def topk_combine(scores: torch.Tensor, probs: torch.Tensor, k: int) -> torch.Tensor:
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
        combine = topk_combine(z, probs, self.k)
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


Gate = TopKGate
