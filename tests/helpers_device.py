"""A CPU-only check for device bugs: tensors made without `device=` where the model's device is
meant, and ops that mix devices.

On a GPU, `torch.arange(n)` in a module makes a CPU tensor while the model is on the GPU, and
the first op combining the two fails. On a CPU-only machine both land on the CPU and nothing
fails. DeviceMixChecker restores the asymmetry: inside it, a factory call (arange, zeros, full,
tensor, as_tensor, rand, ...) made without `device=` directly from a file under `roots` creates
its tensor on the "meta" device instead of the CPU, and any torch call whose tensor arguments
sit on two devices raises DeviceMixError naming the call and the line of checked code.

What it does not see: a CPU tensor that does not come from a torch factory (torch.from_numpy of
a scipy result, say). Those are covered by the CUDA-only tests.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from torch.utils._pytree import tree_leaves

# The device a device-less factory call lands on: any device but the model's (the CPU) will do,
# and meta tensors cost no memory.
STRAY = torch.device("meta")
# Calls whose job is to move data between devices.
_TRANSFERS = frozenset({torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.copy_})


class DeviceMixError(AssertionError):
    pass


class DeviceMixChecker(TorchFunctionMode):
    def __init__(self, roots: Iterable[Path]):
        super().__init__()
        self.roots = tuple(str(Path(r).resolve()) for r in roots)
        self.redirected: list[str] = []  # where a device-less factory call was sent to STRAY

    def _checked(self, frame: FrameType | None) -> bool:
        return frame is not None and frame.f_code.co_filename.startswith(self.roots)

    def _where(self, frame: FrameType | None) -> str:
        """The innermost line of checked code on the stack (else the direct caller)."""
        first = frame
        while frame is not None and not self._checked(frame):
            frame = frame.f_back
        frame = frame or first
        return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "?"

    def __torch_function__(self, func, types, args=(), kwargs=None) -> Any:
        kwargs = dict(kwargs or {})
        caller = sys._getframe(1)
        if func in _device_constructors() and kwargs.get("device") is None:
            if self._checked(caller):
                kwargs["device"] = STRAY
                self.redirected.append(self._where(caller))
        if func not in _TRANSFERS:
            devices = {
                t.device
                for t in tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor) and not (t.dim() == 0 and t.device.type == "cpu")
            }  # a 0-dim CPU tensor is a scalar, which CUDA ops accept
            if len(devices) > 1:
                name = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
                found = ", ".join(sorted(str(d) for d in devices))
                raise DeviceMixError(f"{name} mixes devices ({found}) at {self._where(caller)}")
        return func(*args, **kwargs)
