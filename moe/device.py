"""Which torch device a setting names: "auto", "cpu", "cuda" or "cuda:N".

One place resolves the setting, so the trainer (baseline, fine-tunes, evaluation) and the owner
(embedding its rows) agree on what "auto" means and give the same error for a missing GPU.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config checks import this module and must not pull in torch
    import torch

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(spec: str) -> str:
    """`spec` when it is well formed (whether the device exists is checked when it is used)."""
    if not isinstance(spec, str) or not _DEVICE_RE.match(spec):
        raise ValueError(f"must be {DEVICE_CHOICES}, got {spec!r}")
    return spec


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The device `spec` names; "auto" is the first CUDA device when one is present, else CPU.

    A CUDA device that is not there is an error naming what is there, never a silent fallback:
    a run configured for a GPU that quietly trains on the CPU would take hours, not minutes.
    """
    import torch

    if isinstance(spec, torch.device):
        return spec
    check_device(spec)
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{spec!r}: this machine has no CUDA device (torch sees none)")
        index = device.index or 0
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"{spec!r}: this machine has {count} CUDA device(s), 0..{count - 1}")
        return torch.device("cuda", index)
    return device


def describe(device: torch.device) -> str:
    """ "cpu" or "cuda:0 (NVIDIA H200)": what a report or log line says was used."""
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
