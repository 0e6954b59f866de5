"""The dense baseline's router: `sparse = False`, so its layer builds one wider expert."""

from __future__ import annotations

import torch
from torch import nn

from moe.config import ModelConfig


class DenseGate(nn.Module):
    """The dense baseline's trivial router: everything to the single expert, weight 1."""

    sparse = False  # see moe.gates.GateSpec

    def __init__(self, dim: int, cfg: ModelConfig):  # the signature every gate is built with
        super().__init__()

    def forward(self, h: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h.new_ones(h.shape[0], 1), h.new_zeros(())


Gate = DenseGate
