"""Local search over expert order: a learned permutation (Gumbel-Sinkhorn, hardened by Hungarian).

Gate slot i is sent to expert perm[i]. While searching, the forward pass uses the *hard*
permutation nearest to a Gumbel-perturbed Sinkhorn matrix, with the soft matrix's gradient
(straight-through): the routing stays exactly k-sparse while the permutation logits learn.
After `local_search_steps` training steps the permutation is hardened from the logits and frozen,
so experts can swap roles early (escaping a bad start) and then stay put.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from moe.config import ModelConfig
from moe.gates.sinkhorn import sinkhorn


def hungarian(scores: torch.Tensor) -> torch.Tensor:
    """The permutation (as index vector perm, slot i -> perm[i]) maximising sum scores[i, perm[i]].

    Solved on the CPU (scipy); the result comes back on `scores`' device.
    """
    rows, cols = linear_sum_assignment(scores.detach().cpu().double().numpy(), maximize=True)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.as_tensor(perm, device=scores.device)


def is_permutation(perm: torch.Tensor, n: int) -> bool:
    return perm.shape == (n,) and bool(
        (perm.sort().values == torch.arange(n, device=perm.device)).all()
    )


class ExpertPermutation(nn.Module):
    def __init__(self, num_experts: int, cfg: ModelConfig):
        super().__init__()
        self.n = num_experts
        self.tau = cfg.local_search_tau
        self.freeze_after = cfg.local_search_steps
        # A mild identity prior: the search starts near "no swap" and moves when it helps.
        self.logits = nn.Parameter(torch.eye(num_experts))
        self.register_buffer("perm", torch.arange(num_experts))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.long))

    def freeze(self) -> None:
        with torch.no_grad():
            self.perm.copy_(hungarian(self.logits))
            self.frozen.fill_(1)
        self.logits.requires_grad_(False)

    def current(self) -> torch.Tensor:
        """The hard permutation in use outside the search (frozen, or the logits' best)."""
        return self.perm if bool(self.frozen) else hungarian(self.logits)

    def forward(self, combine: torch.Tensor) -> torch.Tensor:
        if bool(self.frozen) or not self.training:
            out = torch.zeros_like(combine)
            return out.index_copy(1, self.current(), combine)
        u = torch.rand_like(self.logits).clamp(1e-9, 1 - 1e-9)
        gumbel = -torch.log(-torch.log(u))
        soft = sinkhorn((self.logits + gumbel) / self.tau, iters=20)
        hard = torch.zeros_like(soft)
        hard[torch.arange(self.n, device=soft.device), hungarian(soft)] = 1.0
        # Exactly `hard` in value (x - x == 0), the soft matrix's gradient in backward.
        p = hard + soft - soft.detach()
        self.step += 1
        if int(self.step) >= self.freeze_after:
            self.freeze()
        return combine @ p.to(combine.dtype)
