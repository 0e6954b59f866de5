"""Batched inference: predictions and penultimate embeddings, on the CPU or a GPU.

The owner embeds every private row with an uploaded model before its first selection, so this
is the hot path of a large owner's first answer: large batches, `torch.inference_mode`, and the
intra-op threads the caller allows (the owner's config), on the device the caller names.
The model is moved to that device for the call and back afterwards, so callers never hold a
model on a device they did not ask for.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from moe.device import resolve_device
from moe.model import MoEClassifier

log = logging.getLogger("moe.inference")
DEFAULT_THREADS = 1  # see auto_threads
# Rows from which embed_numpy compiles a conv stem for the CPU (~0.1 s, see `_cpu_conv_view`).
FAST_STEM_MIN_ROWS = 4096


def auto_threads(model: MoEClassifier) -> int:
    """Intra-op threads when the caller names none: 1.

    Batches in training are small (64-128 rows, <1M-parameter models), so a second intra-op
    thread adds little, and on a shared 2-core box it collapses: measured on Fashion-MNIST with
    others using the CPU, 1 thread trained at ~3500 samples/s and 2 threads at ~450 samples/s.
    Inference callers that own the machine (an owner embedding its rows) pass `threads`.
    """
    del model  # kept in the signature so the policy can depend on model size later
    return DEFAULT_THREADS


@contextlib.contextmanager
def on_device(model: MoEClassifier, device: torch.device) -> Iterator[MoEClassifier]:
    """The model on `device` for the block, back where it was afterwards."""
    home = next(model.parameters()).device
    if home == device:
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)


@contextlib.contextmanager
def inference(
    model: MoEClassifier, device: str | torch.device = "cpu", threads: int | None = None
) -> Iterator[torch.device]:
    """Eval mode, no autograd, the given threads, the model on `device`; all restored after."""
    target = resolve_device(device)
    was_training = model.training
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads or auto_threads(model))
    model.eval()
    try:
        with on_device(model, target), torch.inference_mode():
            yield target
    finally:
        model.train(was_training)
        torch.set_num_threads(prev_threads)


def batches(features: np.ndarray, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """float32 batches of `features` on `device` (a CPU batch is a view: no copy)."""
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    for b in range(0, len(x), batch_size):
        yield x[b : b + batch_size].to(device, non_blocking=True)


def predict(
    model: MoEClassifier,
    features: np.ndarray,
    batch_size: int = 512,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> np.ndarray:
    """Predicted class indices (N,) int64."""
    with inference(model, device, threads) as dev:
        out = [model(x).argmax(dim=1).cpu() for x in batches(features, batch_size, dev)]
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def embed_numpy(
    model: MoEClassifier,
    features: np.ndarray,
    batch_size: int = 512,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
) -> np.ndarray:
    """Penultimate vectors (N, embed_dim) float32."""
    n, dim = len(features), model.config.embed_dim
    out = np.empty((n, dim), dtype=np.float32)  # filled in place: no list of batches to concat
    with inference(model, device, threads) as dev:
        fast = _cpu_conv_view(model) if dev.type == "cpu" and n >= FAST_STEM_MIN_ROWS else model
        done = 0
        for x in batches(features, batch_size, dev):
            out[done : done + len(x)] = fast.embed(x).float().cpu().numpy()
            done += len(x)
    return out


def _cpu_conv_view(model: MoEClassifier) -> MoEClassifier:
    """`model` with its conv stem frozen and optimised for CPU inference (oneDNN convolutions
    with ReLU fused, weights pre-packed), or `model` itself when the stem has no convolution or
    cannot be compiled. The rest of the model is shared, not copied.

    The eager conv stem is ~90% of a Fashion-sized forward: ReLU and max-pool run as separate
    passes over 28x28x16 maps in NCHW. Frozen, one thread embedded ~34k rows/s against ~5k
    (batch 64-1024, 2-core machine); outputs agree to ~1e-7. The frozen copy holds the weights
    as of now, so it is built per call, never cached (a model may train between calls)."""
    stem = model.stem
    if not any(isinstance(m, nn.Conv2d) for m in stem.modules()):
        return model
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated upstream, still the fastest here
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(copy.deepcopy(stem).eval())
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(scripted))
    except Exception as e:  # noqa: BLE001 - an optimisation: the eager stem is always right
        log.info("conv stem not compiled for CPU inference (%s); using it as is", e)
        return model
    view = copy.copy(model)  # shares parameters and submodules; own module and buffer dicts,
    view._modules = dict(model._modules)  # so swapping the stem leaves `model` untouched
    view._buffers = dict(model._buffers)
    view._modules["stem"] = frozen
    return view
